"""The entity state a worker holds, one table per input partition, and what each batch changed.

:meth:`EntityStore.process` runs the batch function (:mod:`stream_ae.entities.step`) on one
partition's events, writes the touched entities' new rows, and returns a
:class:`PartitionDelta`: for every entity the batch touched, expired or evicted, its row before
and after. The delta is what the changelog carries (:mod:`stream_ae.entities.changelog`) and
what :meth:`EntityStore.undo` puts back when the batch is rewound (a publish failed), so a
retried batch never sees its own first attempt.

Bounds: an entity idle longer than the TTL behind its partition's latest event time is
dropped (``ttl``), and beyond ``max_entities`` per partition the least recently seen are
(``capacity``); both leave tombstones in the changelog and count in
``stream_ae_entity_evictions_total``. The TTL never changes a feature (the batch function
treats such an entity as new anyway); a capacity eviction does: the entity returns as new.

Example:
    >>> from stream_ae.entities.spec import EntitySpec
    >>> from stream_ae.entities.step import EntityBatch
    >>> store = EntityStore(EntitySpec.from_dict({"features": [{"count": ["1h"]}]}))
    >>> batch = EntityBatch([b"a", b"a"], np.array([0, 1000]), np.array([0, 1]), {}, {})
    >>> features, delta = store.process(3, batch)
    >>> features.round(3).ravel().tolist(), delta.keys, store.held()
    ([0.0, 1.0], [b'a'], {3: 1})
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.alarm import Closure, Judged, judge
from stream_ae.entities.spec import EntitySpec
from stream_ae.entities.step import EntityBatch, StepResult, step_partitions
from stream_ae.entities.table import NO_TIME, EntityTable, empty_rows, post_score_fields, row_dtype

EVICT_TO = 0.95  # a capacity eviction frees this much below max_entities, so it runs rarely


@dataclass
class PartitionDelta:
    """What one batch changed in one partition's table: per entity, its row before (``pre``,
    absent for a new entity) and after (``post``, absent for an expired or evicted one), and
    the first and last input offsets the batch applied to it."""

    partition: int
    keys: list[bytes]
    pre: NDArray[np.void]
    pre_held: NDArray[np.bool_]
    post: NDArray[np.void]
    post_held: NDArray[np.bool_]
    first_offsets: NDArray[np.int64]
    last_offsets: NDArray[np.int64]
    # per event of the batch: a re-delivery the state already held (features only, no change)
    replayed: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class StoreCounts:
    """What the store did since the counts were last taken (for the metrics)."""

    evicted: Counter[str] = field(default_factory=Counter)  # reason -> entities
    replayed: int = 0  # events at or before their entity's last applied offset


def _closed_by_expiry(keys: list[bytes], rows: NDArray[np.void], cooldown_ms: int, last_row: int) -> list[Closure]:
    """The open incidents of entities the TTL or the capacity bound dropped: closed, as
    their next event after the cooldown would have closed them (found after the batch's
    event ``last_row``)."""
    open_ = (rows["incident_ms"] != NO_TIME) & (rows["closed_ms"] == NO_TIME) & (rows["last_alarm_ms"] != NO_TIME)
    return [
        Closure(
            last_row,
            keys[i],
            int(rows["incident_ms"][i]),
            int(rows["last_alarm_ms"][i]) + cooldown_ms,
            int(rows["incident_alarms"][i]),
            float(rows["incident_peak"][i]),
            expired=True,
        )
        for i in np.flatnonzero(open_).tolist()
    ]


class EntityStore:
    """Entity tables of the partitions held, keyed by input partition."""

    def __init__(self, spec: EntitySpec) -> None:
        self.spec = spec
        self.dtype = row_dtype(spec)
        self.tables: dict[int, EntityTable] = {}
        self.counts = StoreCounts()
        self._swept: dict[int, int] = {}

    def table(self, partition: int) -> EntityTable:
        t = self.tables.get(partition)
        if t is None:
            t = self.tables[partition] = EntityTable(self.dtype)
        return t

    def held(self) -> dict[int, int]:
        """Entities held per partition."""
        return {p: len(t) for p, t in self.tables.items()}

    def drop(self, partitions: list[int]) -> None:
        """Forget partitions this worker no longer owns (their changelog keeps them)."""
        for p in partitions:
            self.tables.pop(p, None)
            self._swept.pop(p, None)

    def take_counts(self) -> StoreCounts:
        counts, self.counts = self.counts, StoreCounts()
        return counts

    def process(self, partition: int, batch: EntityBatch) -> tuple[NDArray[np.float64], PartitionDelta]:
        """Features of one partition's events (offset order) and the change they made."""
        [out] = self.process_partitions([(partition, batch)])
        return out

    def process_partitions(
        self, batches: list[tuple[int, EntityBatch]]
    ) -> list[tuple[NDArray[np.float64], PartitionDelta]]:
        """:meth:`process` for several partitions' events at once (one batch function pass,
        :func:`~stream_ae.entities.step.step_partitions`), one result per partition."""
        tables = [self.table(p) for p, _ in batches]
        results = step_partitions(self.spec, tables, [b for _, b in batches])
        return [
            self._apply(p, table, batch, result)
            for (p, batch), table, result in zip(batches, tables, results, strict=True)
        ]

    def _apply(
        self, partition: int, table: EntityTable, batch: EntityBatch, result: StepResult
    ) -> tuple[NDArray[np.float64], PartitionDelta]:
        """Write a step's new rows into the partition's table; the delta they make."""
        self.counts.replayed += result.n_replayed
        slots, pre = result.slots.copy(), result.prior  # what the step read: the table is unchanged since
        pre_held = slots >= 0
        if self.spec.alarm is not None:  # the post-score state is the alarm stage's to change
            for name in post_score_fields(self.spec.alarm):
                result.rows[name[0]][pre_held] = pre[name[0]][pre_held]
        new = ~pre_held
        if new.any():
            slots[new] = table.insert([k for k, is_new in zip(result.keys, new.tolist(), strict=True) if is_new])
        table.rows[slots] = result.rows
        if len(batch):
            table.watermark_ms = max(table.watermark_ms, int(batch.times_ms.max()))
        delta = PartitionDelta(
            partition,
            list(result.keys),
            pre,
            pre_held,
            result.rows,
            np.ones(len(slots), dtype=bool),
            result.first_offsets,
            result.last_offsets,
            result.replayed if result.replayed is not None else np.zeros(len(batch), dtype=bool),
        )
        if self.spec.alarm is None:  # else after the post-score stage (judge), which reads these rows
            self._expire(partition, table, delta)
        return result.features, delta

    def judge(self, batch: EntityBatch, raw: NDArray[np.float64], threshold: float, delta: PartitionDelta) -> Judged:
        """The post-score stage (:mod:`stream_ae.entities.alarm`) on the events of ``batch``,
        which :meth:`process` has just applied (``delta``): their published scores, alarms and
        incidents. The TTL and capacity bounds apply after it (with an alarm section,
        :meth:`process` leaves them to it). Writes the entities' post-score state, and into ``delta``'s after rows, so
        the changelog record of the batch carries it. A re-delivered event is judged against
        the state as it is and changes nothing (it opens no incident a second time)."""
        alarm = self.spec.alarm
        assert alarm is not None, "the entity declaration has no alarm section"
        table = self.table(delta.partition)
        ttl_ms = round(self.spec.ttl * 1000)
        n = len(batch)
        out = Judged.empty(n)
        replayed = delta.replayed if len(delta.replayed) == n else np.zeros(n, dtype=bool)
        for again in (True, False):  # re-deliveries first: they precede this batch's new events
            mine = np.flatnonzero(replayed == again)
            if not len(mine):
                continue
            keys = [batch.keys[i] for i in mine.tolist()]
            uniq = list(dict.fromkeys(keys))
            position = dict(zip(uniq, range(len(uniq)), strict=True))
            inv = np.fromiter(map(position.__getitem__, keys), np.int64, count=len(keys))
            slots = table.lookup(uniq)
            held = slots >= 0  # a batch larger than max_entities may have evicted one already
            prior = empty_rows(self.dtype, len(uniq))
            prior[held] = table.rows[slots[held]]
            judged, rows = judge(alarm, ttl_ms, prior, held, inv, batch.times_ms[mine], raw[mine], threshold)
            if again:  # judged as it is: it opens or closes nothing a second time
                judged.opens[:] = False
                judged.closures = []
            else:
                table.rows[slots[held]] = rows[held]
                now = table.lookup(delta.keys)  # the after rows are the table's, post-score fields included
                delta.post[now >= 0] = table.rows[now[now >= 0]]
            out.put(mine, judged)
        gone = self._expire(delta.partition, table, delta)
        if alarm.cooldown is not None and n and len(gone):
            out.closures += _closed_by_expiry(gone[0], gone[1], round(alarm.cooldown * 1000), last_row=n - 1)
        return out

    def _expire(
        self, partition: int, table: EntityTable, delta: PartitionDelta
    ) -> tuple[list[bytes], NDArray[np.void]]:
        """TTL and capacity bounds; what goes is added to ``delta`` (tombstones) and returned
        (keys and their last rows)."""
        ttl_ms = round(self.spec.ttl * 1000)
        gone: list[tuple[str, NDArray[np.int64]]] = []
        every = max(1000, min(ttl_ms // 100, 60_000))  # sweep at most once per 1 % of the TTL of event time
        if table.watermark_ms - self._swept.get(partition, np.iinfo(np.int64).min) >= every:
            self._swept[partition] = table.watermark_ms
            held = table.held_slots()
            old = held[table.rows["last_ms"][held] < table.watermark_ms - ttl_ms]
            if len(old):
                gone.append(("ttl", old))
        excess = len(table) - self.spec.max_entities
        if excess > 0:
            held = table.held_slots()
            held = held[~np.isin(held, gone[0][1])] if gone else held
            n = min(len(held), excess + int(self.spec.max_entities * (1 - EVICT_TO)))
            oldest = held[np.argpartition(table.rows["last_ms"][held], n - 1)[:n]] if n < len(held) else held
            gone.append(("capacity", oldest))
        all_keys: list[bytes] = []
        all_rows = [empty_rows(self.dtype, 0)]
        for reason, slots in gone:
            rows = table.rows[slots].copy()
            keys = table.delete(slots)
            all_keys += keys
            all_rows.append(rows)
            self.counts.evicted[reason] += len(keys)
            k = len(keys)
            delta.keys += keys
            delta.pre = np.concatenate([delta.pre, rows])
            delta.pre_held = np.concatenate([delta.pre_held, np.ones(k, dtype=bool)])
            delta.post = np.concatenate([delta.post, empty_rows(self.dtype, k)])
            delta.post_held = np.concatenate([delta.post_held, np.zeros(k, dtype=bool)])
            delta.first_offsets = np.concatenate([delta.first_offsets, rows["last_offset"]])
            delta.last_offsets = np.concatenate([delta.last_offsets, rows["last_offset"]])
        return all_keys, np.concatenate(all_rows)

    def undo(self, deltas: list[PartitionDelta]) -> None:
        """Put back the rows from before ``deltas`` (newest first: pass them in reverse order)."""
        for d in deltas:
            table = self.tables.get(d.partition)
            if table is None:  # revoked meanwhile: its state is the next owner's now
                continue
            slots = table.lookup(d.keys)
            gone = slots >= 0
            table.delete(slots[gone & ~d.pre_held])
            back = np.flatnonzero(d.pre_held)
            if len(back):
                where = table.lookup([d.keys[i] for i in back.tolist()])
                absent = where < 0
                if absent.any():
                    where[absent] = table.insert([d.keys[i] for i in back[absent].tolist()])
                table.rows[where] = d.pre[back]

    def load(self, partition: int, keys: list[bytes], rows: NDArray[np.void]) -> None:
        """A partition's state restored from its changelog (replaces what was held)."""
        table = EntityTable(self.dtype, capacity=max(1024, len(keys)))
        if keys:
            table.rows[table.insert(keys)] = rows
            table.watermark_ms = int(rows["last_ms"].max())
        self.tables[partition] = table
