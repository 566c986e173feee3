"""Calibrated thresholds: a score above ``value`` means a chosen false-alarm rate on normal data.

Scoring and thresholding are separate steps: a :class:`Threshold` is fitted on held-out
*normal* scores only (never labels), so a user can recalibrate without retraining.

* ``quantile``: the empirical ``1 - rate`` quantile (needs about ``10 / rate`` scores).
* ``pot``: peaks over threshold. A generalised Pareto distribution is fitted to the
  exceedances over a high empirical quantile and extrapolated to ``rate``; use it for rates
  below about 1e-3, where the held-out sample is too small for a plain quantile. When the
  tail has nothing to fit (fewer than 10 exceedances, or all of them equal: scores that take a
  few values only), it falls back to the empirical quantile; the value is always finite.

Example:
    >>> import numpy as np
    >>> t = Threshold.fit(np.random.default_rng(0).normal(size=20_000), rate=0.01)
    >>> round(t.value, 1)
    2.3
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

Method = Literal["quantile", "pot", "auto"]
REFERENCE_QUANTILES = np.linspace(0.0, 1.0, 101)
MIN_EXCEEDANCES = 10  # fewer exceedances over the tail's start than this: no Pareto fit


def _empirical(s: NDArray[np.float64], rate: float) -> float:
    return float(np.quantile(s, 1 - rate))


def _gpd_fit(excess: NDArray[np.float64]) -> tuple[float, float]:
    """Generalised Pareto (shape xi, scale sigma): the likelihood over a grid of shapes in
    [-0.5, 0.9], each with the scale the likelihood equations tie to it, ``mean * (1 - xi)``.
    Compared with ``scipy.stats.genpareto.fit`` on the shared sets' calibration slices
    (``bench.calibration_rules``, docs/development.md) its threshold was as near the target or
    nearer in 17 of 18 set and rate pairs, so it stays."""
    mean = float(excess.mean())
    if len(excess) < 10 or mean <= 0:
        return 0.0, max(mean, 1e-12)

    def profile(xi: float) -> float:
        if abs(xi) < 1e-6:
            sigma = mean
            return -len(excess) * math.log(sigma) - float(excess.sum()) / sigma
        # method of moments style sigma for a given xi, then log-likelihood
        sigma = mean * (1 - xi) if xi < 1 else mean
        z = 1 + xi * excess / sigma
        if sigma <= 0 or np.any(z <= 0):
            return -math.inf
        return -len(excess) * math.log(sigma) - (1 + 1 / xi) * float(np.log(z).sum())

    grid = np.linspace(-0.5, 0.9, 141)
    lls = [profile(float(xi)) for xi in grid]
    xi = float(grid[int(np.argmax(lls))])
    sigma = mean * (1 - xi) if abs(xi) >= 1e-6 else mean
    return xi, sigma


def tail_quantile(u: float, xi: float, sigma: float, zeta: float, rate: float) -> float:
    """The score exceeded with probability ``rate`` under a generalised Pareto tail (shape
    ``xi``, scale ``sigma``) over ``u``, which a share ``zeta`` of the scores exceeds."""
    if abs(xi) < 1e-6:
        return u + sigma * math.log(zeta / rate)
    return float(u + sigma / xi * ((zeta / rate) ** xi - 1))


@dataclass
class Threshold:
    """A fitted threshold and the calibration distribution it came from."""

    value: float
    rate: float
    method: str
    n_calibration: int
    reference_quantiles: list[float] = field(default_factory=list)  # for drift and percentiles
    details: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, scores: NDArray[Any], rate: float, method: Method = "auto") -> Threshold:
        """Fit on scores of held-out normal rows for a target false-alarm ``rate``."""
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if not 0 < rate < 1:
            raise ValueError("rate must lie in (0, 1)")
        if len(s) < 20:
            raise ValueError(f"need at least 20 finite calibration scores, got {len(s)}")
        if method == "auto":
            method = "quantile" if rate * len(s) >= 10 else "pot"
        ref = np.quantile(s, REFERENCE_QUANTILES).tolist()
        if method == "quantile":
            return cls(_empirical(s, rate), rate, method, len(s), ref)
        # peaks over threshold: exceedances over the top 5 % (or 10 % of a small sample)
        q0 = 0.95 if len(s) >= 1000 else 0.9
        u = float(np.quantile(s, q0))
        excess = s[s > u] - u
        if len(excess) < MIN_EXCEEDANCES or float(np.ptp(excess)) <= 0.0:
            # a few atoms (a stuck sensor, one replayed event): no tail to fit. The empirical
            # quantile is the honest answer: no calibration score lies above it.
            return cls(_empirical(s, rate), rate, "quantile", len(s), ref, {"pot_fallback": 1.0})
        xi, sigma = _gpd_fit(excess)
        value = tail_quantile(u, xi, sigma, len(excess) / len(s), rate)
        if not math.isfinite(value):
            return cls(_empirical(s, rate), rate, "quantile", len(s), ref, {"pot_fallback": 1.0})
        return cls(float(value), rate, "pot", len(s), ref, {"u": u, "xi": xi, "sigma": sigma})

    def flag(self, scores: NDArray[Any]) -> NDArray[np.int8]:
        return (np.asarray(scores) > self.value).astype(np.int8)

    def normal_scores(self, scores: NDArray[Any]) -> NDArray[np.float64]:
        """``scores`` as standard normal quantiles of the calibration distribution: ``z`` with
        ``P(Z > z)`` the share of calibration scores above the score (the probability integral
        transform). Up to the 99th percentile the share is read from the stored percentiles;
        beyond, an exponential tail through the 99th percentile and the threshold (its rate is
        the share above it), or through the largest calibration score when the threshold lies
        lower. Normal traffic then scores about N(0, 1) whatever the model's scale and skew,
        which is what the per-entity score likelihood assumes.

        Example:
            >>> t = Threshold.fit(np.random.default_rng(0).exponential(size=20_000), 0.001)
            >>> z = t.normal_scores(np.array([np.log(2.0), t.value]))  # the median, the threshold
            >>> [round(float(v), 1) for v in z]
            [0.0, 3.1]
        """
        s = np.asarray(scores, dtype=np.float64)
        q = np.asarray(self.reference_quantiles, dtype=np.float64)
        if len(q) != len(REFERENCE_QUANTILES) or not np.all(np.isfinite(q)) or q[-1] <= q[0]:
            return s / self.value if self.value > 0 else s  # no calibration distribution stored
        q = np.maximum.accumulate(q) + np.arange(len(q)) * 1e-12 * max(1.0, float(np.abs(q).max()))
        above = 1.0 - np.interp(s, q[:-1], REFERENCE_QUANTILES[:-1])  # share of calibration scores above
        q99 = q[-2]
        if self.value > q99 and self.rate < 0.01:
            x1, p1 = self.value, self.rate
        else:
            x1, p1 = q[-1], 1.0 / (self.n_calibration + 1)
        tail = s > q99
        if x1 > q99 and p1 < 0.01:
            above[tail] = 0.01 * (p1 / 0.01) ** ((s[tail] - q99) / (x1 - q99))
        above = np.clip(above, 1e-15, 1.0 - 1e-15)
        z: NDArray[np.float64] = -torch.special.ndtri(torch.from_numpy(above)).numpy()
        return z

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        return cls(**data)


def population_stability_index(
    reference_quantiles: NDArray[Any] | list[float], scores: NDArray[Any], bins: int = 10
) -> float:
    """PSI of ``scores`` against the calibration distribution (its stored quantiles).

    Bins are the calibration deciles, so each holds 10 % of calibration scores; PSI
    ``sum((a - e) * ln(a / e))`` is about 0 without drift and above 0.25 for a large shift.
    """
    ref = np.asarray(reference_quantiles, dtype=np.float64)
    edges = np.interp(np.linspace(0, 1, bins + 1), np.linspace(0, 1, len(ref)), ref)[1:-1]
    counts = np.bincount(np.searchsorted(edges, np.asarray(scores), side="right"), minlength=bins)
    actual = np.clip(counts / max(len(scores), 1), 1e-4, None)
    expected = np.full(bins, 1.0 / bins)
    return float(((actual - expected) * np.log(actual / expected)).sum())
