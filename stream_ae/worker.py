"""The batch-native hot path as a Faust (mode) service.

Why not a Faust agent: Faust's per-event stream machinery tops out near 10k events/s per
process here, and ``stream.take()`` acks a batch even when processing raised. This service
owns one aiokafka consumer in the worker's consumer group with manual commits, and per
micro-batch:

1. ``getmany`` up to ``batch_max_size`` records or ``batch_max_wait_ms``;
2. decode, validate, encode and score the batch on a dedicated single-thread executor
   (device work never blocks the event loop);
3. produce anomaly / dead-letter / score records;
4. wait for every acknowledgement, then commit the batch's offsets. With ``at_least_once``
   step 4 runs while the next batch is fetched and processed (one batch in flight; the next
   is produced only after it is committed). With ``exactly_once`` records and offsets go in
   one producer transaction before the next fetch.

A failure in step 3 or 4 rewinds the consumer to the batch's first offsets (and the next
batch's, which is dropped unpublished) and retries, so every consumed event is scored or
dead-lettered at least once. Model swaps happen between
two batches; loading and verification run off the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from mode import Service

from stream_ae.artifacts import ArtifactError, LoadedModel
from stream_ae.kafka_admin import ensure_topics
from stream_ae.metrics import WorkerMetrics
from stream_ae.pipeline import ActiveModel, Routed, Topics, dead_letter, process_batch
from stream_ae.registry import Registry
from stream_ae.settings import Settings
from stream_ae.threshold import population_stability_index

log = logging.getLogger("stream_ae.worker")
MAX_BATCH_ATTEMPTS = 5
IN_FLIGHT_WAIT_S = 10.0  # how long a rebalance or shutdown waits for the batch in flight to commit


@dataclass
class InFlightBatch:
    """A published batch whose acknowledgements and commit are still pending."""

    task: asyncio.Future[None]  # acknowledgements, commit, then the batch's metrics
    first: dict[TopicPartition, int]  # where to rewind to if it fails


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        await self.worker.wait_in_flight()  # its commit lands before the partitions move

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        parts = list(assigned)
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in parts))
        self.worker.metrics.assigned.set(len(parts))
        self.worker.metrics.lag.clear()


async def bootstrap_reachable(servers: str, timeout_s: float = 2.0) -> bool:
    """True when a TCP connection to any bootstrap server opens (the client's own metadata
    is cached and does not tell an outage)."""
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout_s)
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True
    return False


def compatible(running: ActiveModel, candidate: LoadedModel) -> str | None:
    """None when ``candidate`` reads the same event fields as ``running``, else why not."""
    if candidate.encoder is None:
        return "artifact has no feature encoder"
    old = {(f.name, f.kind) for f in running.encoder.schema.fields}
    new = {(f.name, f.kind) for f in candidate.encoder.schema.fields}
    if old != new:
        return f"feature schema differs: {sorted(old ^ new)}"
    return None


class BatchWorker(Service):
    """Consumes, scores, routes and commits micro-batches; follows model announcements."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None, **kwargs: Any) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.registry = Registry(settings.model_dir)
        self.topics = Topics(settings.output_topic, settings.dead_letter_topic, settings.scores_topic)
        self.model: ActiveModel | None = None
        self._pending: ActiveModel | None = None
        self._hot = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-ae-hot")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-ae-loader")
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._control: AIOKafkaConsumer | None = None
        self.ready = False
        self._refused: str | None = None
        self.psi = 0.0
        self.kafka_reachable = True
        self._drift_reported = 0.0
        self._in_flight: InFlightBatch | None = None
        self._publish_failures = 0
        super().__init__(**kwargs)

    # -- lifecycle -----------------------------------------------------------------------
    async def on_start(self) -> None:
        s = self.settings
        kw = s.kafka_client_kwargs()
        outputs = {s.output_topic: 1, s.dead_letter_topic: 1, **({s.scores_topic: 1} if s.scores_topic else {})}
        await ensure_topics(kw, outputs)
        await ensure_topics(kw, {s.control_topic: 1}, compacted={s.control_topic})
        await self._load_initial_model()
        eos = s.processing_guarantee == "exactly_once"
        self._producer = AIOKafkaProducer(
            **kw,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            compression_type="lz4",
            max_request_size=max(s.max_message_bytes * 2, 1_048_576) + 65_536,
            transactional_id=f"{s.group_id}-{s.instance_id}" if eos else None,
            transaction_timeout_ms=15_000,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **kw,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_max_size,
            isolation_level="read_committed" if eos else "read_uncommitted",
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=max(s.max_message_bytes * 2, 1_048_576),
        )
        self._consumer.subscribe(s.input_topics, listener=_Rebalance(self))
        await self._consumer.start()
        self._control = AIOKafkaConsumer(s.control_topic, **kw, group_id=None, auto_offset_reset="earliest")
        await self._control.start()
        self.metrics.device.labels(device=str(self.model.scorer.device if self.model else "none")).set(1)
        self.ready = True
        log.info("worker started: %s -> %s (dead letters: %s)", s.input_topics, s.output_topic, s.dead_letter_topic)

    async def on_stop(self) -> None:
        self.ready = False
        await self.wait_in_flight()  # commit what was acknowledged: less to re-deliver after restart
        for client in (self._consumer, self._control):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        self._hot.shutdown(wait=False)
        self._loader.shutdown(wait=False)

    async def _load_initial_model(self) -> None:
        while not self.should_stop:
            try:
                loaded = await self._in_loader(self.registry.load, self.settings.model_version, self.settings.device)
            except ArtifactError as exc:
                log.warning("no usable model yet (%s); retrying in 2 s", exc)
                await self.sleep(2.0)
                continue
            self._activate(ActiveModel(loaded, self.settings.top_k_features))
            return

    def _activate(self, model: ActiveModel) -> None:
        self.model = model
        self.metrics.set_model(
            model.version,
            str(model.loaded.manifest.get("variant")),
            model.threshold,
            float(model.loaded.manifest.get("created", 0)),
        )
        log.info("scoring with model %s (threshold %.4f)", model.version, model.threshold)

    async def _in_loader(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._loader, fn, *args)

    # -- model hot swap ------------------------------------------------------------------
    def _prepare(self, version: str, expected_sha: str | None) -> ActiveModel:
        """Load, verify and warm a candidate (runs on the loader thread)."""
        loaded = self.registry.load(version, self.settings.device, expected_sha256=expected_sha)
        candidate = ActiveModel(loaded, self.settings.top_k_features)
        assert self.model is not None
        reason = compatible(self.model, loaded)
        if reason:
            raise ArtifactError(reason)
        if not candidate.scorer.probe():
            raise ArtifactError("non-finite scores on the probe batch")
        return candidate

    async def offer_version(self, version: str, expected_sha: str | None = None) -> bool:
        """Try to stage ``version`` for a swap; False (and the old model kept) on failure."""
        if self.model is not None and version == self.model.version:
            return True
        try:
            candidate = await self._in_loader(self._prepare, version, expected_sha)
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            log.error("refused model %s: %s", version, exc)
            self.metrics.model_swaps.labels(result="rejected").inc()
            return False
        self._pending = candidate
        return True

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
                    await self._on_announcement(msg)

    async def _on_announcement(self, msg: ConsumerRecord[bytes, bytes]) -> None:
        try:
            note = orjson.loads(msg.value or b"")
            if not isinstance(note, dict) or note.get("type") != "model":
                return
            version = str(note["version"])
            if Path(str(note.get("path", ""))) != Path("versions") / version:
                raise ArtifactError(f"announced path {note.get('path')!r} is not inside the registry")
        except (orjson.JSONDecodeError, KeyError, ArtifactError) as exc:
            log.error("ignored malformed announcement at offset %s: %s", msg.offset, exc)
            self.metrics.model_swaps.labels(result="rejected").inc()
            return
        await self.offer_version(version, note.get("manifest_sha256"))

    @Service.timer(5.0)
    async def _poll_registry(self) -> None:
        """Fallback to announcements: follow the registry's LATEST pointer."""
        if self.model is None or self.settings.model_version:
            return
        latest = self.registry.latest()
        pending = self._pending.version if self._pending else None
        known = (self.model.version, pending, self._refused)
        if latest and latest not in known and not await self.offer_version(latest):
            self._refused = latest  # do not retry the same broken version every 5 s

    def _swap_if_pending(self) -> None:
        if self._pending is not None:
            old = self.model.version if self.model else None
            self._activate(self._pending)
            self._pending = None
            self.metrics.model_swaps.labels(result="swapped").inc()
            log.info("hot-swapped model %s -> %s", old, self.model.version if self.model else None)

    # -- the hot loop --------------------------------------------------------------------
    @Service.task
    async def _run(self) -> None:
        s = self.settings
        while not self.should_stop:
            if not self.ready or self._consumer is None:
                await self.sleep(0.1)
                continue
            self._swap_if_pending()
            try:
                fetched = await self._consumer.getmany(
                    timeout_ms=s.batch_max_wait_ms or 1, max_records=s.batch_max_size
                )
            except Exception as exc:
                log.warning("fetch failed: %s", exc)
                self.metrics.kafka_up.set(0)
                await self.sleep(1.0)
                continue
            if fetched:
                await self._handle(fetched)
            else:
                await self._settle()  # idle: finish the batch in flight now, not with the next one

    async def _handle(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Process one fetched batch, then publish it. With ``at_least_once`` the batch's
        acknowledgements and commit are left in flight while the next batch is fetched and
        processed (at most one batch in flight, committed in order); a batch is published only
        after the one before it is committed, so a failure rewinds both and loses nothing."""
        assert self._consumer is not None and self._producer is not None and self.model is not None
        started = time.perf_counter()
        records = [r for msgs in fetched.values() for r in msgs]
        first = {tp: msgs[0].offset for tp, msgs in fetched.items()}
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in fetched.items()}
        for tp, msgs in fetched.items():
            self.metrics.consumed.labels(topic=tp.topic).inc(len(msgs))
        routed = await self._process(records)
        if routed is None:
            return  # stopping: nothing was committed, the records are read again after restart
        previous = self._in_flight
        if not await self._settle():  # the batch before failed and was rewound: this one goes too
            # where both touch a partition the earlier batch's offset wins: never seek past it
            await self._rewind({**first, **(previous.first if previous else {})})
            return
        try:
            if self.settings.processing_guarantee == "exactly_once":
                await self._publish_in_transaction(routed, offsets)
                self._committed(routed, started)
                return
            futures = [await self._producer.send(rec.topic, rec.value, key=rec.key) for rec in routed.out]
        except Exception as exc:
            await self._publish_failed(exc, first)
            return
        task = asyncio.ensure_future(self._acknowledge_and_commit(futures, offsets, routed, started))
        self._in_flight = InFlightBatch(task, first)

    async def _process(self, records: list[ConsumerRecord[bytes, bytes]]) -> Routed | None:
        """Score and route on the hot executor; a failing batch is retried, then dead-lettered
        (a bug, not bad input: bad input is dead-lettered record by record inside)."""
        model = self.model
        assert model is not None
        attempt = 0
        while not self.should_stop:
            attempt += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._hot, process_batch, records, model, self.topics, self.settings.max_message_bytes
                )
            except Exception as exc:
                log.exception("processing a batch failed (attempt %d)", attempt)
                self.metrics.batch_errors.labels(stage="process").inc()
                if attempt >= MAX_BATCH_ATTEMPTS:
                    return self._dead_letter_all(records, f"processing_error: {exc}")
                await self.sleep(0.2 * attempt)
        return None

    async def _acknowledge_and_commit(
        self, futures: list[Any], offsets: dict[TopicPartition, int], routed: Routed, started: float
    ) -> None:
        assert self._consumer is not None
        if futures:
            await asyncio.gather(*futures)
        await self._consumer.commit(offsets)
        self._committed(routed, started)  # when it is committed, not when the loop next looks

    async def _settle(self) -> bool:
        """Wait for the batch in flight; False when it failed (it is rewound, nothing of it or
        after it is committed)."""
        batch, self._in_flight = self._in_flight, None
        if batch is None:
            return True
        try:
            await batch.task
        except Exception as exc:
            await self._publish_failed(exc, batch.first)
            return False
        return True

    async def wait_in_flight(self) -> None:
        """Let the batch in flight finish (its commit lands) without taking over its outcome:
        the hot loop still settles it (rebalances and shutdown call this)."""
        batch = self._in_flight
        if batch is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(batch.task), IN_FLIGHT_WAIT_S)

    async def _publish_failed(self, exc: BaseException, first: dict[TopicPartition, int]) -> None:
        log.warning("publish/commit failed (%s); rewinding and retrying the batch", exc)
        self.metrics.batch_errors.labels(stage="publish").inc()
        self.metrics.kafka_up.set(0)
        await self._rewind(first)
        self._publish_failures += 1
        await self.sleep(min(5.0, 0.5 * self._publish_failures))

    def _dead_letter_all(self, records: list[ConsumerRecord[bytes, bytes]], detail: str) -> Routed:
        routed = Routed(n_in=len(records))
        now = time.time()
        for r in records:
            dead_letter(routed, r, self.topics.dead_letter, "processing_error", detail, now)
        return routed

    async def _rewind(self, first: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)

    async def _publish_in_transaction(self, routed: Routed, offsets: dict[TopicPartition, int]) -> None:
        """``exactly_once``: the batch's records and its offsets in one Kafka transaction."""
        assert self._producer is not None
        async with self._producer.transaction():
            for rec in routed.out:
                await self._producer.send(rec.topic, rec.value, key=rec.key)
            await self._producer.send_offsets_to_transaction(dict(offsets), self.settings.group_id)

    def _committed(self, routed: Routed, started: float) -> None:
        self._publish_failures = 0  # the publish backoff starts over
        self._record_metrics(routed, started)

    def _record_metrics(self, routed: Routed, started: float) -> None:
        m, now = self.metrics, time.time()
        m.batches.inc()
        m.batch_size.observe(routed.n_in)
        m.scored.inc(routed.n_scored)
        for reason, n in routed.dead_reasons.items():
            m.dead_lettered.labels(reason=reason).inc(n)
        if routed.n_anomalies:
            m.anomalies.labels(topic=self.topics.output).inc(routed.n_anomalies)
            for t in routed.event_times:
                m.end_to_end_seconds.observe(max(0.0, now - float(t)))
        if routed.n_scored:
            m.scoring_seconds.observe(routed.score_seconds)
        m.batch_seconds.observe(time.perf_counter() - started)
        m.last_batch.set(now)
        m.kafka_up.set(1)
        recent = m.observe_scores(routed.scores, self.settings.drift_window_events)
        threshold = self.model.loaded.detector.threshold if self.model is not None else None
        if threshold is not None and len(recent) >= min(1000, self.settings.drift_window_events):
            self.psi = population_stability_index(threshold.reference_quantiles, recent)
            m.drift_psi.set(self.psi)

    @Service.timer(5.0)
    async def _report_drift(self) -> None:
        """Tell the trainer (control topic) when scores drift past the configured PSI bound."""
        s = self.settings
        now = time.monotonic()
        if self.psi < s.drift_psi_threshold or self._producer is None or self.model is None:
            return
        if now - self._drift_reported < s.drift_report_interval_s:
            return
        self._drift_reported = now
        note = {"type": "drift", "psi": self.psi, "version": self.model.version, "at": time.time()}
        with contextlib.suppress(Exception):
            if s.processing_guarantee == "exactly_once":
                async with self._producer.transaction():
                    await self._producer.send(s.control_topic, orjson.dumps(note), key=b"drift")
            else:
                await self._producer.send_and_wait(s.control_topic, orjson.dumps(note), key=b"drift")
            log.warning("score drift: PSI %.3f >= %.3f reported to the trainer", self.psi, s.drift_psi_threshold)

    @Service.timer(2.0)
    async def _probe_kafka(self) -> None:
        self.kafka_reachable = await bootstrap_reachable(self.settings.bootstrap_servers)
        self.metrics.kafka_up.set(1 if self.kafka_reachable else 0)

    @Service.timer(2.0)
    async def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        if not self.kafka_reachable:
            return
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            with contextlib.suppress(Exception):
                pos = await asyncio.wait_for(consumer.position(tp), 1.0)
                if high is not None:
                    self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - pos))
