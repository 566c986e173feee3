"""The first step of the hot path: raw Kafka records to JSON objects, or dead letters.

Every record ends up in exactly one of two lists: decoded events (with their records, in
order) or rejects with a reason (``empty``, ``oversized``, ``invalid_utf8``, ``invalid_json``,
``too_deep``, ``non_finite``, ``not_an_object``). Nothing here knows Kafka beyond the
:class:`RawRecord` shape.

Example:
    >>> from types import SimpleNamespace as R
    >>> batch = decode_batch([R(value=b'{"a": 1}'), R(value=b"[1]"), R(value=None)], max_message_bytes=100)
    >>> batch.events, [reason for _, reason, _ in batch.rejects]
    ([{'a': 1}], ['not_an_object', 'empty'])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


class RawRecord(Protocol):
    """What the hot path reads of a Kafka record (aiokafka's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # milliseconds


@dataclass
class Decoded:
    """A batch after decoding: ``events[i]`` came from ``records[i]``; ``rejects`` holds
    ``(record, reason, detail)`` for every record that is not a JSON object."""

    events: list[dict[str, Any]] = field(default_factory=list)
    records: list[RawRecord] = field(default_factory=list)
    rejects: list[tuple[RawRecord, str, str]] = field(default_factory=list)


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


def _reason(message: str) -> str:
    low = message.lower()
    if "utf-8" in low:
        return "invalid_utf8"
    if "infinity" in low or "nan" in low:
        return "non_finite"
    if "recursion" in low or "depth" in low:
        return "too_deep"
    return "invalid_json"


def decode_batch(records: Sequence[RawRecord], max_message_bytes: int) -> Decoded:
    """Decode a micro-batch; never raises for bad bytes.

    A clean batch (every value present, within the size limit, a JSON object) is decoded by
    one C-level ``map`` of orjson over the values; any bad record sends the batch through the
    record-by-record path, which names each reject's reason."""
    values = [r.value for r in records]
    if None not in values and max(map(len, values), default=0) <= max_message_bytes:  # type: ignore[arg-type]
        try:
            events = list(map(orjson.loads, values))  # type: ignore[arg-type]
        except orjson.JSONDecodeError:
            pass
        else:
            if set(map(type, events)) <= {dict}:
                return Decoded(events, list(records), [])
    out = Decoded()
    events, kept, rejects = out.events, out.records, out.rejects
    loads = orjson.loads
    for rec in records:
        value = rec.value
        if value is None:
            rejects.append((rec, "empty", "record has no value"))
            continue
        if len(value) > max_message_bytes:
            rejects.append((rec, "oversized", f"{len(value)} bytes > limit {max_message_bytes}"))
            continue
        try:
            event = loads(value)
        except orjson.JSONDecodeError:
            try:
                event = decode(value)
            except ValueError as exc:
                rejects.append((rec, _reason(str(exc)), str(exc)))
                continue
        if type(event) is not dict:
            rejects.append((rec, "not_an_object", f"JSON {type(event).__name__}, expected an object"))
            continue
        events.append(event)
        kept.append(rec)
    return out
