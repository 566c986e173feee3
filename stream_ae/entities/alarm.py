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
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from numpy.typing import NDArray

from stream_ae.entities.spec import AlarmSpec
from stream_ae.entities.step import _SEGMENT, Runs, _final_ring, _layout, group_runs
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
    alarm); for an alarm, its incident's alarms and peak published score so far
    (``incident_alarms``, ``incident_peak``). ``closures``: the incidents the events closed."""

    published: Floats
    alarm: Bools
    opens: Bools
    incident_ms: Ints
    incident_alarms: Ints
    incident_peak: Floats
    closures: list[Closure] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> Judged:
        """``n`` events that publish 0 and never alarm."""
        return cls(
            np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), np.full(n, NO_TIME, dtype=np.int64),
            np.zeros(n, dtype=np.int64), np.zeros(n),
        )  # fmt: skip

    def put(self, rows: Ints, other: Judged) -> None:
        """Write ``other``'s events at ``rows`` of this one (its closures' rows mapped too)."""
        for name in ("published", "alarm", "opens", "incident_ms", "incident_alarms", "incident_peak"):
            getattr(self, name)[rows] = getattr(other, name)
        self.closures += [replace(c, row=int(rows[c.row])) for c in other.closures]


@dataclass(frozen=True)
class Closure:
    """An incident that closed: found at the entity's first event more than ``cooldown``
    after its latest alarm (``row``, that event's position), or when the TTL or the capacity
    bound dropped the entity first (``expired``; ``row`` is then the partition's last event
    in the batch). ``closed_ms`` is the latest alarm plus the cooldown either way."""

    row: int
    key: bytes | None  # None: the entity of the event at ``row``
    opened_ms: int
    closed_ms: int
    alarms: int
    peak: float
    expired: bool = False


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
        return Judged.empty(0), new
    judged_before = held & (prior["alarm_seen"] > 0)
    runs = group_runs(inv, times_ms, judged_before, prior["alarm_ms"], ttl_ms)
    order, seg, start, idx = runs.order, runs.seg, runs.start, runs.idx
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
    m0, v0 = prior["lk_mean"][seg], prior["lk_var"][seg]
    mean, var, mean_before, var_before = _baseline(short, alpha, start, carry, m0, v0, eligible, spec.clip)

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

    closes, closing = _closing(runs, upto, opened, prior, held, cooldown_ms)
    inc_alarms, inc_peak, closed = _tally(alarm, opens, closes, published, seg, held, prior, new, closing, cooldown_ms)

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

    out = Judged.empty(n)
    out.put(order, Judged(published, alarm, opens, incident, inc_alarms, inc_peak))
    out.closures = [replace(c, row=int(order[c.row])) for c in closed]
    return out, new


def _baseline(
    short: Floats, alpha: Floats, start: Bools, carry: Bools, m0: Floats, v0: Floats, eligible: Bools, clip: float
) -> tuple[Floats, Floats, Floats, Floats]:
    """The long-term mean and variance of the short mean (West's exponentially weighted
    update), each event's deviation from the mean before it counted at most ``clip`` standard
    deviations once the entity is past its warm-up (``clip`` 0: as it came). One extreme score
    then moves the baseline as a ``clip``-sd score does, so an alarm does not deafen the
    entity for half-lives, while a lasting change still becomes its normal (each clipped event
    widens the variance by a factor ``1 + alpha (clip^2 - 1)``). Events are grouped by entity
    (``start`` marks a group's first; ``carry`` one that continues the stored ``m0``, ``v0``).
    The clipped recurrence is not linear, so it runs event by event on Python floats (under
    a microsecond an event, the same for one busy entity as for many quiet ones).
    Returns each event's mean and variance after it, and before it."""
    n = len(short)
    after_m, after_v, before_m, before_v = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    m = v = 0.0
    rows = zip(short.tolist(), alpha.tolist(), start.tolist(), carry.tolist(), eligible.tolist(), strict=True)
    for i, (x, al, first, cont, past_warmup) in enumerate(rows):
        if first:
            m, v = (float(m0[i]), float(v0[i])) if cont else (0.0, 0.0)
        before_m[i], before_v[i] = m, v
        d = x - m
        if clip > 0 and past_warmup and v > 0 and al < 1.0:  # al 1: a fresh start takes x as it is
            lim = clip * math.sqrt(v)
            d = min(max(d, -lim), lim)
        m, v = m + al * d, (1.0 - al) * (v + al * d * d)
        after_m[i], after_v[i] = m, v
    return np.asarray(after_m), np.asarray(after_v), np.asarray(before_m), np.asarray(before_v)


def _closing(
    runs: Runs, upto: Ints, opened: Ints, prior: NDArray[np.void], held: Bools, cooldown_ms: int | None
) -> tuple[Bools, tuple[Ints, Ints]]:
    """Which events close an incident: an entity's first event after its latest alarm's
    ``cooldown`` ran out, in absolute event time (a group's first event reads the stored
    latest event and alarm, and a stored incident already closed closes no more). Also, per
    event, the latest alarm and the latest opening before it."""
    n = len(upto)
    prev_alarm = np.full(n, NO_TIME, dtype=np.int64)
    opened_before = np.full(n, NO_TIME, dtype=np.int64)
    if cooldown_ms is None:
        return np.zeros(n, dtype=bool), (prev_alarm, opened_before)
    seg, start, base = runs.seg, runs.start, runs.base
    stored = held[seg]
    prev_alarm[1:] = np.where(upto[:-1] >= 0, upto[:-1] + base, NO_TIME)
    prev_alarm[start] = NO_TIME
    in_store = (prev_alarm == NO_TIME) & stored
    prev_alarm[in_store] = prior["last_alarm_ms"][seg][in_store]
    prev_event = np.empty(n, dtype=np.int64)  # the entity's previous event
    prev_event[1:] = runs.T[:-1] + base
    prev_event[start] = np.where(stored[start], prior["alarm_ms"][seg][start], NO_TIME)
    opened_before[1:] = np.where(opened[:-1] >= 0, opened[:-1] + base, NO_TIME)
    opened_before[start] = NO_TIME
    take = (opened_before == NO_TIME) & stored
    opened_before[take] = prior["incident_ms"][seg][take]
    # a stored incident the partition's event time has already closed
    done = take & (prior["closed_ms"][seg] != NO_TIME)
    now = runs.T + base
    known = (prev_alarm != NO_TIME) & (prev_event != NO_TIME) & (opened_before != NO_TIME) & ~done
    closes = known & (prev_event - prev_alarm <= cooldown_ms) & (now - prev_alarm > cooldown_ms)
    return closes, (prev_alarm, opened_before)


def _tally(
    alarm: Bools,
    opens: Bools,
    closes: Bools,
    published: Floats,
    seg: Ints,
    held: Bools,
    prior: NDArray[np.void],
    new: NDArray[np.void],
    closing: tuple[Ints, Ints],
    cooldown_ms: int | None,
) -> tuple[Ints, Floats, list[Closure]]:
    """Each incident's alarms and peak published score, event by event in grouped order
    (alarms and closings are rare: a loop over them only), and the closures. Writes each
    entity's running tally, and whether its latest incident is closed, into ``new``."""
    n = len(alarm)
    inc_alarms, inc_peak = np.zeros(n, dtype=np.int64), np.zeros(n)
    closures: list[Closure] = []
    prev_alarm, opened_before = closing
    tally: dict[int, tuple[int, float, int]] = {}  # entity -> alarms, peak, closed at (NO_TIME: open)
    for i in np.flatnonzero(alarm | closes).tolist():
        e = int(seg[i])
        stored = (int(prior["incident_alarms"][e]), float(prior["incident_peak"][e]), int(prior["closed_ms"][e]))
        count, peak, closed_at = tally.get(e) or (stored if held[e] else (0, 0.0, NO_TIME))
        if closes[i]:
            closed_at = int(prev_alarm[i]) + (cooldown_ms or 0)
            closures.append(Closure(i, None, int(opened_before[i]), closed_at, count, peak))
        if alarm[i]:
            p = float(published[i])
            count, peak = (1, p) if opens[i] else (count + 1, max(peak, p))
            inc_alarms[i], inc_peak[i] = count, peak
            if opens[i]:
                closed_at = NO_TIME
        tally[e] = (count, peak, closed_at)
    if tally:
        touched = np.fromiter(tally, dtype=np.int64, count=len(tally))
        values = list(tally.values())
        new["incident_alarms"][touched] = [v[0] for v in values]
        new["incident_peak"][touched] = [v[1] for v in values]
        new["closed_ms"][touched] = [v[2] for v in values]
    return inc_alarms, inc_peak, closures


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
