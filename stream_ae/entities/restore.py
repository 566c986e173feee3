"""Reading a partition's entity state back from its changelog (on assignment, before any of
its events are processed: the worker keeps the input partition paused until then).

The restore consumer belongs to no group, reads with ``read_committed`` (aborted
exactly-once batches never come back) and stops when its *position* reaches the end offset
taken at the start (a transaction marker can be the last offset, so waiting for a record at
the end offset would wait forever). Each key's latest record wins; :func:`restore_partition`
then picks each entity's row by the committed input offset (:mod:`stream_ae.entities.changelog`).
"""

from __future__ import annotations

import gc
import operator
import time
from dataclasses import dataclass

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from numpy.typing import NDArray

from stream_ae.entities import changelog
from stream_ae.entities.spec import EntitySpec

_KEY, _VALUE = operator.attrgetter("key"), operator.attrgetter("value")


@dataclass
class Restored:
    keys: list[bytes]
    rows: NDArray[np.void]
    records: int  # changelog records read
    seconds: float


async def restore_partition(
    consumer: AIOKafkaConsumer,
    topic: str,
    partition: int,
    spec: EntitySpec,
    row: np.dtype,
    committed: int,
    chunk: int = 50_000,
) -> Restored:
    """The state of ``partition`` as of the input offset ``committed``: the changelog is read
    in chunks, each decoded at once into the rows it gives (:func:`changelog.rows_as_of`); an
    index keeps each key's latest record, whose row is copied once at the end.

    The garbage collector is paused meanwhile: aiokafka builds a ``ConsumerRecord`` per record
    (no cycles among them), and the collector's passes over a million of them were a fifth of
    the restore's time."""
    start = time.perf_counter()
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    end = (await consumer.end_offsets([tp]))[tp]
    # an explicit seek: seek_to_beginning() can lose a race with the reset that assign() starts
    consumer.seek(tp, (await consumer.beginning_offsets([tp]))[tp])
    latest: dict[bytes, int] = {}  # key -> the number of its latest record (in read order)
    chunks: list[NDArray[np.void]] = []  # per chunk: each decoded record's row as of `committed`
    rows_of: list[NDArray[np.int64]] = []  # per chunk: record number -> its row in all chunks, -1: none
    n = decoded = 0
    collecting = gc.isenabled()
    gc.disable()
    try:
        while await consumer.position(tp) < end:
            got = await consumer.getmany(tp, timeout_ms=100, max_records=chunk)
            for msgs in got.values():
                recs, index = changelog.decode_chunk(row, list(map(_VALUE, msgs)))
                rows, ok = changelog.rows_as_of(spec, row, recs, committed)
                chunks.append(rows)
                gives = index >= 0  # a tombstone, another layout, or a record without the row: none
                gives[gives] = ok[index[gives]]
                rows_of.append(np.where(gives, index + decoded, -1))
                decoded += len(recs)
                latest.update(zip(map(_KEY, msgs), range(n, n + len(msgs)), strict=True))
                n += len(msgs)
    finally:
        if collecting:
            gc.enable()
    if not latest:
        return Restored([], np.zeros(0, dtype=row), n, time.perf_counter() - start)
    number = np.fromiter(latest.values(), np.int64, count=len(latest))
    row_index = np.concatenate(rows_of)[number]
    live = row_index >= 0  # an entity whose latest record gives no row is left out
    keys = [k for k, ok in zip(latest, live.tolist(), strict=True) if ok]
    return Restored(keys, _gather(chunks, row_index[live], row), n, time.perf_counter() - start)


def _gather(chunks: list[NDArray[np.void]], index: NDArray[np.int64], row: np.dtype) -> NDArray[np.void]:
    """``concatenate(chunks)[index]`` with one copy of the rows taken, not two, as plain bytes
    (a structured copy goes field by field)."""
    opaque = np.dtype((np.void, row.itemsize))
    out = np.empty(len(index), dtype=opaque)
    starts = np.cumsum([0] + [len(c) for c in chunks])
    which = np.searchsorted(starts, index, side="right") - 1
    for c, rows in enumerate(chunks):
        mine = np.flatnonzero(which == c)
        if len(mine):
            out[mine] = rows.view(opaque)[index[mine] - starts[c]]
    return out.view(row)
