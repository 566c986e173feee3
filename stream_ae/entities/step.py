"""The batch function: (state, one partition's events in offset order) -> (features, new state).

One implementation, two callers: the worker calls it on every micro-batch, and the offline
tools (``stream-ae train``, ``score``, ``evaluate``, the trainer) replay files and Kafka
windows through it (:mod:`stream_ae.entities.replay`), so a model is trained and served on the
same features. It is vectorised: numpy over the whole batch, grouped by entity; the only
per-event work is a dict look-up mapping each key to its group (C-level ``map``).

Semantics (docs/concepts/entity-features.md):

* **Before the update.** An event's features describe its entity's history *before* the
  event: it never sees itself.
* **Event time** is the schema's timestamp field, else the Kafka record timestamp. Time never
  runs backwards for an entity: a late event (earlier than the entity's latest) counts as if
  it happened at the entity's latest time (no decay, ``since_last`` 0); nothing is reordered.
* **TTL.** An entity whose previous event is more than ``ttl`` before the new one starts
  afresh, as a new entity would (its features do not depend on when its state was expired).
* **Windows** are exponentially decayed: ``count_w`` is ``sum exp(-(t - t_j) / w)`` over earlier
  events ``j``, so at a steady rate it equals the events per window; ``sum_w`` the same with
  the field's values as weights (a missing value adds nothing). A value below 1e-6 reads as
  0: what has decayed away is gone (and a feature that is mostly 0 scales cleanly).
* **zscore** is ``(x - mean) / sd`` against the entity's exponentially weighted mean and
  variance (each earlier event's weight halves every ``half_life``); 0 until the entity has
  ``min_history`` earlier events, ``sd`` floored at 1 % of ``|mean|`` + 1e-6, clipped to +-1000;
  with ``log``, of ``sign(x) log(1 + |x|)`` (amounts: a deviation by a factor, not by euros).
* **since_last** is the seconds since the entity's previous event; ``ttl`` for a new entity.
* **novelty** is 1 when the value is not among the entity's last ``capacity`` events' values
  (0 for a missing value).
* **delta_mean** is the row minus the mean of the entity's previous ``rows`` rows (each field
  over the rows where it is present); 0 without history, as the row itself would give.
* **seasonal** is the row minus the entity's mean of the same time-of-period bucket one
  ``period`` ago (``buckets`` buckets a period: with a day and 24, the same hour yesterday).
  Gaps: when the entity has no value in that bucket one period ago (it was idle, new, or
  started afresh after its TTL), the feature is 0, as a row with no history would give.
* **spread** is the standard deviation (population) of the entity's previous ``rows`` rows,
  each field over the rows where it is present; 0 with fewer than two. A metric that gets
  stuck on one value has a spread of 0, which its history never had.
* **repeats** is how many of the entity's previous ``rows`` rows, counted back from the one
  before the latest, hold exactly the latest previous value (0 to ``rows - 1``; a missing
  value ends the count, and is never repeated). The row after ``k`` stuck rows reads ``k - 1``:
  it grows from the third stuck row on, where ``spread`` reaches 0 only when all ``rows`` rows
  are stuck; a live noisy metric reads 0.

Results do not depend on where micro-batches split, up to floating-point association: the
decayed sums are a parallel scan whose association order follows the batch (they agree to
about 1e-12 relative); the rings (novelty, delta_mean) are exact.

Example:
    >>> from stream_ae.entities.spec import RECENT_ROWS, Aggregate, EntitySpec
    >>> from stream_ae.entities.table import EntityTable, row_dtype
    >>> spec = EntitySpec.from_dict({"features": [{"count": ["1h"]}, "since_last"]})
    >>> table = EntityTable(row_dtype(spec))
    >>> batch = EntityBatch([b"a", b"a", b"b"], np.array([0, 60_000, 0]), np.array([0, 1, 2]), {}, {})
    >>> out = step(spec, table, batch)
    >>> out.features.round(3).tolist()   # [count_1h, since_last_s] before each event
    [[0.0, 604800.0], [0.983, 60.0], [0.0, 604800.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.spec import RECENT_ROWS, Aggregate, EntitySpec
from stream_ae.entities.table import NO_BUCKET, EntityTable, empty_rows
from stream_ae.transforms import signed_log1p

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
_SEGMENT = np.int64(1) << np.int64(42)  # more milliseconds than a batch plus a TTL can span (139 years)
Z_CLIP = 1000.0
NEGLIGIBLE = 1e-6  # a decayed count or sum below this reads as 0


@dataclass
class EntityBatch:
    """One partition's events, in offset order, as the batch function reads them."""

    keys: list[bytes]  # the entity of each event
    times_ms: Ints  # event time, epoch milliseconds
    offsets: Ints  # input offsets (a replayed offset is not applied twice)
    numbers: dict[str, Floats]  # the spec's numeric fields, NaN where missing
    codes: dict[str, NDArray[np.uint32]]  # the spec's novelty fields, hashed; 0 where missing

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index: Ints) -> EntityBatch:
        return EntityBatch(
            [self.keys[i] for i in index.tolist()],
            self.times_ms[index],
            self.offsets[index],
            {k: v[index] for k, v in self.numbers.items()},
            {k: v[index] for k, v in self.codes.items()},
        )


