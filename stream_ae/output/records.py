"""The records stream-ae writes: anomaly records and dead-letter records (versioned JSON).

Anomaly record, schema ``stream-ae.anomaly/2`` (see :data:`ANOMALY_SCHEMA`)::

    {"schema": "stream-ae.anomaly/2", "event_id": "...", "key": "...",
     "source": {"topic": "...", "partition": 0, "offset": 42},
     "event_time": 1732350000.123, "detected_at": 1732350000.456,
     "score": 7.1, "threshold": 3.2, "model_version": "20261123T120000Z",
     "top_features": [{"field": "amount", "share": 0.83, "observed": 4980.0, "expected": 41.7}, ...],
     "event": {...the original event...}}

``top_features`` names fields, each with its observed and expected value
(:mod:`stream_ae.scoring.explain`). Version 1 (:data:`ANOMALY_SCHEMA_V1`, written before) named
encoded columns: ``{"feature": "country=DE", "share": 0.45}``, and had no expected values.

``event_id`` is the event's id field when the schema names one, else ``topic:partition:offset``;
with at-least-once delivery a consumer de-duplicates on ``source`` (or ``event_id``).

With an ``alarm`` section in the schema (the post-score stage, :mod:`stream_ae.alarms`) an
anomaly record also carries ``raw_score`` (the model's score; ``score`` is then the published
one, the score likelihood, and ``threshold`` the threshold on it) and, with a cooldown,
``incident_id``. Incidents have their own records, schema ``stream-ae.incident/2``
(:data:`INCIDENT_SCHEMA`), keyed by the incident id on a compacted topic: one when the
incident opens, one per batch in which later alarms join it (``updated``, the tally so far),
and one when the entity's first event after ``cooldown_s`` without an alarm closes it::

    {"schema": "stream-ae.incident/2", "incident_id": "host-7@1732350000123", "entity": "host-7",
     "status": "opened", "opened_at": 1732350000.123, "event_time": 1732350000.123,
     "detected_at": 1732350000.456, "cooldown_s": 3600.0, "alarms": 1, "peak_score": 4.2,
     "top_fields": [{"field": "cpu", "share": 0.7, "observed": 97.0, "expected": 41.0}],
     "source": {...}, "event_id": "...", "score": 4.2, "raw_score": 7.1, "threshold": 3.0,
     "model_version": "20261123T120000Z"}

``source``, ``event_id``, ``event_time`` and the scores are those of the event the record is
about: the opening alarm, the batch's latest alarm of the incident, or the closing event.
Every anomaly record of an incident names its ``incident_id``. Version 1 had no ``status``,
``alarms``, ``peak_score`` or ``event_time``, and was written at the opening alarm only.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from stream_ae.input.source import SOURCE_SCHEMA, Source

ANOMALY_SCHEMA_ID = "stream-ae.anomaly/2"
ANOMALY_SCHEMA_V1_ID = "stream-ae.anomaly/1"
DEAD_LETTER_SCHEMA_ID = "stream-ae.dead-letter/1"
SCORE_SCHEMA_ID = "stream-ae.score/1"
INCIDENT_SCHEMA_ID = "stream-ae.incident/2"
INCIDENT_STATUSES = ("opened", "updated", "closed")

ANOMALY_SCHEMA_V1: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": ANOMALY_SCHEMA_V1_ID,
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
        "schema": {"const": ANOMALY_SCHEMA_V1_ID},
        "event_id": {"type": "string"},
        "key": {"type": ["string", "null"]},
        "source": SOURCE_SCHEMA,
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

_VALUE = {"type": ["number", "string", "boolean", "null"]}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
ANOMALY_SCHEMA: dict[str, Any] = {
    **ANOMALY_SCHEMA_V1,
    "$id": ANOMALY_SCHEMA_ID,
    "properties": {
        **ANOMALY_SCHEMA_V1["properties"],
        "schema": {"const": ANOMALY_SCHEMA_ID},
        "top_features": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "share", "observed", "expected"],
                "properties": {
                    "field": {"type": "string", "description": "a declared field or an entity feature"},
                    "share": {"type": "number", "description": "of the squared reconstruction error"},
                    "observed": _VALUE,
                    "expected": {**_VALUE, "description": "the model's reconstruction, in the event's units"},
                    "observed_probability": _PROBABILITY,
                    "expected_probability": _PROBABILITY,
                    "probability_true": _PROBABILITY,
                    "probability_missing": _PROBABILITY,
                    "observed_hour": {"type": "number"},
                    "expected_hour": {"type": "number"},
                    "observed_day_of_week": {"type": "integer"},
                    "expected_day_of_week": {"type": "integer"},
                    "entity_feature": {"type": "boolean"},
                    "no_expected": {"type": "string", "description": "why there is no expected value"},
                },
            },
        },
        "raw_score": {"type": "number", "description": "the model's score, when score is the published one"},
        "incident_id": {"type": "string", "description": "the incident this alarm opened or joined"},
    },
}

INCIDENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": INCIDENT_SCHEMA_ID,
    "type": "object",
    "required": [
        "schema",
        "incident_id",
        "entity",
        "status",
        "opened_at",
        "event_time",
        "detected_at",
        "alarms",
        "peak_score",
        "top_fields",
        "cooldown_s",
        "source",
        "event_id",
        "score",
        "raw_score",
        "threshold",
        "model_version",
    ],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": INCIDENT_SCHEMA_ID},
        "incident_id": {"type": "string", "description": "<entity>@<opening event time, epoch ms>"},
        "entity": {"type": "string"},
        "status": {
            "enum": list(INCIDENT_STATUSES),
            "description": "opened (its first alarm), updated (later alarms joined it), closed (cooldown_s passed "
            "without an alarm, seen at the entity's next event)",
        },
        "opened_at": {"type": "number", "description": "event time of the opening alarm, epoch seconds"},
        "event_time": {"type": "number", "description": "event time of the event this record is about, epoch seconds"},
        "detected_at": {"type": "number", "description": "epoch seconds"},
        "cooldown_s": {"type": "number", "description": "the incident closes after this long without an alarm"},
        "alarms": {"type": "integer", "minimum": 1, "description": "alarms in the incident so far"},
        "peak_score": {"type": "number", "description": "the highest published score of its alarms so far"},
        "top_fields": {
            **ANOMALY_SCHEMA["properties"]["top_features"],
            "description": "the fields that moved in the alarm this record is about (as in its anomaly record); "
            "empty for a closing",
        },
        "source": SOURCE_SCHEMA,
        "event_id": {"type": "string"},
        "score": {"type": "number", "description": "the published score of the event this record is about"},
        "raw_score": {"type": "number"},
        "threshold": {"type": "number"},
        "model_version": {"type": "string"},
    },
}


def incident_record(
    *,
    incident_id: str,
    entity: str,
    status: str,
    opened_at: float,
    event_time: float,
    detected_at: float,
    cooldown_s: float,
    alarms: int,
    peak_score: float,
    top_fields: list[dict[str, Any]],
    source: Source,
    event_id: str,
    score: float,
    raw_score: float,
    threshold: float,
    model_version: str,
) -> dict[str, Any]:
    return {
        "schema": INCIDENT_SCHEMA_ID,
        "incident_id": incident_id,
        "entity": entity,
        "status": status,
        "opened_at": opened_at,
        "event_time": event_time,
        "detected_at": detected_at,
        "cooldown_s": cooldown_s,
        "alarms": alarms,
        "peak_score": peak_score,
        "top_fields": top_fields,
        "source": source.as_dict(),
        "event_id": event_id,
        "score": score,
        "raw_score": raw_score,
        "threshold": threshold,
        "model_version": model_version,
    }


def anomaly_schema(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema a stored anomaly record follows, by its ``schema`` field (1 or 2)."""
    return ANOMALY_SCHEMA_V1 if record.get("schema") == ANOMALY_SCHEMA_V1_ID else ANOMALY_SCHEMA


