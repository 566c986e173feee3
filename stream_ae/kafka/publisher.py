"""Batch production: a micro-batch's records go out as one record batch per partition.

``AIOKafkaProducer.send()`` costs a future, a partitioner call, a size check and a debug log
line per record, and the caller then waits on one future per record. :class:`BatchPublisher`
instead picks every record's partition for the whole batch at once (Kafka's own default
partitioner, :mod:`stream_ae.kafka.partitioner`), fills one ``BatchBuilder`` per partition
(``create_batch()``; a full builder is sent and a new one started) and submits it with
``send_batch()``: one future, and one acknowledgement to wait for, per record batch.

Sizes: a record batch holds at most ``batch_bytes`` of uncompressed records (the worker
sets it below every output topic's ``max.message.bytes``, and lowers it when the broker says
a topic's limit fell), so a batch the broker would refuse is never built. A single record larger than that cannot
travel at all; :func:`fits` tells the router beforehand, and it dead-letters such a record as
``oversized`` (a record that reaches :meth:`BatchPublisher.publish` anyway raises
:class:`RecordTooLarge`, never a silent drop).

Example (a real broker needed):
    >>> publisher = BatchPublisher(producer, batch_bytes=1_000_000)          # doctest: +SKIP
    >>> futures = await publisher.publish("scores", [b"k1", None], [b"{}", b"{}"])  # doctest: +SKIP
    >>> await asyncio.gather(*futures)                                       # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from stream_ae.kafka.limits import BATCH_OVERHEAD, RECORD_OVERHEAD, fits
from stream_ae.kafka.partitioner import partition_for_keys


class RecordTooLarge(ValueError):
    """A record does not fit in any record batch the topic accepts."""


class BatchPublisher:
    """Publishes records through ``producer`` in per-partition record batches.

    With ``make_producer`` the publisher owns its producer's lifetime (:meth:`start`,
    :meth:`stop`) and can :meth:`renew` it: aiokafka's idempotent producer keeps the sequence
    numbers of a batch the broker refused, and every later batch to that partition then fails
    with ``OutOfOrderSequenceNumber`` (aio-libs/aiokafka#1017). A new producer gets a new
    producer id and starts its sequences afresh (a transactional one fences its predecessor).
    """

    def __init__(
        self,
        producer: AIOKafkaProducer | None,
        batch_bytes: int,
        rng: random.Random | None = None,
        make_producer: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self._producer = producer
        self._make_producer = make_producer
        self.batch_bytes = batch_bytes
        self._rng = rng or random.Random()

    @property
    def current(self) -> AIOKafkaProducer | None:
        """The producer in use, or None while it is being renewed or is stopped."""
        return self._producer

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the publisher's producer is not started")
        return self._producer

    async def start(self) -> None:
        if self._producer is None:
            assert self._make_producer is not None, "give a producer or make_producer"
            producer = self._make_producer()
            await producer.start()
            self._producer = producer

    async def stop(self, timeout_s: float = 10.0) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout_s)

    async def renew(self) -> None:
        """Replace the producer with a new one (after a batch failed: see the class docstring)."""
        await self.stop()
        await self.start()

    def partition_of(self, keys: Sequence[bytes | None], partitions: list[int]) -> np.ndarray:
        """Each record's partition: murmur2 of its key as Kafka's default partitioner does;
        all unkeyed records of the call to one partition drawn at random (sticky)."""
        n = len(keys)
        keyed = np.fromiter((k is not None for k in keys), dtype=bool, count=n)
        out = np.full(n, self._rng.choice(partitions), dtype=np.int64)
        if keyed.any():
            index = np.flatnonzero(keyed)
            chosen = partition_for_keys([keys[i] for i in index.tolist()], len(partitions))  # type: ignore[misc]
            out[index] = np.asarray(partitions, dtype=np.int64)[chosen]
        return out

    async def publish(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        *,
        partitions: Sequence[int] | None = None,
        timestamp_ms: int | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Queue the records for ``topic``; the futures resolve when the broker acknowledges
        each record batch. ``partitions`` pins each record's partition (a changelog is written
        to the partition of its input); by default the keys choose. Order within a partition
        is the order given."""
        if not values:
            return []
        if partitions is None:
            available = sorted(await self.producer.partitions_for(topic))
            part = self.partition_of(keys, available)
        else:
            part = np.asarray(partitions, dtype=np.int64)
        largest = max(map(len, filter(None, values)), default=0) + max(map(len, filter(None, keys)), default=0)
        if largest + RECORD_OVERHEAD + BATCH_OVERHEAD > self.batch_bytes:  # the router should have caught it
            big = next(i for i in range(len(values)) if not fits(keys[i], values[i] or b"", self.batch_bytes))
            raise RecordTooLarge(
                f"a record of {len(values[big] or b'')} bytes does not fit a batch of {self.batch_bytes}"
            )
        stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        order = np.argsort(part, kind="stable")
        bounds = np.flatnonzero(np.diff(part[order])) + 1
        limit = self.batch_bytes - BATCH_OVERHEAD
        futures: list[asyncio.Future[Any]] = []
        for chunk in np.split(order, bounds):
            p = int(part[chunk[0]])
            builder, size = self.producer.create_batch(), 0
            for i in chunk.tolist():
                key, value = keys[i], values[i]
                cost = (len(value) if value else 0) + (len(key) if key else 0) + RECORD_OVERHEAD
                if (size and size + cost > limit) or builder.append(timestamp=stamp, key=key, value=value) is None:
                    futures.append(await self.producer.send_batch(builder, topic, partition=p))  # full: send it
                    builder, size = self.producer.create_batch(), 0
                    builder.append(timestamp=stamp, key=key, value=value)  # fits alone: checked above
                size += cost
            futures.append(await self.producer.send_batch(builder, topic, partition=p))
        return futures
