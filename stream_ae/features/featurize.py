"""Events to the model's input matrix: the declared fields, then the entity features.

One implementation for every caller: the worker's hot path (:mod:`stream_ae.pipeline`, with
the state it holds per partition) and the offline tools (``stream-ae train``, ``score``,
``evaluate`` and the trainer, which replay a file or a Kafka window through a fresh
:class:`~stream_ae.entities.store.EntityStore`). The steps, per batch:

1. encode the declared fields (:meth:`FeatureEncoder.encode`): a row with a bad value is
   rejected with its ``schema_*`` reason and never reaches the entity state;
2. find each good row's entity and event time: a missing, non-scalar or over-long entity, or
   (when the entity is a field) a record key that is not that field, is rejected with an
   ``entity_*`` reason, again before the state sees it;
3. run each partition's rows, in offset order, through the state (the batch function) and
   append the scaled entity features (:meth:`FeatureEncoder.add_derived`).

Co-partitioning: when the entity is a field, a worker only computes per-entity state when the
input is keyed by that field (so each entity's events share one partition and one worker). A
record whose key differs is dead-lettered as ``entity_key_mismatch``, never scored against a
slice of its entity's history.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.spec import EntitySpec
from stream_ae.entities.step import EntityBatch
from stream_ae.entities.store import EntityStore, PartitionDelta
from stream_ae.features.encoder import EncodedBatch, EncodeError, Event, FeatureEncoder, epoch_seconds

MAX_ENTITY_KEY_BYTES = 1024
_NUMBER = {int, float, type(None)}


@dataclass
class RecordMeta:
    """Where each event came from: its input partition and offset (the order the state
    applies events in), its record key and timestamp (None offline: a file has neither)."""

    partitions: NDArray[np.int64]
    offsets: NDArray[np.int64]
    keys: list[bytes | None] | None = None
    timestamps_ms: NDArray[np.int64] | None = None

    @classmethod
    def for_file(cls, events: Sequence[Event], key_field: str | None = None) -> RecordMeta:
        """Rows of a file: one partition, the row number as the offset; with ``key_field``,
        that field's text as the record key (what ``stream-ae produce --from`` keys by)."""
        n = len(events)
        keys = None
        if key_field is not None:
            keys = [str(v).encode() if (v := e.get(key_field)) is not None else None for e in events]
        return cls(np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64), keys)

    def take(self, index: NDArray[np.int64]) -> RecordMeta:
        return RecordMeta(
            self.partitions[index],
            self.offsets[index],
            [self.keys[i] for i in index.tolist()] if self.keys is not None else None,
            self.timestamps_ms[index] if self.timestamps_ms is not None else None,
        )


@dataclass
class Featurized:
    """A batch's model input: ``batch.X`` holds the rows ``batch.ok`` (indices into the events)
    that passed every check; ``rejects`` maps every other event to ``(reason, detail)``;
    ``deltas`` is what the batch changed in the entity state."""

    batch: EncodedBatch
    rejects: dict[int, tuple[str, str]] = field(default_factory=dict)
    deltas: list[PartitionDelta] = field(default_factory=list)
    groups: list[EntityRows] = field(default_factory=list)  # per partition: which rows, as the state saw them
    store: EntityStore | None = None  # the entity state the batch ran through (the post-score stage's too)


@dataclass
class EntityRows:
    """One partition's events as the entity state applied them: ``rows`` are their rows of
    the model input (``batch.X``), ``events`` their keys, times and offsets, in offset order."""

    partition: int
    rows: NDArray[np.int64]
    events: EntityBatch


def featurize(
    encoder: FeatureEncoder,
    events: Sequence[Event],
    meta: RecordMeta,
    store: EntityStore | None = None,
    *,
    check_record_key: bool = False,
) -> Featurized:
    """The model's input for ``events`` (see the module docstring). ``store`` holds the
    entity state, and is updated; it is required when the schema declares entity features."""
    batch = encoder.encode(events)
    rejects = {i: (f"schema_{err.reason}", str(err)) for i, err in batch.errors.items()}
    if encoder.schema.entity is None:
        return Featurized(batch, rejects)
    if store is None:
        raise ValueError("this schema declares entity features: give the entity store")
    state = entity_features(encoder, events, meta, store, batch.ok, check_record_key)
    for j, why in state.rejects.items():
        rejects[int(batch.ok[j])] = why
    return Featurized(
        encoder.add_derived(batch, state.features, state.kept), rejects, state.deltas, state.groups, store
    )