@dataclass
class StepResult:
    """What a batch did: each event's features (batch order) and the touched entities' new rows."""

    features: Floats  # [events, spec.feature_names()]
    keys: list[bytes]  # the touched entities, in order of first appearance
    rows: NDArray[np.void]  # their rows after the batch
    first_offsets: Ints  # each touched entity's first and last offset in the batch
    last_offsets: Ints
    # the touched entities' slots in the table before the batch (-1: not held) and their rows
    # then (a new entity's: empty), as the step read them
    slots: Ints
    prior: NDArray[np.void]
    replayed: NDArray[np.bool_] | None = None  # per event: at or before its entity's last applied offset

    @property
    def n_replayed(self) -> int:
        return int(self.replayed.sum()) if self.replayed is not None else 0


def step(spec: EntitySpec, table: EntityTable, batch: EntityBatch, dedupe: bool = True) -> StepResult:
    """Features of ``batch`` and the new rows of its entities; ``table`` is only read.

    With ``dedupe``, events whose offset is at or before their entity's last applied offset
    (a re-delivery the state already holds) get features from the state as it is and change
    nothing (:attr:`StepResult.replayed` marks them)."""
    n = len(batch)
    names = spec.feature_names()
    if n == 0:
        return StepResult(np.zeros((0, len(names))), [], *_untouched(table))
    read = _read(table, batch)
    replayed = read.replayed(batch) if dedupe else np.zeros(n, bool)
    if not replayed.any():
        features, rows = _run(spec, read.prior, read.held, read.inv, batch)
        first, last = _first_last(read.inv, batch.offsets, len(read.uniq))
        return StepResult(features, read.uniq, rows, first, last, read.slots, read.prior)
    fresh = np.flatnonzero(~replayed)
    features = np.zeros((n, len(names)))
    old = np.flatnonzero(replayed)
    features[old] = step(spec, table, batch.take(old), dedupe=False).features
    if not len(fresh):
        return StepResult(features, [], *_untouched(table), replayed)
    sub = step(spec, table, batch.take(fresh), dedupe=False)
    features[fresh] = sub.features
    return StepResult(features, sub.keys, sub.rows, sub.first_offsets, sub.last_offsets, sub.slots, sub.prior, replayed)


