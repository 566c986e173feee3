"""The window of recent traffic a training run reads: events with their Kafka coordinates.

:func:`read_window` reads the newest ``trainer_window_events`` (after ``trainer_warmup_events``
that only warm the entity state) straight from the input topics, without a consumer group, so
that it never disturbs the workers' offsets. The trainer's service and its feedback reader both
work on a :class:`Window`; neither imports the other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from numpy.typing import NDArray

from stream_ae.features.encoder import Event
from stream_ae.features.featurize import RecordMeta
from stream_ae.settings import Settings


@dataclass
class Window:
    """Events read for a run, with what the entity state needs of each: its partition and
    offset (replay order), record key and timestamp; ``warmup`` marks the events read only to
    warm the state (never trained on)."""

    events: list[Event] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    warmups: list[bool] = field(default_factory=list)

    def add(self, event: Event, record: ConsumerRecord[bytes, bytes], warmup: bool = False) -> None:
        self.events.append(event)
        self.topics.append(record.topic)
        self.partitions.append(record.partition)
        self.offsets.append(record.offset)
        self.keys.append(record.key)
        self.timestamps.append(record.timestamp)
        self.warmups.append(warmup)

    @classmethod
    def of(cls, events: list[Event], key_field: str | None = "card") -> Window:
        """Events without Kafka coordinates (tests, files): one partition, in order."""
        meta = RecordMeta.for_file(events, key_field)
        n = len(events)
        keys = list(meta.keys or [None] * n)
        return cls(list(events), ["file"] * n, [0] * n, list(range(n)), keys, [0] * n, [False] * n)

    @property
    def warmup(self) -> NDArray[np.bool_]:
        return np.asarray(self.warmups, dtype=bool)

    def spans(self, with_warmup: bool = False) -> dict[str, list[int]]:
        """Per ``topic:partition``, the first and last offset of the events read for training
        and calibration: where an operator reads them back. Warm-up events count only
        ``with_warmup`` (a model without entity features trains on them too).

        Example:
            >>> Window.of([{"card": "a"}, {"card": "b"}, {"card": "a"}]).spans()
            {'file:0': [0, 2]}
            >>> w = Window([{}] * 4, ["t"] * 4, [0, 0, 1, 1], [5, 6, 7, 8], [None] * 4, [0] * 4, [True, False] * 2)
            >>> w.spans(), w.spans(with_warmup=True)
            ({'t:0': [6, 6], 't:1': [8, 8]}, {'t:0': [5, 6], 't:1': [7, 8]})
        """
        out: dict[str, list[int]] = {}
        for topic, partition, offset, warm in zip(
            self.topics, self.partitions, self.offsets, self.warmups, strict=True
        ):
            if warm and not with_warmup:
                continue
            span = out.setdefault(f"{topic}:{partition}", [offset, offset])
            span[0], span[1] = min(span[0], offset), max(span[1], offset)
        return out

    def meta(self) -> RecordMeta:
        return RecordMeta(
            np.asarray(self.partitions, dtype=np.int64),
            np.asarray(self.offsets, dtype=np.int64),
            list(self.keys),
            np.asarray(self.timestamps, dtype=np.int64),
        )


async def read_window(settings: Settings) -> Window:
    """The newest ``trainer_window_events`` (plus ``trainer_warmup_events`` before them, which
    only warm the entity state) decodable events across the input topics, per partition in
    offset order, with their coordinates, keys and timestamps."""
    s = settings
    consumer = AIOKafkaConsumer(**s.kafka_client_kwargs(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in s.input_topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not parts:
            await consumer._client.force_metadata_update()  # topic just created
            parts = [
                TopicPartition(t, p) for t in s.input_topics for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        begins = await consumer.beginning_offsets(parts)
        total = s.trainer_window_events + s.trainer_warmup_events
        per = max(1, total // max(len(parts), 1))
        warm = s.trainer_warmup_events / max(total, 1)
        for tp in parts:
            consumer.seek(tp, max(begins[tp], ends[tp] - per))
        window = Window()
        remaining = {tp for tp in parts if ends[tp] > max(begins[tp], ends[tp] - per)}
        while remaining:
            got = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not got:
                break
            for tp, msgs in got.items():
                start = max(begins[tp], ends[tp] - per)
                for m in msgs:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        value = orjson.loads(m.value or b"")
                        if isinstance(value, dict):
                            window.add(value, m, warmup=(m.offset - start) < warm * (ends[tp] - start))
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return window
    finally:
        await consumer.stop()