@dataclass
class EntityFeatures:
    """The raw (unscaled) entity features of the rows ``kept`` (positions among the rows given),
    the rejected rows' reasons by position, and what the state changed."""

    kept: NDArray[np.int64]
    features: NDArray[np.float64]
    rejects: dict[int, tuple[str, str]]
    deltas: list[PartitionDelta]
    groups: list[EntityRows] = field(default_factory=list)


def entity_features(
    encoder: FeatureEncoder,
    events: Sequence[Event],
    meta: RecordMeta,
    store: EntityStore,
    rows: NDArray[np.int64],
    check_record_key: bool = False,
) -> EntityFeatures:
    """Run the events ``rows`` (which encoded) through ``store``, partition by partition in
    offset order: the one loop that both the worker and the offline tools use."""
    spec = encoder.schema.entity
    assert spec is not None
    good_events = [events[i] for i in rows.tolist()]
    sub = meta.take(rows)
    keys, bad = entity_keys(spec, good_events, sub.keys, check_record_key)
    times, bad_time = event_times_ms(encoder.schema.time_field, good_events, sub.timestamps_ms)
    rejects = {**bad_time, **bad}
    kept = np.setdiff1d(np.arange(len(rows)), np.fromiter(rejects, np.int64, count=len(rejects)), assume_unique=True)
    derived = np.zeros((len(kept), len(spec.feature_names())))
    deltas: list[PartitionDelta] = []
    groups: list[EntityRows] = []
    # partitions together, offset order within each (the order they were read); the fields are
    # read once for all, and the store runs one batch function pass over every partition
    mine = kept[np.argsort(sub.partitions[kept], kind="stable")]
    parts = sub.partitions[mine]
    cuts = [0, *(np.flatnonzero(parts[1:] != parts[:-1]) + 1).tolist(), len(mine)]
    spans = [(a, b) for a, b in itertools.pairwise(cuts) if a < b]  # one per partition
    all_keys = [keys[i] for i in mine.tolist()]
    all_times, all_offsets = times[mine], sub.offsets[mine]
    all_numbers = {f: numbers(good_events, f, mine) for f in spec.numeric_fields()}
    all_codes = {f: codes(good_events, f, mine) for f in spec.category_fields()}
    batches = [
        (
            int(parts[a]),
            EntityBatch(
                all_keys[a:b],
                all_times[a:b],
                all_offsets[a:b],
                {f: v[a:b] for f, v in all_numbers.items()},
                {f: v[a:b] for f, v in all_codes.items()},
            ),
        )
        for a, b in spans
    ]
    at_all = np.searchsorted(kept, mine)  # each event's row among the kept ones
    for (a, b), (p, batch), (features, delta) in zip(spans, batches, store.process_partitions(batches), strict=True):
        derived[at_all[a:b]] = features
        deltas.append(delta)
        groups.append(EntityRows(p, at_all[a:b], batch))
    return EntityFeatures(kept, derived, rejects, deltas, groups)