def step_partitions(spec: EntitySpec, tables: list[EntityTable], batches: list[EntityBatch]) -> list[StepResult]:
    """:func:`step` of several partitions' batches (``batches[j]`` against ``tables[j]``) in
    one pass: the same results, but the batch function's hundred-odd array operations run once
    per micro-batch, not once per partition in it (a worker reading many partitions split each
    batch that many ways). An entity lives in one partition: groups never span two. Batches
    with a re-delivery (after a rewind) run partition by partition."""
    if len(batches) <= 1 or any(len(b) == 0 for b in batches):
        return [step(spec, t, b) for t, b in zip(tables, batches, strict=True)]
    reads = [_read(t, b) for t, b in zip(tables, batches, strict=True)]
    if any(r.replayed(b).any() for r, b in zip(reads, batches, strict=True)):
        return [step(spec, t, b) for t, b in zip(tables, batches, strict=True)]
    groups = np.cumsum([0] + [len(r.uniq) for r in reads])
    events = np.cumsum([0] + [len(b) for b in batches])
    inv = np.concatenate([r.inv + g for r, g in zip(reads, groups[:-1].tolist(), strict=True)])
    both = EntityBatch(
        [k for b in batches for k in b.keys],
        np.concatenate([b.times_ms for b in batches]),
        np.concatenate([b.offsets for b in batches]),
        {f: np.concatenate([b.numbers[f] for b in batches]) for f in batches[0].numbers},
        {f: np.concatenate([b.codes[f] for b in batches]) for f in batches[0].codes},
    )
    prior = np.concatenate([r.prior for r in reads])
    features, rows = _run(spec, prior, np.concatenate([r.held for r in reads]), inv, both)
    first, last = _first_last(inv, both.offsets, int(groups[-1]))
    out = []
    for j, r in enumerate(reads):
        g, e = slice(groups[j], groups[j + 1]), slice(events[j], events[j + 1])
        out.append(StepResult(features[e], r.uniq, rows[g], first[g], last[g], r.slots, r.prior))
    return out


@dataclass
class _Read:
    """What a batch reads from its table: its entities in order of first appearance, each
    event's entity among them, their slots (-1: not held) and rows (a new entity's: empty)."""

    uniq: list[bytes]
    inv: Ints
    slots: Ints
    held: NDArray[np.bool_]
    prior: NDArray[np.void]

    def replayed(self, batch: EntityBatch) -> NDArray[np.bool_]:
        """Per event: at or before its entity's last applied offset (a re-delivery)."""
        return self.held[self.inv] & (batch.offsets <= self.prior["last_offset"][self.inv])


def _read(table: EntityTable, batch: EntityBatch) -> _Read:
    uniq = list(dict.fromkeys(batch.keys))
    position = dict(zip(uniq, range(len(uniq)), strict=True))
    inv = np.fromiter(map(position.__getitem__, batch.keys), np.int64, count=len(batch))
    slots = table.lookup(uniq)
    held = slots >= 0
    prior = empty_rows(table.dtype, len(uniq))
    prior[held] = table.rows[slots[held]]
    return _Read(uniq, inv, slots, held, prior)


def _ints(n: int) -> Ints:
    return np.zeros(n, dtype=np.int64)


def _untouched(table: EntityTable) -> tuple[NDArray[np.void], Ints, Ints, Ints, NDArray[np.void]]:
    """A result's rows, first and last offsets, slots and prior rows when no entity was touched."""
    return empty_rows(table.dtype, 0), _ints(0), _ints(0), _ints(0), empty_rows(table.dtype, 0)


def _first_last(inv: Ints, offsets: Ints, groups: int) -> tuple[Ints, Ints]:
    first = np.full(groups, np.iinfo(np.int64).max)
    last = np.full(groups, np.iinfo(np.int64).min)
    np.minimum.at(first, inv, offsets)
    np.maximum.at(last, inv, offsets)
    return first, last


@dataclass
class Runs:
    """A batch's events grouped by entity and cut into runs, as every batch function reads
    them: ``order`` takes batch positions to grouped ones (offset order within a group);
    ``seg`` is each grouped event's entity; ``T`` its effective time (never backwards per
    entity) relative to ``base``; a run starts afresh at an entity without state or after a
    gap longer than the TTL (``reset``); ``carry`` marks a group's first event when it
    continues the stored state; ``last_pos`` and ``g`` are each group's last event and entity."""

    order: Ints
    seg: Ints
    start: NDArray[np.bool_]
    idx: Ints
    seg_start: Ints
    span: int
    base: int
    T: Ints
    dt: Ints
    reset: NDArray[np.bool_]
    carry: NDArray[np.bool_]
    run_start: Ints
    run_id: Ints
    last_pos: Ints
    g: Ints

    @property
    def rank(self) -> Ints:
        """Each grouped event's group number (0, 1, ... in group order)."""
        return np.cumsum(self.start) - 1

    @property
    def first(self) -> Ints:
        """Each group's first event."""
        return np.flatnonzero(self.start)

    def before(self, values: Floats, stored: Floats, decay: Floats | None = None) -> Floats:
        """Each event's (decayed) value of its entity's earlier events: the previous row of its
        group, or the stored state at a group's first event that continues it (0 at a fresh
        start)."""
        out = np.zeros_like(values)
        prev = ~self.start
        out[prev] = values[np.flatnonzero(prev) - 1]
        out[self.carry] = stored[self.carry]
        return out * decay if decay is not None else out


