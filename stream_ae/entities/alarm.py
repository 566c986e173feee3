"""The post-score stage: an entity's raw scores become its published score, its alarms and its
incidents. It runs after scoring, within the same batch, in event order per entity, on the
state the entity store holds (the same rows, the same changelog, the same restore).

Declared in the schema's entity section (:class:`~stream_ae.entities.spec.AlarmSpec`)::

    alarm: {likelihood: true, short: 3, half_life: 500, warmup: 100, cooldown: 1h}

Semantics, per entity, in event order (the offline tools replay files through the same
function, so ``stream-ae score`` gives the worker's values):

* **Score likelihood** (``likelihood``, HTM's anomaly likelihood). ``short`` is the mean of the
  entity's last ``short`` raw scores; its long-term distribution is an exponentially weighted
  mean and variance of that short mean with a half-life of ``half_life`` events (a plain
  running mean and variance while the entity is younger than that). The published
  score is ``-log10`` of the Gaussian upper tail probability of the short mean under the
  long-term distribution *before* this event, capped at 10: 0 is ordinary for this entity, 3 is
  a one-in-a-thousand excursion. A lasting change becomes the new normal over about a
  half-life: the baseline adapts online, between trainer refreshes. Without ``likelihood`` the
  published score is the raw score.
* **Warm-up.** An entity's first ``warmup`` events publish 0 (with ``likelihood``) and never
  alarm: a new host or card is not an incident because it is new.
* **Alarm**: a published score above the alarm threshold (:func:`alarm_threshold`).
* **Incidents** (``cooldown``). An alarm opens an incident unless the entity's previous alarm
  lies within ``cooldown`` of event time; then it joins that one. An incident closes when
  ``cooldown`` passes without an alarm. Its id is ``<entity>@<opening event time, ms>``.
* **Time** is the event time the entity features use, never backwards per entity; an entity
  idle longer than its ``ttl`` starts afresh, as its features do.

Example: one quiet entity, then a jump; the first alarm opens an incident, the next joins it
    >>> from stream_ae.entities.spec import AlarmSpec
    >>> spec = AlarmSpec(short=1, warmup=20, cooldown=60)
    >>> raw = np.r_[np.random.default_rng(0).normal(1.0, 0.1, 50), 3.0, 3.0]
    >>> judged, _ = judge_one(spec, raw, np.arange(52) * 1000, threshold=3.0)
    >>> np.flatnonzero(judged.alarm).tolist(), np.flatnonzero(judged.opens).tolist()
    ([50, 51], [50])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from stream_ae.entities.spec import AlarmSpec
from stream_ae.entities.step import _SEGMENT, _final_ring, _layout, _scan, group_runs
from stream_ae.entities.table import NO_TIME, empty_rows, post_score_fields

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]
TEN_YEARS_MS = 10 * 365 * 86_400_000
CAP = 10.0  # the published likelihood's ceiling: a tail probability of 1e-10


def alarm_threshold(spec: AlarmSpec, raw_threshold: float, rate: float) -> float:
    """The threshold on the published score: with ``likelihood``, ``-log10(rate)`` (a short
    mean beyond its entity's ``1 - rate`` quantile, the same false-alarm-rate meaning as the
    raw threshold, per entity); else the model's calibrated raw threshold."""
    return -math.log10(min(max(rate, 10.0**-CAP), 1.0)) if spec.likelihood else raw_threshold


@dataclass
class Judged:
    """Per event (in the order given): the published score, whether it alarms, whether the
    alarm opens an incident, and when the incident it belongs to opened (``NO_TIME`` where no
    alarm)."""

    published: Floats
    alarm: Bools
    opens: Bools
    incident_ms: Ints


