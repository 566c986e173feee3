"""The hot path without Kafka: raw records in, routed output records out.

``decode (orjson) -> validate -> encode the whole batch -> score on the device -> route``.
Every input record ends up in exactly one of: scored (and maybe an anomaly) or dead-lettered
with a reason. The worker only moves bytes between Kafka and this function.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from stream_ae.artifacts import LoadedModel
from stream_ae.features import FeatureEncoder
from stream_ae.records import Source, anomaly_record, dead_letter_record
from stream_ae.scorer import DeviceScorer


class RawRecord(Protocol):
    """What the pipeline reads of a Kafka record (aiokafka's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # milliseconds


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes


@dataclass
class Routed:
    """What a batch turned into, plus the figures the metrics need."""

    out: list[OutRecord] = field(default_factory=list)
    n_in: int = 0
    n_scored: int = 0
    n_anomalies: int = 0
    dead_reasons: Counter[str] = field(default_factory=Counter)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    event_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # of anomalies
    score_seconds: float = 0.0


class ActiveModel:
    """A loaded artifact ready for the hot path: encoder, device scorer, names, version."""

    def __init__(self, loaded: LoadedModel, top_k: int) -> None:
        if loaded.encoder is None:
            raise ValueError("a streaming model needs a feature encoder in its artifact")
        self.loaded = loaded
        self.encoder: FeatureEncoder = loaded.encoder
        self.scorer = DeviceScorer(loaded.detector, top_k)
        self.feature_names = list(loaded.manifest.get("feature_names") or self.encoder.feature_names)
        self.version = loaded.version
        self.threshold = self.scorer.threshold


@dataclass(frozen=True)
class Topics:
    output: str
    dead_letter: str
    scores: str | None = None


def dead_letter(routed: Routed, rec: RawRecord, topic: str, reason: str, detail: str, now: float) -> None:
    """Route one record to the dead-letter topic (original bytes, reason, coordinates)."""
    src = Source(rec.topic, rec.partition, rec.offset)
    body = dead_letter_record(raw=rec.value, key=rec.key, source=src, reason=reason, detail=detail, at=now)
    routed.out.append(OutRecord(topic, rec.key, orjson.dumps(body)))
    routed.dead_reasons[reason] += 1


def decode(value: bytes) -> Any:
    """orjson, plus the NaN/Infinity tokens some producers write (Python's ``json.dumps``):
    those decode, so that the schema check names the field as non-finite."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        if b"NaN" not in value and b"Infinity" not in value:
            raise
        try:
            return json.loads(value)
        except RecursionError as exc:
            raise ValueError("recursion limit exceeded") from exc


def _decode_reason(message: str) -> str:
    low = message.lower()
    if "utf-8" in low:
        return "invalid_utf8"
    if "infinity" in low or "nan" in low:
        return "non_finite"
    if "recursion" in low or "depth" in low:
        return "too_deep"
    return "invalid_json"


def process_batch(records: Sequence[RawRecord], model: ActiveModel, topics: Topics, max_message_bytes: int) -> Routed:
    """Route one micro-batch. Never raises for bad input: bad records become dead letters."""
    now = time.time()
    routed = Routed(n_in=len(records))

    def dead(rec: RawRecord, reason: str, detail: str) -> None:
        dead_letter(routed, rec, topics.dead_letter, reason, detail, now)

    events: list[dict[str, Any]] = []
    kept: list[RawRecord] = []
    for rec in records:
        value = rec.value
        if value is None:
            dead(rec, "empty", "record has no value")
            continue
        if len(value) > max_message_bytes:
            dead(rec, "oversized", f"{len(value)} bytes > limit {max_message_bytes}")
            continue
        try:
            event = decode(value)
        except ValueError as exc:
            msg = str(exc)
            dead(rec, _decode_reason(msg), msg)
            continue
        if not isinstance(event, dict):
            dead(rec, "not_an_object", f"JSON {type(event).__name__}, expected an object")
            continue
        events.append(event)
        kept.append(rec)

    if events:
        batch = model.encoder.encode(events)
        for i, err in batch.errors.items():
            dead(kept[i], f"schema_{err.reason}", str(err))
        t0 = time.perf_counter()
        result = model.scorer.score(batch.X)
        routed.score_seconds = time.perf_counter() - t0
        routed.n_scored = len(batch.ok)
        routed.scores = result.scores
        id_field = model.encoder.schema.id_field
        anomaly_times: list[float] = []
        for j in np.flatnonzero(result.flagged).tolist():
            i = int(batch.ok[j])
            rec, event = kept[i], events[i]
            src = Source(rec.topic, rec.partition, rec.offset)
            event_time = rec.timestamp / 1000.0
            top = [
                {"feature": model.feature_names[f], "share": round(float(s), 4)}
                for f, s in zip(result.top_index[j], result.top_share[j], strict=True)
                if f >= 0
            ]
            event_id = event.get(id_field) if id_field else None
            body = anomaly_record(
                event=event,
                event_id=str(event_id) if event_id is not None else src.ident(),
                key=rec.key,
                source=src,
                event_time=event_time,
                detected_at=now,
                score=float(result.scores[j]),
                threshold=model.threshold,
                model_version=model.version,
                top_features=top,
            )
            routed.out.append(OutRecord(topics.output, rec.key or src.ident().encode(), orjson.dumps(body)))
            anomaly_times.append(event_time)
        routed.n_anomalies = len(anomaly_times)
        routed.event_times = np.asarray(anomaly_times)
        if topics.scores:
            for j, row in enumerate(batch.ok.tolist()):
                rec = kept[row]
                body = {
                    "source": Source(rec.topic, rec.partition, rec.offset).as_dict(),
                    "score": float(result.scores[j]),
                    "model_version": model.version,
                }
                routed.out.append(OutRecord(topics.scores, rec.key, orjson.dumps(body)))
    return routed
