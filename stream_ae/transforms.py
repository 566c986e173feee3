"""Value transforms shared by the declared fields (:mod:`stream_ae.features.encoder`, a
field's ``log``) and the entity features (:mod:`stream_ae.entities.step`, an aggregate's
``log``): one definition of what ``log: true`` means wherever it is declared.

Example:
    >>> signed_log1p(np.array([-9.0, 0.0, 9.0])).round(3).tolist()
    [-2.303, 0.0, 2.303]
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
from numpy.typing import NDArray


def signed_log1p(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``sign(x) log(1 + |x|)``: the transform of a heavy-tailed field or of a metric that
    moves by factors (NaN stays NaN)."""
    return np.asarray(np.sign(x) * np.log1p(np.abs(x)), dtype=np.float64)


@overload
def signed_expm1(y: float) -> float: ...
@overload
def signed_expm1(y: NDArray[np.float64]) -> NDArray[np.float64]: ...
def signed_expm1(y: float | NDArray[np.float64]) -> float | NDArray[np.float64]:
    """The inverse of :func:`signed_log1p` (magnitudes capped where float64 overflows). A float
    gives a float by scalar arithmetic: a flagged event's explanation decodes one value at a
    time, where numpy's per-call cost was several times the arithmetic.

    Example:
        >>> signed_expm1(np.log1p(5.0)), signed_expm1(np.array([-np.log1p(5.0)])).tolist()
        (5.0, [-5.0])
    """
    if isinstance(y, float):
        return math.copysign(math.expm1(min(abs(y), 700.0)), y) if y == y else y
    return np.asarray(np.sign(y) * np.expm1(np.minimum(np.abs(y), 700.0)), dtype=np.float64)