def judge(
    spec: AlarmSpec,
    ttl_ms: int,
    prior: NDArray[np.void],
    held: Bools,
    inv: Ints,
    times_ms: Ints,
    raw: Floats,
    threshold: float,
) -> tuple[Judged, NDArray[np.void]]:
    """The stage on one partition's events: ``inv[i]`` is event i's entity (an index into
    ``prior``, its row before the batch; ``held`` False for an entity without state), events in
    offset order. Returns the events' :class:`Judged` and every entity's row after them (only
    the post-score fields change; an entity without events keeps its row)."""
    n = len(inv)
    new = prior.copy()
    if n == 0:
        empty_i = np.zeros(0, dtype=np.int64)
        return Judged(np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), empty_i), new
    judged_before = held & (prior["alarm_seen"] > 0)
    runs = group_runs(inv, times_ms, judged_before, prior["alarm_ms"], ttl_ms)
    order, seg, start, idx, span = runs.order, runs.seg, runs.start, runs.idx, runs.span
    T, base, reset, carry, run_start, run_id = runs.T, runs.base, runs.reset, runs.carry, runs.run_start, runs.run_id
    r = np.asarray(raw, dtype=np.float64)[order]
    seen = idx - run_start + 1 + np.where(carry[run_start], prior["alarm_seen"][seg], 0)
    eligible = seen > spec.warmup

    # the short-term mean: the last ``short`` raw scores of the run, the stored ones first
    K = spec.short
    H, hrun, hpos = _layout(r, prior["lk_ring"][runs.g], K, runs, empty=np.nan)
    window = hpos[:, None] - K + 1 + np.arange(K)[None, :]
    past = np.where(hrun[window] == run_id[:, None], H[window], np.nan)
    present = np.isfinite(past)
    short = np.where(present, past, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)

    # the long-term mean and variance of the short mean: exponentially weighted (West's update),
    # with the weight of a plain running mean while the run is younger than the half-life
    alpha = np.maximum(1.0 - 0.5 ** (1.0 / spec.half_life), 1.0 / seen)
    a = 1.0 - alpha  # 0 at a fresh start (seen 1): the mean starts at the first short mean
    m0, v0 = prior["lk_mean"][seg], prior["lk_var"][seg]
    b = alpha * short
    b[carry] += a[carry] * m0[carry]
    a[start] = 0.0
    mean = _scan(a[:, None], b[:, None], span)[:, 0]
    mean_before = runs.before(mean, m0)
    delta = short - mean_before
    a = 1.0 - alpha
    b = a * alpha * delta * delta
    b[carry] += a[carry] * v0[carry]
    a[start] = 0.0
    var = _scan(a[:, None], b[:, None], span)[:, 0]
    var_before = runs.before(var, v0)

    if spec.likelihood:
        z = (short - mean_before) / np.sqrt(np.maximum(var_before, 1e-12))
        tail = 0.5 * torch.special.erfc(torch.from_numpy(z / math.sqrt(2.0))).numpy()
        published = np.minimum(CAP, -np.log10(np.maximum(tail, 10.0**-CAP)))
        published = np.where(eligible & ~reset, published, 0.0)
    else:
        published = r.copy()
    alarm = eligible & (published > threshold)

    # incidents: an alarm further than the cooldown from the entity's previous alarm opens one
    prior_alarm = prior["last_alarm_ms"][seg]
    prior_incident = prior["incident_ms"][seg]
    known = held[seg] & (prior_alarm != NO_TIME)
    stored_rel = np.where(known, np.maximum(prior_alarm - base, 0), -1)
    cooldown_ms = round(spec.cooldown * 1000) if spec.cooldown is not None else None
    opens, upto, opened = _incidents(alarm, T, seg, start, stored_rel, cooldown_ms)
    incident = np.where(opened >= 0, opened + base, np.where(known, prior_incident, NO_TIME))
    incident = np.where(alarm & (cooldown_ms is not None), incident, NO_TIME)

    last_pos, g = runs.last_pos, runs.g
    new["alarm_ms"][g] = T[last_pos] + base
    new["alarm_seen"][g] = seen[last_pos]
    new["lk_ring"][g] = _final_ring(H, hrun, hpos[last_pos], run_id[last_pos], K, empty=np.nan)
    new["lk_mean"][g] = mean[last_pos]
    new["lk_var"][g] = var[last_pos]
    latest = upto[last_pos]
    new["last_alarm_ms"][g] = np.where(latest >= 0, latest + base, prior_alarm[last_pos])
    latest_open = opened[last_pos]
    new["incident_ms"][g] = np.where(latest_open >= 0, latest_open + base, prior_incident[last_pos])

    out = Judged(np.empty(n), np.empty(n, bool), np.empty(n, bool), np.empty(n, np.int64))
    out.published[order], out.alarm[order], out.opens[order], out.incident_ms[order] = published, alarm, opens, incident
    return out, new


def _incidents(
    alarm: Bools, T: Ints, seg: Ints, start: Bools, stored_rel: Ints, cooldown_ms: int | None
) -> tuple[Bools, Ints, Ints]:
    """Which alarms open an incident (``T`` relative times >= 0, grouped by ``seg``; the
    group's stored latest alarm ``stored_rel``, -1 none), each event's latest alarm up to it,
    and the latest opening up to it (-1: none in the batch)."""
    upto = _segmented_max(np.where(alarm, T, -1), seg)
    before = np.empty(len(T), dtype=np.int64)
    before[1:] = upto[:-1]
    before[start] = -1
    before = np.maximum(before, stored_rel)
    if cooldown_ms is None:
        opens = np.zeros(len(T), dtype=bool)
    else:
        opens = alarm & ((before < 0) | (T - before > cooldown_ms))
    return opens, upto, _segmented_max(np.where(opens, T, -1), seg)


def opening_alarms(flags: Bools, cooldown: int) -> Bools:
    """One entity's alarms (one per row, rows as time) that open an incident: the rule of
    :func:`judge`, for offline sweeps over thresholds (``trainer.nab``).

    Example:
        >>> opening_alarms(np.array([0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1], bool), cooldown=4).astype(int).tolist()
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    """
    n = len(flags)
    start = np.zeros(n, dtype=bool)
    start[:1] = True
    zeros = np.zeros(n, dtype=np.int64)
    return _incidents(np.asarray(flags, bool), np.arange(n, dtype=np.int64), zeros, start, zeros - 1, cooldown)[0]


def _segmented_max(values: Ints, seg: Ints) -> Ints:
    """Running maximum within each group (``seg`` sorted); values are -1 or offsets >= 0."""
    shifted = seg * _SEGMENT + (values + 1)
    out: Ints = np.maximum.accumulate(shifted) - seg * _SEGMENT - 1
    return out


def judge_one(
    spec: AlarmSpec, raw: Floats, times_ms: Ints, threshold: float, ttl_ms: int = TEN_YEARS_MS
) -> tuple[Judged, NDArray[np.void]]:
    """One entity's scores judged from an empty state (the offline evaluation of a stream)."""
    dtype = np.dtype(post_score_fields(spec))
    n = len(raw)
    return judge(spec, ttl_ms, empty_rows(dtype, 1), np.zeros(1, bool), np.zeros(n, np.int64), times_ms, raw, threshold)
