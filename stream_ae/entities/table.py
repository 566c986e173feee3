"""One input partition's entity state, in memory: a key -> slot index and a table of rows.

A row is a numpy structured record whose layout follows the declaration
(:func:`row_dtype`): the entity's effective latest event time and last applied offset, its
event count since it (re)started, the decayed window counts and sums, the exponentially
weighted mean and variance of each z-scored field, and the rings of recent categorical codes
and recent rows. Rows have a fixed size, so a changelog value is a row's bytes and a restore
reads thousands of them with one ``np.frombuffer``.

Example:
    >>> from stream_ae.entities.spec import RECENT_ROWS, AlarmSpec, EntitySpec
    >>> table = EntityTable(row_dtype(EntitySpec.from_dict({"features": [{"count": ["1h"]}]})))
    >>> slots = table.insert([b"card-1", b"card-2"])
    >>> table.lookup([b"card-2", b"card-3"]).tolist(), len(table)
    ([1, -1], 2)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.spec import RECENT_ROWS, AlarmSpec, EntitySpec

NO_TIME = np.iinfo(np.int64).min
NO_BUCKET = np.iinfo(np.int64).min // 2  # far from any bucket, and safe to subtract a period from


def row_dtype(spec: EntitySpec) -> np.dtype:
    """The state row of one entity under ``spec``."""
    counts = sum(len(a.windows) for a in spec.aggregates if a.kind == "count")
    sums = sum(len(a.windows) for a in spec.aggregates if a.kind == "sum")
    zscores = sum(1 for a in spec.aggregates if a.kind == "zscore")
    fields: list[tuple[str, str] | tuple[str, str, tuple[int, ...]]] = [
        ("last_ms", "<i8"),  # effective latest event time (never goes back: late events count at it)
        ("last_offset", "<i8"),  # the last input offset applied
        ("n", "<i8"),  # events since the entity (re)started
        ("counts", "<f8", (counts,)),  # decayed counts as of last_ms, one per count window
        ("sums", "<f8", (sums,)),  # decayed sums as of last_ms, one per sum window
        ("ew_weight", "<f8", (zscores,)),
        ("ew_mean", "<f8", (zscores,)),
        ("ew_var", "<f8", (zscores,)),
    ]
    for i, agg in enumerate(a for a in spec.aggregates if a.kind == "novelty"):
        fields.append((f"codes{i}", "<u4", (agg.capacity,)))  # the last events' codes, oldest first; 0 empty
    for i, agg in enumerate(a for a in spec.aggregates if a.kind in RECENT_ROWS):
        fields.append((f"recent{i}", "<f8", (agg.rows, len(agg.fields))))  # last rows, oldest first; NaN empty
    for i, agg in enumerate(a for a in spec.aggregates if a.kind == "seasonal"):
        B, F = agg.buckets, len(agg.fields)
        fields.append((f"season{i}_stamp", "<i8", (B,)))  # each slot's latest bucket (NO_BUCKET: none)
        fields.append((f"season{i}_cur", "<f8", (B, F, 2)))  # its sum and count per field
        fields.append((f"season{i}_prev", "<f8", (B, F, 2)))  # the bucket one period before it
    if spec.alarm is not None:
        fields += post_score_fields(spec.alarm)
    return np.dtype(fields)


def post_score_fields(alarm: AlarmSpec) -> list[tuple[str, str] | tuple[str, str, tuple[int, ...]]]:
    """The post-score state of one entity (:mod:`stream_ae.entities.alarm`)."""
    return [
        ("alarm_ms", "<i8"),  # effective time of the latest judged event
        ("alarm_seen", "<i8"),  # events judged since the entity (re)started
        ("lk_ring", "<f8", (alarm.short,)),  # the last raw scores, oldest first; NaN empty
        ("lk_mean", "<f8"),  # the long-term mean and variance of the short-term mean
        ("lk_var", "<f8"),
        ("last_alarm_ms", "<i8"),  # effective time of the latest alarm (NO_TIME: none)
        ("incident_ms", "<i8"),  # when the latest incident opened (NO_TIME: none)
        ("incident_alarms", "<i8"),  # the latest incident's alarms so far
        ("incident_peak", "<f8"),  # and its highest published score
        ("closed_ms", "<i8"),  # when the latest incident closed (NO_TIME: open, or none)
    ]


def empty_rows(dtype: np.dtype, n: int) -> NDArray[np.void]:
    """``n`` rows of a new entity: zero counts, empty rings (NaN rows, 0 codes)."""
    rows = np.zeros(n, dtype=dtype)
    for name in dtype.names or ():
        if name.startswith("recent") or name == "lk_ring":
            rows[name] = np.nan
        elif name in ("last_alarm_ms", "incident_ms", "closed_ms"):
            rows[name] = NO_TIME
        elif name.startswith("season") and name.endswith("_stamp"):
            rows[name] = NO_BUCKET
    return rows


class EntityTable:
    """Rows of the entities of one partition, addressed by key; slots are reused after a
    delete. ``watermark_ms`` is the latest event time the partition has seen."""

    def __init__(self, dtype: np.dtype, capacity: int = 1024) -> None:
        self.dtype = dtype
        self.rows = empty_rows(dtype, capacity)
        self.index: dict[bytes, int] = {}
        self.keys: list[bytes | None] = [None] * capacity
        self.held = np.zeros(capacity, dtype=bool)  # slot -> an entity lives there (a TTL sweep scans it)
        self._free: list[int] = []
        self._next = 0
        self.watermark_ms = np.iinfo(np.int64).min

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        """Bytes held for rows (allocated capacity), excluding the Python key index."""
        return int(self.rows.nbytes)

    def lookup(self, keys: Sequence[bytes]) -> NDArray[np.int64]:
        """The slot of each key, -1 where the entity is not held."""
        return np.fromiter(map(self.index.get, keys, itertools.repeat(-1, len(keys))), np.int64, count=len(keys))

    def insert(self, keys: Sequence[bytes]) -> NDArray[np.int64]:
        """Slots for new keys (not held yet), rows reset to a new entity's: freed slots first,
        then a contiguous run of fresh ones (written by slice, not slot by slot)."""
        n = len(keys)
        reuse = min(n, len(self._free))
        reused = [self._free.pop() for _ in range(reuse)]
        start, fresh = self._next, n - reuse
        if start + fresh > len(self.rows):
            self._grow(start + fresh)
        self._next += fresh
        out = np.concatenate([np.asarray(reused, dtype=np.int64), np.arange(start, start + fresh, dtype=np.int64)])
        self.index.update(zip(keys, out.tolist(), strict=True))
        new = empty_rows(self.dtype, n)
        for key, slot in zip(keys[:reuse], reused, strict=True):
            self.keys[slot] = key
        self.rows[reused] = new[:reuse]
        self.held[reused] = True
        self.keys[start : start + fresh] = keys[reuse:]
        self.rows[start : start + fresh] = new[reuse:]
        self.held[start : start + fresh] = True
        return out

    def delete(self, slots: NDArray[np.int64]) -> list[bytes]:
        """Forget the entities at ``slots``; returns their keys."""
        gone: list[bytes] = []
        for slot in slots.tolist():
            key = self.keys[slot]
            if key is None:
                continue
            del self.index[key]
            self.keys[slot] = None
            self.held[slot] = False
            self._free.append(slot)
            gone.append(key)
        return gone

    def held_slots(self) -> NDArray[np.int64]:
        """The slots that hold an entity, in slot order: one vectorised scan, not a walk over
        the key index (857,142 entities held: 0.7 ms against 11.6)."""
        return np.flatnonzero(self.held[: self._next])

    def _grow(self, needed: int) -> None:
        size = max(needed, 2 * len(self.rows))
        rows = empty_rows(self.dtype, size)
        rows[: len(self.rows)] = self.rows
        self.rows = rows
        self.keys.extend([None] * (size - len(self.keys)))
        self.held = np.concatenate([self.held, np.zeros(size - len(self.held), dtype=bool)])
