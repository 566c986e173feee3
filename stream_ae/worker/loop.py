"""The batch loop: fetch a micro-batch, process it off the event loop, publish, commit.

Per micro-batch:

1. ``getmany`` up to ``batch_max_size`` records or ``batch_max_wait_ms``;
2. decode, validate, encode, score and route on a dedicated single-thread executor
   (:func:`stream_ae.pipeline.process_batch`; device work never blocks the event loop);
3. publish every output topic's records as per-partition record batches
   (:class:`~stream_ae.kafka.publisher.BatchPublisher`);
4. wait for the batches' acknowledgements, then commit the input offsets. With
   ``at_least_once`` step 4 runs while the next batch is fetched and processed (one batch in
   flight; the next is published only after it is acknowledged). With ``exactly_once`` records
   and offsets go in one producer transaction before the next fetch.

With entity state under ``at_least_once`` the commit of step 4 waits for the commit interval
(``commit_interval_ms``): acknowledged batches' state changes are held, and once per interval
(and before partitions move or the worker stops) they are written to the changelog, one record
per entity, and then the offsets they cover are committed. A crash in between reads those
batches again from the last commit, onto the state restored as of that commit.

A failure in step 3 or 4 rewinds the consumer to the batch's first offsets (and the next
batch's, which is dropped unpublished) and retries, so every consumed event is scored or
dead-lettered at least once. The model in use changes only between two batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from stream_ae.entities.store import PartitionDelta
from stream_ae.kafka.publisher import BatchPublisher, RecordTooLarge
from stream_ae.operation.metrics import WorkerMetrics
from stream_ae.output.route import Routed, Router, Topics
from stream_ae.pipeline import process_batch
from stream_ae.settings import Settings
from stream_ae.worker.follower import ModelFollower
from stream_ae.worker.health import HealthReporter
from stream_ae.worker.state import EntityState

log = logging.getLogger("stream_ae.worker")
SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, RecordTooLarge)
MIN_BATCH_BYTES = 16_384  # a limit never halves below this
MAX_BATCH_ATTEMPTS = 5
IN_FLIGHT_WAIT_S = 10.0  # how long a rebalance or shutdown waits for the batch in flight to commit

Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


@dataclass
class InFlightBatch:
    """A published batch whose acknowledgements and commit are still pending."""

    task: asyncio.Future[None]  # acknowledgements, commit, then the batch's metrics
    first: dict[TopicPartition, int]  # where to rewind to if it fails
    deltas: list[PartitionDelta]  # what it changed in the entity state: undone if it fails


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets the batch being published and the batch in flight land before partitions move;
    hands the new assignment to the entity state (which restores what it does not hold)."""

    def __init__(self, loop: BatchLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        parts = list(revoked)
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in parts))
        async with self.loop.batch_lock:  # no batch is between processing and publishing
            await self.loop.wait_in_flight()
            await self.loop.commit_held_before_leaving()  # the next owner starts where this one stopped
            if self.loop.state is not None:
                self.loop.state.revoked(parts)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        parts = list(assigned)
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in parts))
        self.loop.metrics.assigned.set(len(parts))
        self.loop.metrics.lag.clear()
        self.loop.metrics.entities.clear()
        self.loop.reassigned(parts)
        if self.loop.state is not None:
            await self.loop.state.assigned(parts)