DEAD_LETTER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": DEAD_LETTER_SCHEMA_ID,
    "type": "object",
    "required": [
        "schema",
        "reason",
        "detail",
        "source",
        "key",
        "dead_lettered_at",
        "original_b64",
        "original_size",
        "original_truncated",
    ],
    "properties": {
        "schema": {"const": DEAD_LETTER_SCHEMA_ID},
        "reason": {"type": "string", "description": "why: schema_*, entity_*, not_json, oversized, ..."},
        "detail": {"type": "string", "description": "what exactly, at most 500 characters"},
        "source": SOURCE_SCHEMA,
        "key": {"type": ["string", "null"]},
        "dead_lettered_at": {"type": "number", "description": "epoch seconds"},
        "original_b64": {"type": ["string", "null"], "description": "the original bytes, base64 (a prefix when cut)"},
        "original_size": {"type": "integer"},
        "original_truncated": {"type": "boolean"},
    },
}

SCORE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCORE_SCHEMA_ID,
    "type": "object",
    "required": ["source", "score", "model_version"],
    "properties": {
        "source": SOURCE_SCHEMA,
        "score": {"type": "number", "description": "the model's raw score"},
        "published": {"type": "number", "description": "the post-score stage's published score (alarm section)"},
        "code": {"type": "array", "items": {"type": "number"}, "description": "with STREAM_AE_SCORES_INCLUDE_CODE"},
        "model_version": {"type": "string"},
    },
}

