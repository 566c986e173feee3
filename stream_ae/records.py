"""The records stream-ae writes: anomaly records and dead-letter records (versioned JSON).

Anomaly record, schema ``stream-ae.anomaly/1`` (see :data:`ANOMALY_SCHEMA`)::

    {"schema": "stream-ae.anomaly/1", "event_id": "...", "key": "...",
     "source": {"topic": "...", "partition": 0, "offset": 42},
     "event_time": 1732350000.123, "detected_at": 1732350000.456,
     "score": 7.1, "threshold": 3.2, "model_version": "20261123T120000Z",
     "top_features": [{"feature": "amount", "share": 0.83}, ...],
     "event": {...the original event...}}

``event_id`` is the event's id field when the schema names one, else ``topic:partition:offset``;
with at-least-once delivery a consumer de-duplicates on ``source`` (or ``event_id``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

ANOMALY_SCHEMA_ID = "stream-ae.anomaly/1"
DEAD_LETTER_SCHEMA_ID = "stream-ae.dead-letter/1"
SCORE_SCHEMA_ID = "stream-ae.score/1"

ANOMALY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": ANOMALY_SCHEMA_ID,
    "type": "object",
    "required": [
        "schema",
        "event_id",
        "source",
        "event_time",
        "detected_at",
        "score",
        "threshold",
        "model_version",
        "top_features",
        "event",
    ],
    "properties": {
        "schema": {"const": ANOMALY_SCHEMA_ID},
        "event_id": {"type": "string"},
        "key": {"type": ["string", "null"]},
        "source": {
            "type": "object",
            "required": ["topic", "partition", "offset"],
            "properties": {
                "topic": {"type": "string"},
                "partition": {"type": "integer"},
                "offset": {"type": "integer"},
            },
        },
        "event_time": {"type": "number", "description": "Kafka record timestamp, epoch seconds"},
        "detected_at": {"type": "number", "description": "epoch seconds"},
        "score": {"type": "number"},
        "threshold": {"type": "number"},
        "model_version": {"type": "string"},
        "top_features": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["feature", "share"],
                "properties": {"feature": {"type": "string"}, "share": {"type": "number"}},
            },
        },
        "event": {"type": "object"},
    },
}


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def ident(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def _key_text(key: bytes | None) -> str | None:
    return key.decode("utf-8", "replace") if key is not None else None


def anomaly_record(
    *,
    event: dict[str, Any],
    event_id: str,
    key: bytes | None,
    source: Source,
    event_time: float,
    detected_at: float,
    score: float,
    threshold: float,
    model_version: str,
    top_features: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "schema": ANOMALY_SCHEMA_ID,
        "event_id": event_id,
        "key": _key_text(key),
        "source": source.as_dict(),
        "event_time": event_time,
        "detected_at": detected_at,
        "score": score,
        "threshold": threshold,
        "model_version": model_version,
        "top_features": top_features,
        "event": event,
    }


def dead_letter_record(
    *, raw: bytes | None, key: bytes | None, source: Source, reason: str, detail: str, at: float
) -> dict[str, Any]:
    """The original bytes travel base64-encoded (they may not be UTF-8)."""
    return {
        "schema": DEAD_LETTER_SCHEMA_ID,
        "reason": reason,
        "detail": detail[:500],
        "source": source.as_dict(),
        "key": _key_text(key),
        "dead_lettered_at": at,
        "original_b64": base64.b64encode(raw).decode() if raw is not None else None,
    }