def group_runs(inv: Ints, times_ms: Ints, held: NDArray[np.bool_], prior_ms: Ints, ttl_ms: int) -> Runs:
    """:class:`Runs` of a non-empty batch: ``inv[i]`` is event i's entity, an index into
    ``held`` (it has state) and ``prior_ms`` (its stored effective time)."""
    n = len(inv)
    order = np.argsort(inv, kind="stable")  # grouped by entity, offset order within
    seg = inv[order]
    start = np.ones(n, dtype=bool)
    start[1:] = seg[1:] != seg[:-1]
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = start[1:]
    idx = np.arange(n)
    seg_start = np.maximum.accumulate(np.where(start, idx, 0))
    # effective time: never backwards within an entity (segmented running maximum, exact in int64)
    t = np.asarray(times_ms, dtype=np.int64)[order]
    base = int(t.min()) - ttl_ms - 1
    has = held[seg]
    prior_rel = np.where(has, np.maximum(prior_ms[seg] - base, 0), 0)  # older than a TTL: 0, so a reset
    running = np.maximum.accumulate(seg * _SEGMENT + (t - base)) - seg * _SEGMENT
    T = np.maximum(running, prior_rel)
    prev_T = np.empty(n, dtype=np.int64)
    prev_T[1:] = T[:-1]
    prev_T[start] = prior_rel[start]
    dt = T - prev_T
    reset = (start & ~has) | (dt > ttl_ms)
    last_pos = np.flatnonzero(is_last)
    return Runs(
        order=order,
        seg=seg,
        start=start,
        idx=idx,
        seg_start=seg_start,
        span=int((idx - seg_start).max()) + 1,
        base=base,
        T=T,
        dt=dt,
        reset=reset,
        carry=start & ~reset,
        run_start=np.maximum.accumulate(np.where(start | reset, idx, 0)),
        run_id=np.cumsum(start | reset),
        last_pos=last_pos,
        g=seg[last_pos],
    )


def _scan(a: Floats, b: Floats, span: int) -> Floats:
    """Inclusive scan of ``v_i = a_i * v_{i-1} + b_i`` down the rows (Hillis-Steele, log2
    steps). A row with ``a = 0`` starts afresh, so independent groups can share one pass;
    ``span`` is the longest group, beyond which no step reaches."""
    A, B = a.copy(), b.copy()
    s = 1
    while s < span:
        B_next = B.copy()
        B_next[s:] += A[s:] * B[:-s]
        A[s:] = A[s:] * A[:-s]
        B = B_next
        s *= 2
    return B