def entity_keys(
    spec: EntitySpec, events: Sequence[Event], record_keys: list[bytes | None] | None, check_record_key: bool
) -> tuple[list[bytes | None], dict[int, tuple[str, str]]]:
    """Each event's entity key, and the events without a usable one."""
    bad: dict[int, tuple[str, str]] = {}
    keys: list[bytes | None]
    if spec.field is None:
        if record_keys is None:
            raise ValueError("the entity is the Kafka record key: a file needs a key column (--key-field)")
        keys = list(record_keys)
    else:
        values = [e.get(spec.field) for e in events]
        if set(map(type, values)) <= {str}:  # the common case, in one C-level pass
            keys = list(map(str.encode, cast(list[str], values)))
        else:
            for i, v in enumerate(values):
                if v is None:
                    bad[i] = ("entity_missing", f"field {spec.field!r} is absent or null")
                elif not isinstance(v, str | int) or isinstance(v, bool):
                    bad[i] = ("entity_not_scalar", f"field {spec.field!r} is a {type(v).__name__}")
            keys = [str(v).encode() if i not in bad else None for i, v in enumerate(values)]
        if check_record_key and record_keys is not None and keys != record_keys:
            for i, (k, rk) in enumerate(zip(keys, record_keys, strict=True)):
                if k is not None and k != rk:
                    bad[i] = ("entity_key_mismatch", f"record key differs from {spec.field!r}: key the input by it")
    if None in keys or max(map(len, filter(None, keys)), default=0) > MAX_ENTITY_KEY_BYTES:
        for i, k in enumerate(keys):
            if k is None and i not in bad:
                bad[i] = ("entity_missing", "the record has no key")
            elif k is not None and len(k) > MAX_ENTITY_KEY_BYTES:
                bad[i] = ("entity_key_too_long", f"{len(k)} bytes > {MAX_ENTITY_KEY_BYTES}")
    return keys, bad


def event_times_ms(
    time_field: str | None, events: Sequence[Event], record_ms: NDArray[np.int64] | None
) -> tuple[NDArray[np.int64], dict[int, tuple[str, str]]]:
    """Event time in epoch milliseconds: the schema's timestamp field, else the record's."""
    if time_field is None:
        if record_ms is None:
            raise ValueError("entity features need event time: declare a time_field (a file has no record timestamps)")
        return record_ms.astype(np.int64), {}
    errors: dict[int, EncodeError] = {}
    secs = epoch_seconds([e.get(time_field) for e in events], time_field, errors)
    missing = ~np.isfinite(secs)
    bad = {int(i): ("entity_bad_time", f"{time_field!r} is missing or not a time") for i in np.flatnonzero(missing)}
    return np.where(missing, 0, np.round(secs * 1000.0)).astype(np.int64), bad


def numbers(events: Sequence[Event], name: str, rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """A field's values as floats (NaN where missing or not a number)."""
    values = [events[i].get(name) for i in rows.tolist()]
    if not set(map(type, values)) <= _NUMBER:
        values = [v if type(v) in (int, float) else None for v in values]
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        return np.array([float(v) if v is not None and abs(v) < 1e308 else np.nan for v in values])


def codes(events: Sequence[Event], name: str, rows: NDArray[np.int64]) -> NDArray[np.uint32]:
    """A field's values as stable non-zero 32-bit codes (CRC-32 of the text, lowest bit set);
    0 where missing."""
    values: list[Any] = [events[i].get(name) for i in rows.tolist()]
    if set(map(type, values)) <= {str}:  # the common case: no None, no str() of each value
        return np.fromiter(map(zlib.crc32, map(str.encode, values)), np.uint32, count=len(values)) | np.uint32(1)
    present = [v is not None for v in values]
    crc = np.fromiter(map(zlib.crc32, map(str.encode, map(str, values))), np.uint32, count=len(values))
    return np.where(present, crc | np.uint32(1), np.uint32(0))


def store_for(encoder: FeatureEncoder) -> EntityStore | None:
    """A fresh, empty entity store for replays with ``encoder`` (None without entity features)."""
    spec = encoder.schema.entity
    return EntityStore(spec) if spec is not None else None


def featurize_file(encoder: FeatureEncoder, events: Sequence[Event], key_field: str | None = None) -> Featurized:
    """A file's events replayed from an empty state, in file order (offline scoring)."""
    return featurize(encoder, events, RecordMeta.for_file(events, key_field), store_for(encoder))


def fit_encoder(encoder: FeatureEncoder, events: Sequence[Event], meta: RecordMeta) -> EncodedBatch:
    """Fit ``encoder`` on ``events`` (declared fields, then the entity features that replaying
    them gives) and return the training matrix: the rows that pass every check."""
    encoder.fit(events)
    batch = encoder.encode(events)
    if encoder.schema.entity is None:
        return batch
    state = entity_features(encoder, events, meta, EntityStore(encoder.schema.entity), batch.ok)
    encoder.fit_derived(state.features)
    return encoder.add_derived(batch, state.features, state.kept)
