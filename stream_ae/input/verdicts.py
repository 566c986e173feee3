"""Analysts' verdicts on events: the feedback topic's records (schema ``stream-ae.verdict/1``).

A verdict says what an event really was, after the fact: ``anomaly`` (a confirmed fraud, a
real incident) or ``normal`` (a false alarm). The feedback topic (``STREAM_AE_FEEDBACK_TOPIC``)
is compacted and keyed by the event id, so the latest verdict on an event wins and a retracted
one is overwritten::

    {"schema": "stream-ae.verdict/1", "event_id": "tx-0-4711", "label": "normal",
     "source": {"topic": "events", "partition": 0, "offset": 4711},
     "by": "analyst@bank", "at": 1732350000.0, "note": "customer confirmed",
     "event": {...the original event, optional...}}

``event_id`` is the id an anomaly record carries (the schema's id field, else
``topic:partition:offset``, which also gives the coordinates). ``source`` and ``event`` are
optional: the trainer finds the event in its window by id, else takes ``event``, else reads
the input topic at ``source``. ``by`` and ``at`` default to the writer and now.

Example:
    >>> v = parse_verdict(verdict_bytes(verdict_record("tx-1", "anomaly", by="ana", at=1.0)))
    >>> v.event_id, v.label, v.by
    ('tx-1', 'anomaly', 'ana')
    >>> parse_verdict(b'{"event_id": "tx-1", "label": "maybe"}')
    Traceback (most recent call last):
    ...
    stream_ae.input.verdicts.VerdictError: verdict_unknown_label: label 'maybe' is not one of anomaly, normal
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from stream_ae.input.source import SOURCE_SCHEMA, Source

VERDICT_SCHEMA_ID = "stream-ae.verdict/1"
LABELS = ("anomaly", "normal")
LABEL_VALUE = {"anomaly": 1, "normal": 0}  # the estimator's ``y``
MAX_ID_CHARS = 512

VERDICT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": VERDICT_SCHEMA_ID,
    "type": "object",
    "required": ["event_id", "label"],
    "properties": {
        "schema": {"const": VERDICT_SCHEMA_ID},
        "event_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
        "label": {"enum": list(LABELS)},
        "source": SOURCE_SCHEMA,
        "by": {"type": ["string", "null"]},
        "at": {"type": "number", "description": "epoch seconds of the verdict"},
        "note": {"type": ["string", "null"]},
        "event": {"type": "object", "description": "the original event, when the writer has it"},
    },
}


class VerdictError(ValueError):
    """A record on the feedback topic that is not a usable verdict; ``reason`` is the
    dead-letter reason (``verdict_not_json``, ``verdict_missing_id``, ``verdict_unknown_label``,
    ``verdict_bad_source``, ``verdict_unknown_event``, ``verdict_event_not_found``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Verdict:
    event_id: str
    label: str  # "anomaly" | "normal"
    by: str | None = None
    at: float | None = None
    source: Source | None = None
    event: dict[str, Any] | None = None
    note: str | None = None

    @property
    def y(self) -> int:
        """The estimator's label: 1 anomaly, 0 normal."""
        return LABEL_VALUE[self.label]

    def coordinates(self) -> Source | None:
        """Where the event lies in the input topic: ``source``, else the coordinates an id of
        the form ``topic:partition:offset`` spells."""
        return self.source if self.source is not None else Source.parse(self.event_id)


def verdict_record(
    event_id: str,
    label: str,
    *,
    by: str | None = None,
    at: float | None = None,
    source: Source | None = None,
    event: dict[str, Any] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """A verdict as the feedback topic holds it (checked: a bad one raises :class:`VerdictError`)."""
    record: dict[str, Any] = {"schema": VERDICT_SCHEMA_ID, "event_id": event_id, "label": label, "by": by, "at": at}
    if source is not None:
        record["source"] = source.as_dict()
    if event is not None:
        record["event"] = event
    if note is not None:
        record["note"] = note
    _check(record)
    return record


def verdict_bytes(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def _check(value: Any) -> Verdict:
    if not isinstance(value, dict):
        raise VerdictError("verdict_not_json", "a verdict is a JSON object")
    event_id = value.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > MAX_ID_CHARS:
        raise VerdictError(
            "verdict_missing_id", f"event_id must be a non-empty string of at most {MAX_ID_CHARS} characters"
        )
    label = value.get("label")
    if label not in LABELS:
        raise VerdictError("verdict_unknown_label", f"label {label!r} is not one of {', '.join(LABELS)}")
    source = None
    if value.get("source") is not None:
        try:
            source = Source.from_dict(value["source"])
        except ValueError as exc:
            raise VerdictError("verdict_bad_source", str(exc)) from exc
    event = value.get("event")
    at = value.get("at")
    return Verdict(
        event_id,
        str(label),
        by=str(value["by"]) if value.get("by") is not None else None,
        at=float(at) if isinstance(at, int | float) else None,
        source=source,
        event=event if isinstance(event, dict) else None,
        note=str(value["note"]) if value.get("note") is not None else None,
    )


def parse_verdict(raw: bytes | None) -> Verdict:
    """A feedback record's value as a :class:`Verdict`, or :class:`VerdictError` with the reason."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        raise VerdictError("verdict_not_json", str(exc)) from exc
    return _check(value)


def labels_fingerprint(verdicts: Iterable[Verdict]) -> str:
    """SHA-256 of the ``event_id label`` lines, sorted: which verdicts a model was trained on."""
    lines = sorted(f"{v.event_id}\t{v.label}" for v in verdicts)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
