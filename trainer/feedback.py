"""The trainer's side of analysts' verdicts: read the feedback topic, find each verdict's
event, dead-letter what is not a verdict, and hand the trainer labelled rows.

Each run reads the whole compacted feedback topic (the latest verdict per event id), so
labels accumulate over the topic's life, not the window's. Records that arrived since the
previous run (past the offsets committed by the consumer group ``<app_id>-trainer-feedback``)
are *fresh*: they are counted by label, and a fresh record that is not a usable verdict goes to
the dead-letter topic with its reason, once. Older ones are read silently.

A verdict's event is found, in order: in the run's window by its id (the schema's id field, or
the ``topic:partition:offset`` id); from the verdict's own ``event``; by reading the input
topic at its coordinates (``source``, or an id that spells them). A fresh verdict whose event
cannot be found is dead-lettered: ``verdict_unknown_event`` when nothing says where it is,
``verdict_event_not_found`` when its coordinates hold no event (deleted by retention, or
beyond the end of the partition).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_ae.features.encoder import Event
from stream_ae.input.source import Source
from stream_ae.input.verdicts import LABELS, Verdict, VerdictError, labels_fingerprint, parse_verdict
from stream_ae.kafka.admin import ensure_topics
from stream_ae.output.records import dead_letter_record
from stream_ae.settings import Settings
from trainer.window import Window

log = logging.getLogger("stream_ae.trainer.feedback")

MAX_FETCHES = 2_000  # events read back from the input topic per run, at most


class FeedbackMetrics:
    """Verdicts received per label, rejected per reason, and the labelled figures of the
    trainer's last gate (its held-back verdicts)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "stream_ae_feedback_verdicts_total", "Verdicts received on the feedback topic", ["label"], registry=registry
        )
        self.rejected = Counter(
            "stream_ae_feedback_rejected_total", "Feedback records dead-lettered", ["reason"], registry=registry
        )
        self.labels = Gauge(
            "stream_ae_trainer_labels", "Labelled events the last run trained on", ["label"], registry=registry
        )
        self.precision = Gauge(
            "stream_ae_trainer_labelled_precision",
            "Share of flagged held-back labelled events that are confirmed anomalies (last run)",
            ["model"],
            registry=registry,
        )
        self.recall = Gauge(
            "stream_ae_trainer_labelled_recall",
            "Share of held-back confirmed anomalies flagged (last run)",
            ["model"],
            registry=registry,
        )
        for label in LABELS:
            self.received.labels(label=label)
            self.labels.labels(label=label)


@dataclass
class Rejected:
    raw: bytes | None
    key: bytes | None
    source: Source
    error: VerdictError


