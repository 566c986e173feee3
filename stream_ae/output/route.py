"""The last step of the hot path: a scored batch becomes output records, per topic, as bytes.

Routing rules:

* every scored event: a ``stream-ae.score/1`` record on the all-scores topic, when one is set;
* every event above the threshold: a ``stream-ae.anomaly/2`` record on the output topic,
  keyed by the input record's key (or its coordinates);
* every record that could not be scored: a ``stream-ae.dead-letter/1`` record with the reason;
* every change of an incident (post-score stage with a cooldown: opened, updated, closed): a
  ``stream-ae.incident/2`` record on the (compacted) incidents topic, keyed by the incident.

Each record fits a record batch of ``Topics.batch_bytes`` (what the output topics accept):
a dead letter's original is cut to a prefix when it would not, and an anomaly record that
would not fit (a huge event) is dead-lettered as ``oversized`` instead, with its score in the
detail. Nothing is dropped. Records are kept per topic as two parallel lists, keys and values,
which the worker hands to :class:`~stream_ae.kafka.publisher.BatchPublisher` unchanged.
"""

from __future__ import annotations

import operator
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from numpy.typing import NDArray

from stream_ae.entities import changelog
from stream_ae.entities.store import EntityStore, PartitionDelta, StoreCounts
from stream_ae.input.decode import RawRecord
from stream_ae.input.source import Source
from stream_ae.kafka.limits import BATCH_OVERHEAD, DEFAULT_MAX_MESSAGE_BYTES, RECORD_OVERHEAD, fits
from stream_ae.output.records import (
    MAX_KEY_BYTES,
    anomaly_record,
    dead_letter_record,
    incident_record,
    output_key,
    score_records,
)

if TYPE_CHECKING:
    from stream_ae.alarms.stage import IncidentChange


@dataclass(frozen=True)
class Topics:
    """Where the outputs go, and the largest record batch they accept (bytes): every output
    record must fit one on its own."""

    output: str
    dead_letter: str
    scores: str | None = None
    batch_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    changelog: str | None = None  # the entity state's changelog, when the model declares entities
    incidents: str | None = None  # incident records, when the model declares an alarm cooldown


@dataclass
class OutputRecords:
    """One topic's records of a batch, in order: ``keys[i]`` goes with ``values[i]`` (None: a
    tombstone); ``partitions``, when set, pins each record's partition (a changelog's)."""

    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    partitions: list[int] | None = None

    def __len__(self) -> int:
        return len(self.values)


def changelog_records(store: EntityStore, deltas: list[PartitionDelta]) -> OutputRecords:
    """``deltas`` as changelog records, each to the changelog partition of the input partition
    it came from."""
    out = OutputRecords(partitions=[])
    assert out.partitions is not None
    for delta in deltas:
        keys, values = changelog.encode(store.spec, store.dtype, delta)
        out.keys += keys
        out.values += values
        out.partitions += [delta.partition] * len(keys)
    return out


@dataclass
class Routed:
    """What a batch turned into, plus the figures the metrics need."""

    outputs: dict[str, OutputRecords] = field(default_factory=dict)
    n_in: int = 0
    n_scored: int = 0
    n_anomalies: int = 0
    n_incidents: int = 0
    dead_reasons: Counter[str] = field(default_factory=Counter)
    scores: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    event_times: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))  # of anomalies
    score_seconds: float = 0.0
    deltas: list[PartitionDelta] = field(default_factory=list)  # what the batch changed in the entity state
    entity_counts: StoreCounts | None = None  # evictions and replays of this batch
    entities_held: dict[int, int] = field(default_factory=dict)  # per partition, after this batch

    def to(self, topic: str) -> OutputRecords:
        """The records bound for ``topic`` (created empty on first use)."""
        out = self.outputs.get(topic)
        if out is None:
            out = self.outputs[topic] = OutputRecords()
        return out

    @property
    def n_out(self) -> int:
        return sum(len(o) for o in self.outputs.values())


_PARTITION, _OFFSET, _KEY = (operator.attrgetter(a) for a in ("partition", "offset", "key"))