MAX_KEY_BYTES = 4096  # a longer input key is shown cut to its first 256 bytes (and never reused as a key)


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    return key.decode("utf-8", "replace") if len(key) <= MAX_KEY_BYTES else key[:256].decode("utf-8", "replace") + "…"


def output_key(key: bytes | None, source: Source) -> bytes:
    """The Kafka key of a record about an input record: its key, or its coordinates when it
    has none or one too long to repeat."""
    return key if key is not None and len(key) <= MAX_KEY_BYTES else source.ident().encode()


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
    raw_score: float | None = None,
    incident_id: str | None = None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if raw_score is not None:
        extra["raw_score"] = raw_score
    if incident_id is not None:
        extra["incident_id"] = incident_id
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
        **extra,
        "event": event,
    }


def dead_letter_record(
    *,
    raw: bytes | None,
    key: bytes | None,
    source: Source,
    reason: str,
    detail: str,
    at: float,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """The original bytes travel base64-encoded (they may not be UTF-8). With ``max_bytes``
    (the most the serialised record may take) an original too large to travel is cut to a
    prefix: ``original_truncated`` says so and ``original_size`` keeps its length; the whole
    record stays in the input topic at ``source``."""
    record: dict[str, Any] = {
        "schema": DEAD_LETTER_SCHEMA_ID,
        "reason": reason,
        "detail": detail[:500],
        "source": source.as_dict(),
        "key": _key_text(key),
        "dead_lettered_at": at,
        "original_b64": None,
        "original_size": len(raw) if raw is not None else 0,
        "original_truncated": False,
    }
    if raw is None:
        return record
    kept = raw
    if max_bytes is not None:
        room = max_bytes - len(orjson.dumps(record)) - 16  # the envelope as it stands, plus the quotes
        if len(raw) * 4 // 3 + 4 > room:
            kept = raw[: max(0, room) // 4 * 3]
            record["original_truncated"] = True
    record["original_b64"] = base64.b64encode(kept).decode()
    return record


def score_records(
    topic: str,
    partitions: NDArray[np.int64],
    offsets: NDArray[np.int64],
    scores: NDArray[np.float64],
    version: str,
    codes: NDArray[np.float32] | None = None,
    published: NDArray[np.float64] | None = None,
) -> list[bytes]:
    """All-scores records (``stream-ae.score/1``: ``source``, ``score``, ``model_version``, with
    ``codes`` each row's latent ``code``, with ``published`` each row's published score, the
    post-score stage's) for a batch: each column is serialised once by
    orjson, then the pieces are joined per record (four times faster than a dict and
    ``orjson.dumps`` per record)."""

    def column(a: NDArray[Any]) -> list[bytes]:
        return orjson.dumps(np.ascontiguousarray(a), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")

    if not len(scores):
        return []
    head = b'{"source":{"topic":' + orjson.dumps(topic) + b',"partition":'
    tail = b',"model_version":' + orjson.dumps(version) + b"}"
    join = b"".join
    tails: Iterable[bytes] = itertools.repeat(tail, len(scores))
    if codes is not None:  # the code's numbers, rounded to what float32 holds
        tails = [b',"code":' + orjson.dumps(row) + tail for row in np.round(codes.astype(np.float64), 6).tolist()]
    if published is not None:
        tails = [b',"published":' + p + t for p, t in zip(column(published), tails, strict=False)]
    return [
        join((head, p, b',"offset":', o, b'},"score":', sc, t))
        for p, o, sc, t in zip(column(partitions), column(offsets), column(scores), tails, strict=True)
    ]