@dataclass
class FeedbackRead:
    """The feedback topic as of one run."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)  # latest per event id
    fresh: set[str] = field(default_factory=set)  # event ids with a verdict since the last run
    rejected: list[Rejected] = field(default_factory=list)  # fresh records that are not verdicts
    origin: dict[str, Source] = field(default_factory=dict)  # where each verdict lies
    ends: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass
class Labels:
    """Labelled events for a run: window rows by event index, and events found elsewhere."""

    rows: dict[int, int] = field(default_factory=dict)  # window event index -> 1 anomaly / 0 normal
    extra_events: list[Event] = field(default_factory=list)
    extra_y: list[int] = field(default_factory=list)
    used: list[Verdict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        ys = [*self.rows.values(), *self.extra_y]
        return {"anomaly": sum(1 for y in ys if y == 1), "normal": sum(1 for y in ys if y == 0)}

    def fingerprint(self) -> str:
        return labels_fingerprint(self.used)

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra_y)


def window_ids(window: Window, id_field: str | None) -> dict[str, int]:
    """Each window event's id (the id field, else ``topic:partition:offset``) and its
    coordinates' id, both to its index."""
    out: dict[str, int] = {}
    for i, (event, topic, part, off) in enumerate(
        zip(window.events, window.topics, window.partitions, window.offsets, strict=True)
    ):
        out[f"{topic}:{part}:{off}"] = i
        if id_field is not None and event.get(id_field) is not None:
            out[str(event[id_field])] = i
    return out


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The topic's partitions (none when it does not exist), fetching metadata when the
    client has not seen the topic yet."""
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
    return sorted(found or ())


class FeedbackReader:
    """Reads verdicts for the trainer and dead-letters bad ones (one per trainer)."""

    def __init__(self, settings: Settings, metrics: FeedbackMetrics) -> None:
        if not settings.feedback_topic:
            raise ValueError("no feedback topic configured")
        self.settings = settings
        self.topic: str = settings.feedback_topic
        self.metrics = metrics
        self.group = f"{settings.app_id}-trainer-feedback"

    async def ensure_topic(self) -> None:
        await ensure_topics(self.settings.kafka_client_kwargs(), {self.topic: 1}, compacted={self.topic})

    async def read(self) -> FeedbackRead:
        """The whole topic, and which records are fresh (past the group's committed offsets)."""
        out = FeedbackRead()
        consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_kwargs(), group_id=self.group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            parts = [TopicPartition(self.topic, p) for p in await _partitions(consumer, self.topic)]
            if not parts:
                return out
            consumer.assign(parts)
            ends = await consumer.end_offsets(parts)
            begins = await consumer.beginning_offsets(parts)
            committed = {tp: (await consumer.committed(tp)) or 0 for tp in parts}
            out.ends = dict(ends)
            remaining = {tp for tp in parts if ends[tp] > begins[tp]}
            for tp in remaining:
                consumer.seek(tp, begins[tp])
            while remaining:
                got = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                if not got:
                    break
                for tp, msgs in got.items():
                    for m in msgs:
                        self._take(out, m, fresh=m.offset >= committed[tp])
                    if msgs and msgs[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        return out

    def _take(self, out: FeedbackRead, m: Any, fresh: bool) -> None:
        where = Source(m.topic, m.partition, m.offset)
        if m.value is None:  # a tombstone: the verdict on that key is withdrawn
            key = (m.key or b"").decode("utf-8", "replace")
            out.verdicts.pop(key, None)
            out.fresh.discard(key)
            return
        try:
            verdict = parse_verdict(m.value)
        except VerdictError as exc:
            if fresh:
                out.rejected.append(Rejected(m.value, m.key, where, exc))
            return
        out.verdicts[verdict.event_id] = verdict
        out.origin[verdict.event_id] = where
        if fresh:
            out.fresh.add(verdict.event_id)
            self.metrics.received.labels(label=verdict.label).inc()

    async def resolve(self, read: FeedbackRead, window: Window, id_field: str | None) -> Labels:
        """Find each verdict's event (see the module's docstring); a fresh verdict whose event
        cannot be found is added to ``read.rejected``."""
        ids = window_ids(window, id_field)
        labels = Labels()
        to_fetch: list[tuple[Verdict, Source]] = []
        for v in read.verdicts.values():
            at = ids.get(v.event_id)
            coords = v.coordinates()
            if at is None and coords is not None:
                at = ids.get(coords.ident())
            if at is not None:
                labels.rows[at] = v.y
                labels.used.append(v)
            elif v.event is not None:
                labels.extra_events.append(v.event)
                labels.extra_y.append(v.y)
                labels.used.append(v)
            elif coords is not None:
                to_fetch.append((v, coords))
            elif v.event_id in read.fresh:
                self._reject(
                    read, v, "verdict_unknown_event", "not in the trainer's window, and no event or source given"
                )
        if len(to_fetch) > MAX_FETCHES:
            log.warning("%d verdicts need their event read back; reading the newest %d", len(to_fetch), MAX_FETCHES)
            to_fetch = to_fetch[-MAX_FETCHES:]
        found = await self.fetch([c for _, c in to_fetch]) if to_fetch else {}
        for v, coords in to_fetch:
            event = found.get(coords)
            if isinstance(event, dict):
                labels.extra_events.append(event)
                labels.extra_y.append(v.y)
                labels.used.append(v)
            elif v.event_id in read.fresh:
                self._reject(read, v, "verdict_event_not_found", str(event or f"nothing at {coords.ident()}"))
        return labels

    def _reject(self, read: FeedbackRead, v: Verdict, reason: str, detail: str) -> None:
        where = read.origin.get(v.event_id, Source(self.topic, 0, -1))
        raw = orjson.dumps({"event_id": v.event_id, "label": v.label, "by": v.by, "at": v.at})
        read.rejected.append(Rejected(raw, v.event_id.encode(), where, VerdictError(reason, detail)))

    async def fetch(self, sources: list[Source]) -> dict[Source, Event | str]:
        """The events at ``sources`` in the input topics, or why not (a short reason)."""
        out: dict[Source, Event | str] = {}
        consumer = AIOKafkaConsumer(**self.settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = sorted({TopicPartition(s.topic, s.partition) for s in sources})
            known = {TopicPartition(t, p) for t in {tp.topic for tp in parts} for p in await _partitions(consumer, t)}
            missing = [tp for tp in parts if tp not in known]
            for s in sources:
                if TopicPartition(s.topic, s.partition) in missing:
                    out[s] = f"no partition {s.topic}:{s.partition}"
            parts = [tp for tp in parts if tp in known]
            if not parts:
                return out
            consumer.assign(parts)
            begins, ends = await consumer.beginning_offsets(parts), await consumer.end_offsets(parts)
            for s in sources:
                tp = TopicPartition(s.topic, s.partition)
                if tp not in begins or s in out:
                    continue
                if s.offset < begins[tp]:
                    out[s] = f"offset {s.offset} of {s.topic}:{s.partition} was deleted (log starts at {begins[tp]})"
                    continue
                if s.offset >= ends[tp]:
                    out[s] = f"offset {s.offset} of {s.topic}:{s.partition} is beyond its end ({ends[tp]})"
                    continue
                consumer.seek(tp, s.offset)
                deadline = time.monotonic() + 5.0
                while s not in out and time.monotonic() < deadline:
                    got = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                    for m in got.get(tp, []):
                        value: Any = None
                        with contextlib.suppress(orjson.JSONDecodeError):
                            value = orjson.loads(m.value or b"")
                        if m.offset != s.offset:
                            out[s] = f"offset {s.offset} of {s.topic}:{s.partition} is gone (compacted)"
                        else:
                            out[s] = value if isinstance(value, dict) else "the record there is not a JSON event"
                out.setdefault(s, f"offset {s.offset} of {s.topic}:{s.partition} could not be read")
        finally:
            await consumer.stop()
        return out

    async def dead_letter(self, read: FeedbackRead) -> None:
        """Send the run's rejected feedback records to the dead-letter topic, count them."""
        if not read.rejected:
            return
        s = self.settings
        producer = AIOKafkaProducer(**s.kafka_client_kwargs(), acks="all")
        await producer.start()
        try:
            for r in read.rejected:
                record = dead_letter_record(
                    raw=r.raw, key=r.key, source=r.source, reason=r.error.reason, detail=r.error.detail,
                    at=time.time(), max_bytes=s.max_message_bytes,
                )  # fmt: skip
                await producer.send_and_wait(s.dead_letter_topic, orjson.dumps(record), key=r.key)
                self.metrics.rejected.labels(reason=r.error.reason).inc()
                log.warning("feedback record at %s dead-lettered: %s", r.source.ident(), r.error)
        finally:
            await producer.stop()

    async def commit(self, read: FeedbackRead) -> None:
        """Mark everything read as seen: the next run's fresh records start after it."""
        if not read.ends:
            return
        consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_kwargs(), group_id=self.group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(list(read.ends))
            await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in read.ends.items()})
        finally:
            await consumer.stop()
