"""Calibrated thresholds: a score above ``value`` means a chosen false-alarm rate on normal data.

Scoring and thresholding are separate steps: a :class:`Threshold` is fitted on held-out
*normal* scores only (never labels), so a user can recalibrate without retraining.

* ``quantile``: the empirical ``1 - rate`` quantile (needs about ``10 / rate`` scores).
* ``robust``: a generalised Pareto tail fitted by maximum likelihood to the scores between
  the 80th and 95th percentiles, the top 5 % counted but censored (only known to lie above),
  shape clipped to [-0.5, 0.5], extrapolated to ``rate``. A training window
  holds anomalies, and they sit in the top of the calibration scores: the empirical quantile
  and ``pot`` would place the threshold among them (on ADBench ``thyroid``, with 2.5 %
  anomalies, ``pot`` put it above every row). The top 5 % never enters this fit, so up to 5 %
  contamination leaves the threshold where clean data would put it. For rates of 20 % and
  more, or fewer than 200 scores, it is the empirical quantile (or ``pot`` below 10 / n).
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
from numpy.typing import NDArray

Method = Literal["quantile", "pot", "robust", "auto"]
ROBUST_BAND = (0.20, 0.05)  # the robust fit: exceedances over the top 20 %, the top 5 % censored
ROBUST_MIN_SCORES = 200
XI_RANGE = (-0.5, 0.5)  # the tail shape the robust fit may take
REFERENCE_QUANTILES = np.linspace(0.0, 1.0, 101)
MIN_EXCEEDANCES = 10  # fewer exceedances over the tail's start than this: no Pareto fit


def _empirical(s: NDArray[np.float64], rate: float) -> float:
    return float(np.quantile(s, 1 - rate))


def _gpd_logsf(y: NDArray[np.float64] | float, xi: float, sigma: float) -> NDArray[np.float64]:
    """log P(Y > y) of a generalised Pareto (shape ``xi``, scale ``sigma``); -inf past its end."""
    z = np.asarray(y, dtype=np.float64) / sigma
    if abs(xi) < 1e-6:
        return -z
    t = 1.0 + xi * z
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t > 0, -np.log(np.maximum(t, 1e-300)) / xi, -np.inf)


def _censored_gpd_fit(inside: NDArray[np.float64], above: int, cut: float) -> tuple[float, float]:
    """Generalised Pareto (shape, scale) by maximum likelihood on exceedances ``inside``
    (0 < y <= ``cut``) and ``above`` more known only to exceed ``cut``: a grid over the shape
    (clipped to ``XI_RANGE``), golden-section search over the log scale."""
    mean = float(inside.mean())

    def loglik(xi: float, sigma: float) -> float:
        # log f(y) = (1 + xi) log P(Y > y) - log sigma; a point past the support gives -inf
        logpdf = (1.0 + xi) * _gpd_logsf(inside, xi, sigma) - math.log(sigma)
        return float(logpdf.sum()) + above * float(_gpd_logsf(cut, xi, sigma))

    best = (-math.inf, 0.0, mean)
    for xi in np.linspace(XI_RANGE[0], XI_RANGE[1], 41).tolist():
        lo, hi = math.log(mean) - 4.0, math.log(mean) + 4.0
        g = (math.sqrt(5.0) - 1.0) / 2.0
        for _ in range(48):  # golden section on log sigma (the profile is unimodal in practice)
            a, b = hi - g * (hi - lo), lo + g * (hi - lo)
            if loglik(xi, math.exp(a)) >= loglik(xi, math.exp(b)):
                hi = b
            else:
                lo = a
        sigma = math.exp((lo + hi) / 2.0)
        ll = loglik(xi, sigma)
        if ll > best[0]:
            best = (ll, xi, sigma)
    return best[1], best[2]


def _gpd_fit(excess: NDArray[np.float64]) -> tuple[float, float]:
    """Generalised Pareto (shape xi, scale sigma) by Grimshaw-style profile likelihood."""
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
        ref = np.quantile(s, REFERENCE_QUANTILES).tolist()
        if method == "robust" and rate < ROBUST_BAND[0] and len(s) >= ROBUST_MIN_SCORES:
            return cls._robust(s, rate, ref)
        if method in ("auto", "robust"):
            method = "quantile" if rate * len(s) >= 10 else "pot"
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
        zeta = len(excess) / len(s)
        if abs(xi) < 1e-6:
            value = u + sigma * math.log(zeta / rate)
        else:
            value = u + sigma / xi * ((zeta / rate) ** xi - 1)
        if not math.isfinite(value):
            return cls(_empirical(s, rate), rate, "quantile", len(s), ref, {"pot_fallback": 1.0})
        return cls(float(value), rate, "pot", len(s), ref, {"u": u, "xi": xi, "sigma": sigma})

    @classmethod
    def _robust(cls, s: NDArray[np.float64], rate: float, ref: list[float]) -> Threshold:
        """A generalised Pareto tail fitted by maximum likelihood to the scores between the
        80th and 95th percentiles, the top 5 % entering only as a count (censored), and
        extrapolated to ``rate``: where a contaminated window's anomalies sit never shapes it."""
        top, censor = ROBUST_BAND
        u, c = (float(q) for q in np.quantile(s, [1 - top, 1 - censor]))
        inside = s[(s > u) & (s <= c)] - u
        above = int((s > c).sum())
        if len(inside) < MIN_EXCEEDANCES or float(np.ptp(inside)) <= 0.0 or c <= u:
            return cls(_empirical(s, rate), rate, "quantile", len(s), ref, {"robust_fallback": 1.0})
        xi, sigma = _censored_gpd_fit(inside, above, c - u)
        zeta = (len(inside) + above) / len(s)
        if abs(xi) < 1e-6:
            value = u + sigma * math.log(zeta / rate)
        else:
            value = u + sigma / xi * ((zeta / rate) ** xi - 1.0)
        if not math.isfinite(value):
            return cls(_empirical(s, rate), rate, "quantile", len(s), ref, {"robust_fallback": 1.0})
        return cls(float(value), rate, "robust", len(s), ref, {"u": u, "xi": xi, "sigma": sigma})

    def flag(self, scores: NDArray[Any]) -> NDArray[np.int8]:
        return (np.asarray(scores) > self.value).astype(np.int8)

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