def _run(
    spec: EntitySpec, prior: NDArray[np.void], held: NDArray[np.bool_], inv: Ints, batch: EntityBatch
) -> tuple[Floats, NDArray[np.void]]:
    """The sequential semantics of the module docstring, computed for all groups at once."""
    n = len(inv)
    ttl_ms = round(spec.ttl * 1000)
    r = group_runs(inv, batch.times_ms, held, prior["last_ms"], ttl_ms)
    order, seg, start, idx, seg_start, span = r.order, r.seg, r.start, r.idx, r.seg_start, r.span
    T, base, dt, reset, carry, run_start, run_id = r.T, r.base, r.dt, r.reset, r.carry, r.run_start, r.run_id
    n_before = idx - run_start + np.where(carry[run_start], prior["n"][seg], 0)
    run_id = np.cumsum(start | reset)

    columns: dict[str, Floats] = {}
    new = empty_rows(prior.dtype, len(prior))
    last_pos, g = r.last_pos, r.g
    new["last_ms"][g] = T[last_pos] + base
    new["last_offset"][g] = batch.offsets[order][last_pos]
    new["n"][g] = n_before[last_pos] + 1

    # decayed window counts and sums: one scan over every window
    count_w = [w for a in spec.aggregates if a.kind == "count" for w in a.windows]
    sum_w = [(a.field, w) for a in spec.aggregates if a.kind == "sum" for w in a.windows]
    if count_w or sum_w:
        tau = np.asarray(count_w + [w for _, w in sum_w]) * 1000.0
        weight = np.ones((n, len(tau)))
        for j, (f, _) in enumerate(sum_w):
            x = batch.numbers[f or ""][order]
            weight[:, len(count_w) + j] = np.where(np.isfinite(x), x, 0.0)
        decay = np.exp(-dt[:, None] / tau[None, :])
        decay[reset] = 0.0
        stored = np.hstack([prior["counts"][seg], prior["sums"][seg]])
        b = weight.copy()
        b[carry] += decay[carry] * stored[carry]
        a = decay.copy()
        a[start] = 0.0
        values = _scan(a, b, span)
        before = r.before(values, stored, decay)
        before[np.abs(before) < NEGLIGIBLE] = 0.0  # what has decayed away is gone, not 1e-40 (a clean zero to scale)
        k = 0
        for agg in (a for a in spec.aggregates if a.kind == "count"):
            for name in agg.feature_names():
                columns[name] = before[:, k]
                k += 1
        for agg in (a for a in spec.aggregates if a.kind == "sum"):
            for name in agg.feature_names():
                columns[name] = before[:, k]
                k += 1
        new["counts"][g] = values[last_pos, : len(count_w)]
        new["sums"][g] = values[last_pos, len(count_w) :]

    # exponentially weighted mean and variance, shifted by a per-entity reference for precision
    zs = [a for a in spec.aggregates if a.kind == "zscore"]
    if zs:
        x = np.stack([_signed_log(batch.numbers[a.field or ""][order], a.log) for a in zs], axis=1)  # [n, Z]
        finite = np.isfinite(x)
        half = np.asarray([a.half_life for a in zs]) * 1000.0
        decay = np.exp(-dt[:, None] * math.log(2.0) / half[None, :])
        decay[reset] = 0.0
        w0, m0, v0 = prior["ew_weight"][seg], prior["ew_mean"][seg], prior["ew_var"][seg]
        first_x = np.where(finite, x, 0.0)[seg_start]
        ref = np.where(carry[seg_start][:, None] & (w0 > 0), m0, first_x)
        y = np.where(finite, x - ref, 0.0)
        inc = finite.astype(np.float64)
        stored = np.hstack([w0, w0 * (m0 - ref), w0 * (v0 + (m0 - ref) ** 2)])
        b = np.hstack([inc, y, y * y])
        d3 = np.hstack([decay, decay, decay])
        b[carry] += d3[carry] * stored[carry]
        a = d3.copy()
        a[start] = 0.0
        values = _scan(a, b, span)
        before = r.before(values, stored, d3)
        Z = len(zs)
        wb, s1, s2 = before[:, :Z], before[:, Z : 2 * Z], before[:, 2 * Z :]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = ref + s1 / wb
            var_b = np.maximum(s2 / wb - (s1 / wb) ** 2, 0.0)
            sd = np.maximum(np.sqrt(var_b), 0.01 * np.abs(mean_b) + 1e-6)
            z = np.clip((x - mean_b) / sd, -Z_CLIP, Z_CLIP)
        enough = (n_before[:, None] >= np.asarray([a.min_history for a in zs])[None, :]) & finite & (wb > 0)
        z = np.where(enough, z, 0.0)
        for j, agg in enumerate(zs):
            columns[agg.feature_names()[0]] = z[:, j]
        wl, s1l, s2l = values[last_pos, :Z], values[last_pos, Z : 2 * Z], values[last_pos, 2 * Z :]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_l = np.where(wl > 0, ref[last_pos] + s1l / wl, 0.0)
            var_l = np.where(wl > 0, np.maximum(s2l / wl - (s1l / wl) ** 2, 0.0), 0.0)
        new["ew_weight"][g], new["ew_mean"][g], new["ew_var"][g] = wl, mean_l, var_l

    for agg in (a for a in spec.aggregates if a.kind == "since_last"):
        columns[agg.feature_names()[0]] = np.where(reset, spec.ttl, dt / 1000.0)

    # rings: each group's stored recent entries laid out before its events, then windows
    rings = [a for a in spec.aggregates if a.kind in ("novelty", *RECENT_ROWS)]
    if rings:
        for i_nov, agg in enumerate(a for a in spec.aggregates if a.kind == "novelty"):
            K = agg.capacity
            code = batch.codes[agg.field or ""][order]
            ring = prior[f"codes{i_nov}"][g]  # [groups, K]
            H, hrun, hpos = _layout(code, ring, K, r, empty=0)
            window = hpos[:, None] - K + np.arange(K)[None, :]
            same = (hrun[window] == run_id[:, None]) & (H[window] == code[:, None])
            columns[agg.feature_names()[0]] = ((code != 0) & ~same.any(axis=1)).astype(np.float64)
            new[f"codes{i_nov}"][g] = _final_ring(H, hrun, hpos[last_pos], run_id[last_pos], K, empty=0)
        for i_dm, agg in enumerate(a for a in spec.aggregates if a.kind in RECENT_ROWS):
            K = agg.rows
            rows = np.stack([_signed_log(batch.numbers[f][order], agg.log) for f in agg.fields], axis=1)  # [n, F]
            ring = prior[f"recent{i_dm}"][g]  # [groups, K, F]
            H, hrun, hpos = _layout(rows, ring, K, r, empty=np.nan)
            window = hpos[:, None] - K + np.arange(K)[None, :]
            past = np.where((hrun[window] == run_id[:, None])[:, :, None], H[window], np.nan)  # [n, K, F]
            present = np.isfinite(past)
            count = present.sum(axis=1)
            total = np.where(present, past, 0.0).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = total / count
                if agg.kind == "spread":
                    dev = np.where(present, past - mean[:, None, :], 0.0)
                    value = np.where(count > 1, np.sqrt((dev * dev).sum(axis=1) / count), 0.0)
                elif agg.kind == "repeats":  # the latest previous value, matched backwards (NaN never matches)
                    same = past[:, :-1, :] == past[:, -1:, :]  # [n, K-1, F]
                    value = np.cumprod(same[:, ::-1, :], axis=1).sum(axis=1).astype(np.float64)
                else:
                    value = np.where((count > 0) & np.isfinite(rows), rows - mean, 0.0)
            for j, name in enumerate(agg.feature_names()):
                columns[name] = value[:, j]
            new[f"recent{i_dm}"][g] = _final_ring(H, hrun, hpos[last_pos], run_id[last_pos], K, empty=np.nan)

    # seasonal: the row minus the entity's mean of the same time-of-period bucket one period ago
    for i_s, agg in enumerate(a for a in spec.aggregates if a.kind == "seasonal"):
        columns_s, rows_s = _seasonal(agg, prior, r, batch, i_s)
        columns.update(columns_s)
        for name, value in rows_s.items():
            new[name][g] = value

    out = np.empty((n, len(columns)))
    out[order] = np.stack([columns[name] for name in spec.feature_names()], axis=1)
    return out, new