class BatchLoop:
    """Runs micro-batches through the pipeline and onto Kafka, at least (or exactly) once."""

    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics,
        consumer: AIOKafkaConsumer,
        publisher: BatchPublisher,
        topics: Topics,
        follower: ModelFollower,
        health: HealthReporter,
        executor: ThreadPoolExecutor,
        producer_lock: asyncio.Lock,
        read_batch_bytes: Callable[[], Awaitable[int]],
        state: EntityState | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.consumer = consumer
        self.publisher = publisher
        self._renew_producer = False
        self.topics = topics
        self.follower = follower
        self.health = health
        self._hot = executor
        self._producer_lock = producer_lock  # one transaction at a time on the shared producer
        self._read_batch_bytes = read_batch_bytes  # the output topics' record batch limit, now
        self.state = state
        self.batch_lock = asyncio.Lock()  # held from processing a batch until it is published
        self._in_flight: InFlightBatch | None = None
        self._publish_failures = 0
        # at_least_once with entity state: offsets acknowledged, committed with the changelog
        self._coalescing = state is not None and settings.coalesces_changelog
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()

    async def run(self, stopping: Callable[[], bool]) -> None:
        s = self.settings
        while not stopping():
            self.follower.swap_if_pending()
            try:
                fetched = await self.consumer.getmany(timeout_ms=s.batch_max_wait_ms or 1, max_records=s.batch_max_size)
            except Exception as exc:
                log.warning("fetch failed: %s", exc)
                self.metrics.kafka_up.set(0)
                await asyncio.sleep(1.0)
                continue
            async with self.batch_lock:
                fetched = self._still_ours(fetched)
                if fetched:
                    await self._handle(fetched, stopping)
                elif (failed := await self._settle()) is not None:  # idle: finish the batch in flight now
                    await self._undo(failed.deltas)
                else:
                    await self.commit_held()

    def _still_ours(self, fetched: Fetched) -> Fetched:
        """Records of partitions revoked or still restoring since the fetch are left for later
        (their new owner, or this worker once restored, reads them from the committed offset)."""
        assigned = self.consumer.assignment()
        restoring = self.state.restoring if self.state is not None else set()
        for tp, msgs in fetched.items():
            if tp in assigned and tp in restoring:
                self.consumer.seek(tp, msgs[0].offset)  # read again once restored
        return {tp: msgs for tp, msgs in fetched.items() if tp in assigned and tp not in restoring}

    async def _handle(self, fetched: Fetched, stopping: Callable[[], bool]) -> None:
        """Process one fetched batch, then publish it. With ``at_least_once`` the batch's
        acknowledgements and commit are left in flight while the next batch is fetched and
        processed (at most one batch in flight, committed in order); a batch is published only
        after the one before it is committed, so a failure rewinds both, and undoes both
        batches' entity state changes, newest first: nothing is lost or counted twice."""
        started = time.perf_counter()
        records = [r for msgs in fetched.values() for r in msgs]
        first = {tp: msgs[0].offset for tp, msgs in fetched.items()}
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in fetched.items()}
        for tp, msgs in fetched.items():
            self.metrics.consumed.labels(topic=tp.topic).inc(len(msgs))
        routed = await self._process(records, stopping)
        if routed is None:
            return  # stopping: nothing was committed, the records are read again after restart
        failed = await self._settle()
        if failed is not None:  # the batch before failed and was rewound: this one goes too
            await self._undo(routed.deltas)
            await self._undo(failed.deltas)
            # where both touch a partition the earlier batch's offset wins: never seek past it
            await self._rewind({**first, **failed.first})
            return
        await self.commit_held()
        try:
            if self._renew_producer:  # a batch failed on the producer in use: never reuse its state
                async with self._producer_lock:
                    await self.publisher.renew()
                self._renew_producer = False
            if self.settings.processing_guarantee == "exactly_once":
                await self._publish_in_transaction(routed, offsets)
                self._committed(routed, started)
                return
            futures = await self._publish(routed)
        except Exception as exc:
            await self._undo(routed.deltas)
            await self._publish_failed(exc, first)
            return
        task = asyncio.ensure_future(self._acknowledge_and_commit(futures, offsets, routed, started))
        self._in_flight = InFlightBatch(task, first, routed.deltas)

    async def _process(
        self, records: list[ConsumerRecord[bytes, bytes]], stopping: Callable[[], bool]
    ) -> Routed | None:
        """Score and route on the hot executor; a failing batch is retried, then dead-lettered
        (a bug, not bad input: bad input is dead-lettered record by record inside)."""
        model = self.follower.model
        assert model is not None
        attempt = 0
        while not stopping():
            attempt += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._hot,
                    process_batch,
                    records,
                    model,
                    self.topics,
                    self.settings.max_message_bytes,
                    self.state.store if self.state is not None else None,
                )
            except Exception as exc:
                log.exception("processing a batch failed (attempt %d)", attempt)
                self.metrics.batch_errors.labels(stage="process").inc()
                if attempt >= MAX_BATCH_ATTEMPTS:
                    return self._dead_letter_all(records, f"processing_error: {exc}")
                await asyncio.sleep(0.2 * attempt)
        return None

    async def _publish(self, routed: Routed) -> list[asyncio.Future[Any]]:
        """Queue every output topic's records; one future per record batch."""
        stamp = int(time.time() * 1000)
        futures: list[asyncio.Future[Any]] = []
        for topic, out in routed.outputs.items():
            futures += await self.publisher.publish(
                topic, out.keys, out.values, partitions=out.partitions, timestamp_ms=stamp
            )
        return futures

    async def _acknowledge_and_commit(
        self, futures: list[asyncio.Future[Any]], offsets: dict[TopicPartition, int], routed: Routed, started: float
    ) -> None:
        if futures:
            await asyncio.gather(*futures)
        if self._coalescing:
            assert self.state is not None
            self.state.hold(routed.deltas)
            self._uncommitted.update(offsets)
        else:
            await self.consumer.commit(offsets)
        self._committed(routed, started)  # when it is committed, not when the loop next looks

    async def commit_held(self, now: bool = False) -> None:
        """Coalescing: once per commit interval (``now``: before a rebalance or a stop), write
        the held state changes to the changelog, one record per entity, then commit the offsets
        of the batches they came from. A failure keeps both for the next try: the state in
        memory and the outputs are right, only their durability waits."""
        if not self._uncommitted or self.state is None:
            return
        if not now and (time.monotonic() - self._last_commit) * 1000 < self.settings.commit_interval_ms:
            return
        try:
            out = await self.state.held_records()
            futures = await self.publisher.publish(
                self.state.changelog_topic, out.keys, out.values, partitions=out.partitions
            )
            if futures:
                await asyncio.gather(*futures)
            assigned = self.consumer.assignment()
            await self.consumer.commit({tp: o for tp, o in self._uncommitted.items() if tp in assigned})
        except Exception as exc:
            log.warning("writing the changelog and committing failed (%r); retrying at the next commit", exc)
            self.metrics.batch_errors.labels(stage="commit").inc()
            self._renew_producer = True
            return
        self._uncommitted = {}
        self._last_commit = time.monotonic()
        self.state.written(len(out))

    async def commit_held_before_leaving(self) -> None:
        """:meth:`commit_held` now, for a rebalance or a stop, waiting at most
        ``IN_FLIGHT_WAIT_S`` (a broker that does not answer must not hold the worker: the
        batches since the last commit are then read again, onto the state of that commit)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.commit_held(now=True), IN_FLIGHT_WAIT_S)

    def reassigned(self, parts: Iterable[TopicPartition]) -> None:
        """Offsets of partitions no longer ours are never committed by this worker."""
        mine = set(parts)
        self._uncommitted = {tp: o for tp, o in self._uncommitted.items() if tp in mine}

    async def _settle(self) -> InFlightBatch | None:
        """Wait for the batch in flight; the batch when it failed (it is rewound: nothing of it
        or after it is committed, and the caller undoes its state changes), else None."""
        batch, self._in_flight = self._in_flight, None
        if batch is None:
            return None
        try:
            await batch.task
        except Exception as exc:
            await self._publish_failed(exc, batch.first)
            return batch
        return None

    async def _undo(self, deltas: list[PartitionDelta]) -> None:
        if self.state is not None:
            await self.state.undo(list(reversed(deltas)))

    async def wait_in_flight(self) -> None:
        """Let the batch in flight finish (its commit lands) without taking over its outcome:
        the loop still settles it (rebalances and shutdown call this)."""
        batch = self._in_flight
        if batch is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(batch.task), IN_FLIGHT_WAIT_S)

    async def _publish_failed(self, exc: BaseException, first: dict[TopicPartition, int]) -> None:
        log.warning("publish/commit failed (%r); rewinding and retrying the batch", exc)
        self.metrics.batch_errors.labels(stage="publish").inc()
        self.metrics.kafka_up.set(0)
        await self._rewind(first)
        self._renew_producer = True
        if isinstance(exc, SIZE_ERRORS):
            await self._shrink_batches()
        self._publish_failures += 1
        await asyncio.sleep(min(5.0, 0.5 * self._publish_failures))

    async def _shrink_batches(self) -> None:
        """The broker refused a record batch as too large (an operator lowered an output
        topic's max.message.bytes): re-read the limit, or halve ours when the topics do not
        say why. The rewound batch is then routed again under it: records that no longer fit
        are dead-lettered as ``oversized``, never dropped."""
        limit = self.publisher.batch_bytes
        with contextlib.suppress(Exception):
            limit = await self._read_batch_bytes()
        if limit >= self.publisher.batch_bytes:
            limit = max(MIN_BATCH_BYTES, self.publisher.batch_bytes // 2)
        log.warning("output record batches now at most %d bytes (were %d)", limit, self.publisher.batch_bytes)
        self.publisher.batch_bytes = limit
        self.topics = dataclasses.replace(self.topics, batch_bytes=limit)

    def _dead_letter_all(self, records: list[ConsumerRecord[bytes, bytes]], detail: str) -> Routed:
        router = Router(self.topics, len(records))
        for r in records:
            router.dead_letter(r, "processing_error", detail)
        return router.routed

    async def _rewind(self, first: dict[TopicPartition, int]) -> None:
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    async def _publish_in_transaction(self, routed: Routed, offsets: dict[TopicPartition, int]) -> None:
        """``exactly_once``: the batch's records and its offsets in one Kafka transaction."""
        producer = self.publisher.producer
        async with self._producer_lock, producer.transaction():
            await self._publish(routed)
            await producer.send_offsets_to_transaction(dict(offsets), self.settings.group_id)

    def _committed(self, routed: Routed, started: float) -> None:
        self._publish_failures = 0  # the publish backoff starts over
        self._record_metrics(routed, started)
        if self.state is not None:
            self.state.committed(routed)

    def _record_metrics(self, routed: Routed, started: float) -> None:
        """One update per metric per batch, never per record (except anomaly latencies)."""
        m, now = self.metrics, time.time()
        m.batches.inc()
        m.batch_size.observe(routed.n_in)
        m.scored.inc(routed.n_scored)
        for reason, n in routed.dead_reasons.items():
            m.dead_lettered.labels(reason=reason).inc(n)
        if routed.n_anomalies:
            m.anomalies.labels(topic=self.topics.output).inc(routed.n_anomalies)
            for t in routed.event_times.tolist():
                m.end_to_end_seconds.observe(max(0.0, now - t))
        if routed.n_incidents:
            m.incidents.inc(routed.n_incidents)
        if routed.n_scored:
            m.scoring_seconds.observe(routed.score_seconds)
        m.batch_seconds.observe(time.perf_counter() - started)
        m.last_batch.set(now)
        m.kafka_up.set(1)
        self.health.observe_scores(routed.scores)
