"""Score likelihood: an entity's raw score judged against that entity's own recent scores.

Raw scores are not comparable across streams: a noisy host scores high all the time, a quiet
one never. Numenta's HTM detector does not alarm on its raw score; it compares the short-term
average of an entity's last few raw scores with the distribution of its longer history, and
alarms on the tail probability (NAB's ``anomaly_likelihood``). This module is that step, with
state of a fixed size per entity so that it can live in the entity store:

* ``short``: the mean of the entity's last ``short_window`` raw scores (a ring of them);
* ``long``: an exponentially weighted mean and variance of that short mean, with a half-life of
  ``long_halflife`` rows: the entity's own recent normal;
* published: ``-log10`` of the Gaussian upper tail probability of the short mean under the long
  distribution, capped at 10 (0: ordinary for this entity; 3: a one-in-a-thousand excursion);
* the first ``warmup`` rows of an entity publish 0: its history is too short to judge.

The long statistics are updated after the row is judged, so an excursion is judged against
the history before it, and a lasting change becomes the new normal over about a half-life.

Example: a quiet entity and a noisy one, the same raw jump; only the quiet one's is unusual
    >>> rng = np.random.default_rng(0)
    >>> quiet, noisy = ScoreLikelihood(), ScoreLikelihood()
    >>> q = np.r_[rng.normal(1.0, 0.05, 300), 2.0]
    >>> n = np.r_[rng.normal(1.0, 1.0, 300), 2.0]
    >>> round(float(quiet.update(q)[-1]), 1) > 3, round(float(noisy.update(n)[-1]), 1) < 1
    (True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

CAP = 10.0


@dataclass
class ScoreLikelihood:
    """One entity's state and its update, row by row in event order."""

    short_window: int = 10
    long_halflife: float = 500.0
    warmup: int = 100
    ring: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    seen: int = 0
    mean: float = 0.0
    var: float = 0.0

    def update(self, raw: NDArray[np.floating]) -> NDArray[np.float64]:
        """Published scores for the entity's next raw scores ``raw`` (in event order)."""
        if len(self.ring) != self.short_window:
            self.ring = np.zeros(self.short_window)
        alpha = 1.0 - 0.5 ** (1.0 / self.long_halflife)
        out = np.zeros(len(raw))
        for i, r in enumerate(np.asarray(raw, dtype=np.float64).tolist()):
            self.ring[self.seen % self.short_window] = r
            self.seen += 1
            short = float(self.ring[: min(self.seen, self.short_window)].mean())
            if self.seen > self.warmup:
                spread = math.sqrt(max(self.var, 1e-12))
                z = (short - self.mean) / spread
                tail = 0.5 * math.erfc(z / math.sqrt(2.0))
                out[i] = min(CAP, -math.log10(max(tail, 10.0**-CAP)))
            if self.seen == 1:
                self.mean, self.var = short, 0.0
            else:  # exponentially weighted mean and variance (West's update)
                delta = short - self.mean
                self.mean += alpha * delta
                self.var = (1.0 - alpha) * (self.var + alpha * delta * delta)
        return out


def first_alarms(flags: NDArray[np.bool_], cooldown: int) -> NDArray[np.bool_]:
    """Incidents from row-wise alarms: an alarm opens an incident unless one is open; alarms
    within ``cooldown`` rows of the last alarm join it (only the opening alarm is kept).

    Example:
        >>> first_alarms(np.array([0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1], bool), cooldown=4).astype(int).tolist()
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    """
    out = np.zeros(len(flags), dtype=bool)
    last = -(10**18)
    for i in np.flatnonzero(flags).tolist():
        if i - last > cooldown:
            out[i] = True
        last = i
    return out
