"""Scoring labelled streams by the rules of the Numenta Anomaly Benchmark (NAB).

The rules, as NAB states them (Lavin and Ahmad, 2015), on row indices:

* **probation**: the first 15 % of a stream (at most 750 rows) is not scored;
* **windows**: each labelled anomaly gets a window of ``10 % of the stream's length / its
  number of anomalies`` rows, centred on it;
* **reward**: the first detection inside a window earns ``tp * sigma(y)`` with
  ``y = -(window end - row + 1) / window width`` (from -1 at the window's first row to about 0
  at its last) and ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` (0.987 at the start, 0 at the end);
  later detections in the same window add nothing;
* **false positives**: a detection outside every window costs ``fp * sigma(y)`` with ``y`` its
  distance after the end of the previous window in units of that window's width (less just
  after a window, the whole ``fp`` from three widths on), the whole ``fp`` before any window;
* **misses**: each window without a detection costs ``fn``;
* **profiles**: standard ``(tp, fp, fn) = (1, 0.11, 1)``, ``reward_low_fp`` (1, 0.22, 1),
  ``reward_low_fn`` (1, 0.11, 2);
* **threshold**: one per profile, the one that maximises the corpus's summed raw score;
* **normalisation**: ``100 (raw - null) / (perfect - null)``: the null detector never detects
  (``-fn`` a window), the perfect one detects each window at its first row.

Example: one window of 10 rows in a 100-row stream, detected at its first row
    >>> w = [Window(40, 49)]
    >>> flags = np.zeros(100, bool); flags[40] = True
    >>> round(raw_score(flags, w, PROFILES["standard"], probation=15), 4)
    0.9866
    >>> flags[80] = True  # a false alarm far after it costs the whole fp weight
    >>> round(raw_score(flags, w, PROFILES["standard"], probation=15), 4)
    0.8766
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.alarm import judge_one, opening_alarms
from stream_ae.entities.spec import AlarmSpec
from trainer.evaluate import SMD_MACHINES, Factory, smd_scores


@dataclass(frozen=True)
class Profile:
    tp: float
    fp: float
    fn: float


PROFILES = {
    "standard": Profile(1.0, 0.11, 1.0),
    "reward_low_fp": Profile(1.0, 0.22, 1.0),
    "reward_low_fn": Profile(1.0, 0.11, 2.0),
}


@dataclass(frozen=True)
class Window:
    """Rows ``start`` to ``end``, both included."""

    start: int
    end: int

    @property
    def width(self) -> int:
        return self.end - self.start + 1


def scaled_sigmoid(y: float) -> float:
    """NAB's reward curve: ``2 / (1 + exp(5 y)) - 1``, and -1 beyond ``y = 3``."""
    return -1.0 if y > 3.0 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_rows(n: int) -> int:
    """The rows NAB does not score at the start of a stream of ``n``: 15 %, at most 750."""
    return min(750, int(0.15 * n))


def windows_for(n: int, anomalies: Sequence[int]) -> list[Window]:
    """NAB's windows for a stream of ``n`` rows with anomalies at row indices ``anomalies``.

    Example:
        >>> windows_for(1000, [500])
        [Window(start=450, end=549)]
    """
    if not anomalies:
        return []
    width = max(1, int(0.1 * n / len(anomalies)))
    out = []
    for a in sorted(anomalies):
        start = max(0, a - width // 2)
        out.append(Window(start, min(n - 1, start + width - 1)))
    return out


def anomaly_starts(labels: NDArray[np.integer] | NDArray[np.bool_]) -> list[int]:
    """Point-wise labels (1 = anomalous row) to anomalies: the first row of each labelled run."""
    y = np.asarray(labels).astype(bool)
    return np.flatnonzero(y & ~np.r_[False, y[:-1]]).tolist()


def raw_score(flags: NDArray[np.bool_], windows: Sequence[Window], profile: Profile, probation: int) -> float:
    """A stream's raw NAB score for detections ``flags`` (one per row)."""
    flags = np.asarray(flags, dtype=bool).copy()
    flags[:probation] = False
    score, inside = 0.0, np.zeros(len(flags), dtype=bool)
    missed = 0
    for w in windows:
        inside[w.start : w.end + 1] = True
        hits = np.flatnonzero(flags[w.start : w.end + 1])
        if len(hits):  # the first detection only
            score += profile.tp * scaled_sigmoid(-(w.width - int(hits[0])) / w.width)
        else:
            missed += 1
    false = np.flatnonzero(flags & ~inside)
    if len(false):
        ends = np.array([w.end for w in windows], dtype=np.int64)
        widths = np.array([w.width for w in windows], dtype=np.int64)
        prev = np.searchsorted(ends, false) - 1  # the last window ending before the row (-1: none)
        # widths of that window after its end; none before the row (or none at all): the whole fp
        y = np.full(len(false), np.inf)
        after = prev >= 0
        y[after] = (false[after] - ends[prev[after]]) / np.maximum(widths[prev[after]] - 1, 1)
        with np.errstate(over="ignore"):
            sig = np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 3.0))) - 1.0)
        score += profile.fp * float(sig.sum())
    return score - profile.fn * missed


