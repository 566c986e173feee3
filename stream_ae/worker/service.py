"""The worker as a Faust (mode) service: it owns the Kafka clients and the threads, starts
and stops them in order, and runs its jobs as tasks and timers.

Why not a Faust agent: Faust's per-event stream machinery tops out near 10k events/s per
process here, and ``stream.take()`` acks a batch even when processing raised. This service
owns one aiokafka consumer in the worker's consumer group with manual commits; the loop
(:mod:`stream_ae.worker.loop`), the model follower (:mod:`stream_ae.worker.follower`) and
the health reports (:mod:`stream_ae.worker.health`) live in modules named after them.

Lifetimes: ``on_start`` creates the output topics, reads their record size limit, loads the
first model, then starts the producer, the consumer (subscribed with the rebalance listener)
and the control-topic reader; ``on_stop`` lets the batch in flight commit, then stops the
clients and the executors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from mode import Service

from stream_ae.entities.store import EntityStore
from stream_ae.kafka.admin import ensure_topics, partition_counts, topic_max_message_bytes
from stream_ae.kafka.compression import use_fast_lz4
from stream_ae.kafka.limits import event_fetch_options, restore_fetch_options
from stream_ae.kafka.publisher import BatchPublisher
from stream_ae.operation.logs import quiet_retriable_kafka_errors
from stream_ae.operation.metrics import WorkerMetrics
from stream_ae.output.route import Topics
from stream_ae.pipeline import ActiveModel
from stream_ae.settings import Settings
from stream_ae.worker.follower import ModelFollower
from stream_ae.worker.health import HealthReporter
from stream_ae.worker.loop import BatchLoop, RebalanceListener
from stream_ae.worker.state import EntityState

log = logging.getLogger("stream_ae.worker")
BATCH_SLACK_BYTES = 512  # a record batch stays this far below the topics' max.message.bytes
# a changelog's active segment is never compacted: keep segments small enough that it is
CHANGELOG_CONFIGS = {"segment.bytes": str(64 * 1024 * 1024), "min.cleanable.dirty.ratio": "0.5"}


class BatchWorker(Service):
    """Consumes, scores, routes and commits micro-batches; follows model announcements."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None, **kwargs: Any) -> None:
        self.settings = settings
        quiet_retriable_kafka_errors()
        self.metrics = metrics or WorkerMetrics()
        self._hot = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-ae-hot")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-ae-loader")
        self.follower = ModelFollower(settings, self.metrics, self._loader)
        self.health = HealthReporter(settings, self.metrics)
        self.batch_loop: BatchLoop | None = None
        self.publisher: BatchPublisher | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._control: AIOKafkaConsumer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self.entity_state: EntityState | None = None
        self._producer_lock = asyncio.Lock()
        self.ready = False
        super().__init__(**kwargs)

    @property
    def model(self) -> ActiveModel | None:
        return self.follower.model

    # -- lifecycle -----------------------------------------------------------------------
    async def on_start(self) -> None:
        s = self.settings
        kw = s.kafka_client_kwargs()
        outputs = {t: 1 for t in self._output_topics()}
        await ensure_topics(kw, outputs, compacted={s.incidents_topic} if s.incidents_topic else None)
        await ensure_topics(kw, {s.control_topic: 1}, compacted={s.control_topic})
        batch_bytes = await self.output_batch_bytes()
        await self.follower.load_initial(lambda: self.should_stop)
        assert self.model is not None
        changelog = await self._prepare_changelog() if self.model.entity is not None else None
        eos = s.processing_guarantee == "exactly_once"
        # the batches carry their own changelog records only where the loop does not coalesce them
        per_batch = None if s.coalesces_changelog else changelog
        topics = Topics(s.output_topic, s.dead_letter_topic, s.scores_topic, batch_bytes, per_batch, s.incidents_topic)

        use_fast_lz4()  # Kafka's own client's LZ4, not aiokafka's LZ4HC (stream_ae.kafka.compression)

        def make_producer() -> AIOKafkaProducer:
            return AIOKafkaProducer(
                **kw,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                compression_type="lz4",
                max_batch_size=batch_bytes,
                max_request_size=max(batch_bytes, 1_048_576) + 65_536,
                transactional_id=f"{s.group_id}-{s.instance_id}" if eos else None,
                transaction_timeout_ms=15_000,
            )

        self.publisher = BatchPublisher(None, batch_bytes, make_producer=make_producer)
        await self.publisher.start()
        self._consumer = AIOKafkaConsumer(
            **kw,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_max_size,
            isolation_level="read_committed" if eos else "read_uncommitted",
            **event_fetch_options(s.max_message_bytes, s.batch_max_size),
        )
        if self.model.entity is not None and changelog is not None:
            self._restorer = AIOKafkaConsumer(
                **kw,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                **restore_fetch_options(),
            )
            await self._restorer.start()
            self.entity_state = EntityState(
                EntityStore(self.model.entity), changelog, self._consumer, self._restorer, self._hot, self.metrics
            )
        self.batch_loop = BatchLoop(
            s,
            self.metrics,
            self._consumer,
            self.publisher,
            topics,
            self.follower,
            self.health,
            self._hot,
            self._producer_lock,
            self.output_batch_bytes,
            self.entity_state,
        )
        self._consumer.subscribe(s.input_topics, listener=RebalanceListener(self.batch_loop))
        await self._consumer.start()
        self._control = AIOKafkaConsumer(s.control_topic, **kw, group_id=None, auto_offset_reset="earliest")
        await self._control.start()
        self.metrics.device.labels(device=str(self.model.scorer.device if self.model else "none")).set(1)
        self.ready = True
        log.info(
            "worker started: %s -> %s (dead letters: %s; record batches up to %d bytes)",
            s.input_topics,
            s.output_topic,
            s.dead_letter_topic,
            batch_bytes,
        )

    async def on_stop(self) -> None:
        self.ready = False
        if self.batch_loop is not None:
            await self.batch_loop.wait_in_flight()  # commit what was acknowledged: less to re-deliver after restart
            await self.batch_loop.commit_held_before_leaving()
        if self.entity_state is not None:
            await self.entity_state.stop()
        for client in (self._consumer, self._control, self._restorer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        self._hot.shutdown(wait=False)
        self._loader.shutdown(wait=False)

    async def _prepare_changelog(self) -> str:
        """The entity changelog: one partition per input partition (compacted). Refuses to
        start, with the reason, when that cannot hold."""
        s = self.settings
        kw = s.kafka_client_kwargs()
        if len(s.input_topics) != 1:
            raise RuntimeError(
                f"entity features need exactly one input topic (got {s.input_topics}): state is kept per "
                "input partition, and the partitions of several topics would share it"
            )
        counts = await partition_counts(kw, s.input_topics)
        if s.input_topics[0] not in counts:
            raise RuntimeError(f"input topic {s.input_topics[0]!r} does not exist: create it first")
        n = counts[s.input_topics[0]]
        topic = s.changelog_topic
        await ensure_topics(kw, {topic: n}, compacted={topic}, configs=CHANGELOG_CONFIGS)
        have = (await partition_counts(kw, [topic])).get(topic)
        if have != n:
            raise RuntimeError(
                f"the entity changelog {topic!r} has {have} partitions, the input topic {n}: "
                "they must match (delete the changelog, or set STREAM_AE_ENTITY_CHANGELOG_TOPIC to a new one)"
            )
        return topic

    async def output_batch_bytes(self) -> int:
        """The largest record batch every output topic accepts now (their max.message.bytes,
        less a margin); read at start and again when the broker refuses a batch as too large."""
        s = self.settings
        limits = await topic_max_message_bytes(s.kafka_client_kwargs(), self._output_topics())
        return min(limits.values()) - BATCH_SLACK_BYTES

    def _output_topics(self) -> list[str]:
        s = self.settings
        return [t for t in (s.output_topic, s.dead_letter_topic, s.scores_topic, s.incidents_topic) if t]

    # -- the jobs ------------------------------------------------------------------------
    @Service.task
    async def _run(self) -> None:
        while not self.should_stop and (not self.ready or self.batch_loop is None):
            await self.sleep(0.1)
        if self.batch_loop is not None:
            await self.batch_loop.run(lambda: self.should_stop)

    @Service.task
    async def _follow_announcements(self) -> None:
        while not self.should_stop:
            if self._control is None or self.model is None:
                await self.sleep(0.5)
                continue
            try:
                batches = await self._control.getmany(timeout_ms=1000)
            except Exception as exc:  # broker away: keep following once it is back
                log.warning("control topic read failed: %s", exc)
                await self.sleep(1.0)
                continue
            for msgs in batches.values():
                for msg in msgs:
                    await self.follower.on_announcement(msg)

    @Service.timer(5.0)
    async def _poll_registry(self) -> None:
        await self.follower.poll_registry()

    @Service.timer(1.0)
    async def _summarise_scores(self) -> None:
        self.health.summarise(self.model)

    @Service.timer(5.0)
    async def _report_drift(self) -> None:
        if self.publisher is not None:
            async with self._producer_lock:
                await self.health.report_drift(self.publisher.current, self.model)

    @Service.timer(2.0)
    async def _probe_kafka(self) -> None:
        await self.health.probe_kafka()

    @Service.timer(2.0)
    async def _update_lag(self) -> None:
        await self.health.update_lag(self._consumer)