def _seasonal(
    agg: Aggregate, prior: NDArray[np.void], r: Runs, batch: EntityBatch, index: int
) -> tuple[dict[str, Floats], dict[str, NDArray[np.generic]]]:
    """The ``seasonal`` aggregate (module docstring) for grouped events; returns its feature
    columns and the groups' new bucket rings (for the groups' last events, in group order)."""
    B = agg.buckets
    width = max(1, round(agg.period * 1000 / B))
    seg, run_id = r.seg, r.run_id
    x = np.stack([_signed_log(batch.numbers[f][r.order], agg.log) for f in agg.fields], axis=1)  # [n, F]
    finite = np.isfinite(x)
    xv = np.where(finite, x, 0.0)
    b = (r.T + r.base) // width  # absolute bucket of each event
    stamp_p = prior[f"season{index}_stamp"]  # [entities, B]: the stored rings
    cur_p = prior[f"season{index}_cur"]  # [entities, B, F, 2]
    prev_p = prior[f"season{index}_prev"]
    stored = (run_id == run_id[r.seg_start]) & r.carry[r.seg_start]  # in a run that continues the ring
    # the batch's sums and counts per (run, bucket); runs and buckets never decrease within a group
    key = run_id * (np.int64(1) << np.int64(40)) + (b - b.min())
    uniq, inv = np.unique(key, return_inverse=True)
    sums = np.zeros((len(uniq), x.shape[1]))
    counts = np.zeros((len(uniq), x.shape[1]))
    np.add.at(sums, inv, xv)
    np.add.at(counts, inv, finite.astype(np.float64))
    want = key - B  # the same run's bucket one period ago
    at = np.clip(np.searchsorted(uniq, want), 0, len(uniq) - 1)
    hit = (uniq[at] == want)[:, None]
    s_sum, s_cnt = np.where(hit, sums[at], 0.0), np.where(hit, counts[at], 0.0)
    slot = b % B
    st = stamp_p[seg, slot]
    # from the ring: the slot's bucket when it is the one a period ago, or the bucket before it
    # when the slot already holds this period's (begun in an earlier batch)
    ring = np.where((stored & (st == b - B))[:, None, None], cur_p[seg, slot], 0.0)
    ring += np.where((stored & (st == b))[:, None, None], prev_p[seg, slot], 0.0)
    s_sum, s_cnt = s_sum + ring[:, :, 0], s_cnt + ring[:, :, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where((s_cnt > 0) & finite, x - s_sum / s_cnt, 0.0)
    columns = {name: value[:, j] for j, name in enumerate(agg.feature_names())}

    # the new ring of each group: per slot, the latest bucket of the group's last run, and the
    # bucket one period before it
    last_pos = r.last_pos
    stamp = stamp_p[r.g].copy()  # [groups, B]
    cur = cur_p[r.g].copy()
    prev = prev_p[r.g].copy()
    keep = stored[last_pos]  # the group's last run continues the stored ring
    stamp[~keep] = NO_BUCKET
    cur[~keep] = 0.0
    prev[~keep] = 0.0
    group_of = r.rank
    in_last = run_id == run_id[last_pos][group_of]
    take = np.flatnonzero(in_last)[np.unique(key[in_last], return_index=True)[1]]  # each (run, bucket) once
    for e in take.tolist():  # the last runs' buckets, ascending per group: a few per entity and batch
        gi, bk = int(group_of[e]), int(b[e])
        k = int(inv[e])
        s = bk % B
        before = stamp[gi, s]
        if before == bk:  # the stored bucket continues into this batch
            cur[gi, s, :, 0] += sums[k]
            cur[gi, s, :, 1] += counts[k]
            continue
        if before == bk - B:
            prev[gi, s] = cur[gi, s]
        else:
            prev[gi, s] = 0.0
        stamp[gi, s] = bk
        cur[gi, s, :, 0] = sums[k]
        cur[gi, s, :, 1] = counts[k]
    names = (f"season{index}_stamp", f"season{index}_cur", f"season{index}_prev")
    return columns, dict(zip(names, (stamp, cur, prev), strict=True))


def _signed_log(x: Floats, on: bool) -> Floats:
    return signed_log1p(x) if on else x


def _layout(
    values: NDArray[np.generic], ring: NDArray[np.generic], K: int, r: Runs, empty: float
) -> tuple[NDArray[np.generic], Ints, Ints]:
    """Each group's ``K`` stored entries (``ring``, one row per group) followed by its events,
    in one array: ``(H, run of each entry, position of each event in H)``. Stored entries
    belong to the group's first run when it continues the state, to no run (-1) otherwise."""
    n = len(values)
    first = r.first
    n_groups = len(first)
    hpos = np.arange(n) + (r.rank + 1) * K
    H = np.full((n + n_groups * K, *values.shape[1:]), empty, dtype=values.dtype)
    H[hpos] = values
    hrun = np.full(n + n_groups * K, -1, dtype=np.int64)
    hrun[hpos] = r.run_id
    stored = (first + np.arange(n_groups) * K)[:, None] + np.arange(K)[None, :]  # [groups, K]
    H[stored] = ring
    hrun[stored] = np.where(r.carry[first], r.run_id[first], -1)[:, None]
    return H, hrun, hpos


def _final_ring(
    H: NDArray[np.generic], hrun: Ints, last_hpos: Ints, last_run: Ints, K: int, empty: float
) -> NDArray[np.generic]:
    """The last ``K`` entries of each group's final run, oldest first (others empty)."""
    window = last_hpos[:, None] - K + 1 + np.arange(K)[None, :]
    keep = hrun[window] == last_run[:, None]
    taken = H[window]
    if taken.ndim == 3:
        keep = keep[:, :, None]
    return np.where(keep, taken, np.asarray(empty, dtype=H.dtype))