@dataclass(frozen=True)
class Stream:
    """One labelled stream: a detector's ``scores`` (one per row) and its NAB ``windows``;
    with ``cooldown`` > 0 only the alarm that opens an incident counts as a detection
    (:func:`stream_ae.entities.alarm.opening_alarms`, the worker's incident rule)."""

    name: str
    scores: NDArray[np.float64]
    windows: list[Window]
    cooldown: int = 0

    def detections(self, threshold: float) -> NDArray[np.bool_]:
        flags = self.scores >= threshold
        return opening_alarms(flags, self.cooldown) if self.cooldown > 0 else flags

    @property
    def probation(self) -> int:
        return probation_rows(len(self.scores))


def corpus_score(streams: Sequence[Stream], profile: Profile, candidates: int = 200) -> tuple[float, float]:
    """``(normalised score, threshold)``: one threshold for the whole corpus, the one of
    ``candidates`` quantiles of all scored rows' scores that maximises the summed raw score."""
    pooled = np.concatenate([s.scores[s.probation :] for s in streams])
    # the quantiles from the median up, and above every score (never detecting: the null score)
    levels = np.append(np.unique(np.quantile(pooled, np.linspace(0.5, 1.0, candidates))), np.inf)
    null = -profile.fn * sum(len(s.windows) for s in streams)
    perfect = profile.tp * scaled_sigmoid(-1.0) * sum(len(s.windows) for s in streams)
    best_raw, best_t = -math.inf, float(levels[-1])
    for t in levels:
        raw = sum(raw_score(s.detections(t), s.windows, profile, s.probation) for s in streams)
        if raw > best_raw:
            best_raw, best_t = raw, float(t)
    if perfect == null:
        return 0.0, best_t
    return 100.0 * (best_raw - null) / (perfect - null), best_t


def evaluate_smd_streams(
    data_dir: Path, methods: dict[str, Factory], machines: Sequence[str] = SMD_MACHINES
) -> dict[str, dict[str, dict[str, float]]]:
    """Each SMD machine as one stream (``stream-ae evaluate --streams``): every method fitted on
    the machine's training rows (the worker's features, :func:`trainer.evaluate.smd_matrices`),
    its raw score on each test row, NAB's windows around the first row of each labelled run.
    Each method three ways: its raw score; the same with a cooldown (only the alarm that opens
    an incident counts; the cooldown is a fifth of the probation, as CAD OSE and KNN-CAD quiet
    for a fifth of their warm-up); and its score likelihood
    (the worker's post-score stage, :func:`stream_ae.entities.alarm.judge_one`, run over the
    training rows' scores first, as a worker that saw them would) with the cooldown.
    Returns method -> profile -> normalised score and threshold."""
    per_method: dict[str, list[Stream]] = {}
    for r in smd_scores(data_dir, methods, machines):
        windows = windows_for(len(r.test), anomaly_starts(r.label))
        cooldown = max(1, probation_rows(len(r.test)) // 5)
        both = np.r_[r.train, r.test]
        judged, _ = judge_one(AlarmSpec(), both, np.arange(len(both), dtype=np.int64) * 1000, threshold=np.inf)
        published = judged.published[len(r.train) :]
        for name, scores, quiet in (
            (r.method, r.test, 0),
            (f"{r.method}+cooldown", r.test, cooldown),
            (f"{r.method}+likelihood+cooldown", published, cooldown),
        ):
            per_method.setdefault(name, []).append(Stream(r.machine, scores, windows, quiet))
    return profile_table(per_method)


def profile_table(corpora: dict[str, list[Stream]]) -> dict[str, dict[str, dict[str, float]]]:
    """Each named corpus scored on every profile: name -> profile -> normalised score and the
    corpus threshold that reached it."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, streams in corpora.items():
        out[name] = {}
        for profile_name, profile in PROFILES.items():
            score, threshold = corpus_score(streams, profile)
            out[name][profile_name] = {"score": score, "threshold": threshold}
    return out