class Router:
    """Builds one batch's output records (see the module docstring for the rules)."""

    def __init__(self, topics: Topics, n_in: int, now: float | None = None) -> None:
        self.topics = topics
        self.now = time.time() if now is None else now
        self.routed = Routed(n_in=n_in)

    def dead_letter(self, rec: RawRecord, reason: str, detail: str) -> None:
        src = Source(rec.topic, rec.partition, rec.offset)
        key = rec.key if rec.key is None or len(rec.key) <= MAX_KEY_BYTES else src.ident().encode()
        body = dead_letter_record(
            raw=rec.value,
            key=rec.key,
            source=src,
            reason=reason,
            detail=detail,
            at=self.now,
            max_bytes=self.topics.batch_bytes - len(key or b"") - BATCH_OVERHEAD - RECORD_OVERHEAD,
        )
        out = self.routed.to(self.topics.dead_letter)
        out.keys.append(key)
        out.values.append(orjson.dumps(body))
        self.routed.dead_reasons[reason] += 1

    def anomaly(self, rec: RawRecord, event: dict[str, Any], **fields: Any) -> bool:
        """Route an event above the threshold; False (and a dead letter) when its record is too
        large for the output topic."""
        src = Source(rec.topic, rec.partition, rec.offset)
        key = output_key(rec.key, src)
        value = orjson.dumps(anomaly_record(event=event, key=rec.key, source=src, detected_at=self.now, **fields))
        if not fits(key, value, self.topics.batch_bytes):
            detail = (
                f"anomaly record of {len(value)} bytes exceeds the output topic's limit of "
                f"{self.topics.batch_bytes} bytes (score {fields['score']:.4f} > threshold {fields['threshold']:.4f})"
            )
            self.dead_letter(rec, "oversized", detail)
            return False
        out = self.routed.to(self.topics.output)
        out.keys.append(key)
        out.values.append(value)
        return True

    def incident(self, rec: RawRecord, change: IncidentChange, **fields: Any) -> None:
        """One change of an incident (:meth:`~stream_ae.alarms.stage.Alarms.changes`), keyed by
        its incident id: the compacted incidents topic keeps each incident's latest record, in
        order, since an incident's records share a key."""
        if not self.topics.incidents:
            return
        src = Source(rec.topic, rec.partition, rec.offset)
        value = orjson.dumps(
            incident_record(
                source=src,
                detected_at=self.now,
                incident_id=change.incident_id,
                entity=change.entity,
                status=change.status,
                opened_at=change.opened_ms / 1000.0,
                event_time=change.event_ms / 1000.0,
                alarms=change.alarms,
                peak_score=change.peak_score,
                **fields,
            )
        )
        out = self.routed.to(self.topics.incidents)
        out.keys.append(change.incident_id.encode()[:MAX_KEY_BYTES])
        out.values.append(value)
        if change.status == "opened":
            self.routed.n_incidents += 1

    def changelog(self, store: EntityStore, deltas: list[PartitionDelta]) -> None:
        """One changelog record per entity a batch touched (a tombstone per one it dropped),
        when the batch carries its own (``Topics.changelog`` set: ``exactly_once``, or a commit
        interval of 0; else the worker writes them coalesced at its commits)."""
        if self.topics.changelog:
            self.routed.outputs[self.topics.changelog] = changelog_records(store, deltas)

    def scores(
        self,
        records: list[RawRecord],
        scores: NDArray[np.float64],
        version: str,
        codes: NDArray[np.float32] | None = None,
        published: NDArray[np.float64] | None = None,
    ) -> None:
        """All-scores records for ``records`` (in order), when an all-scores topic is set; with
        ``codes`` (one row per record) each carries its latent code, with ``published`` its
        published score."""
        if not self.topics.scores or not records:
            return
        n = len(records)
        partitions = np.fromiter(map(_PARTITION, records), dtype=np.int64, count=n)
        offsets = np.fromiter(map(_OFFSET, records), dtype=np.int64, count=n)
        topic = records[0].topic
        same_topic = all(r.topic == topic for r in records)
        out = self.routed.to(self.topics.scores)
        keys = list(map(_KEY, records))
        if max(map(len, filter(None, keys)), default=0) > MAX_KEY_BYTES:  # a hostile key: not repeated
            keys = [k if k is None or len(k) <= MAX_KEY_BYTES else None for k in keys]
        if same_topic:
            out.values.extend(score_records(topic, partitions, offsets, scores, version, codes, published))
        else:  # several input topics: one serialisation per topic, order kept
            values: list[bytes] = [b""] * n
            for t in dict.fromkeys(r.topic for r in records):
                idx = np.flatnonzero(np.fromiter((r.topic == t for r in records), dtype=bool, count=n))
                part = score_records(
                    t,
                    partitions[idx],
                    offsets[idx],
                    scores[idx],
                    version,
                    codes[idx] if codes is not None else None,
                    published[idx] if published is not None else None,
                )
                for i, v in zip(idx.tolist(), part, strict=True):
                    values[i] = v
            out.values.extend(values)
        out.keys.extend(keys)
