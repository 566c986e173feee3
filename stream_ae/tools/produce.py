"""Replay producer: stream synthetic (or recorded) events into Kafka at a chosen rate.

Example (a real broker needed):
    >>> events, labels = transactions(1000, anomaly_rate=0.01)           # doctest: +SKIP
    >>> asyncio.run(send_events({"bootstrap_servers": "127.0.0.1:9092"},  # doctest: +SKIP
    ...                         "events", events, rate=5000))
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stream_ae.tools.synthetic import CardStream, transactions

__all__ = ["file_payloads", "send_events", "send_raw", "transactions"]


async def send_raw(
    client_kwargs: dict[str, Any],
    topic: str,
    payloads: Sequence[tuple[bytes | None, bytes | None]],
    *,
    rate: float | None = None,
    chunk: int = 1000,
) -> int:
    """Send ``(key, value)`` pairs; ``rate`` events/s at most (None: as fast as possible).

    Waits for every acknowledgement; returns the number sent.
    """
    producer = make_producer(client_kwargs)
    await producer.start()
    try:
        return await send_with(producer, topic, payloads, rate=rate, chunk=chunk)
    finally:
        await producer.stop()


def make_producer(client_kwargs: dict[str, Any]) -> AIOKafkaProducer:
    return AIOKafkaProducer(**client_kwargs, linger_ms=10, acks="all", max_batch_size=256 * 1024)


async def send_with(
    producer: AIOKafkaProducer,
    topic: str,
    payloads: Sequence[tuple[bytes | None, bytes | None]],
    *,
    rate: float | None = None,
    chunk: int = 1000,
) -> int:
    """Send through an open producer, paced to ``rate``; waits for the acknowledgements."""
    start = time.monotonic()
    for i in range(0, len(payloads), chunk):
        part = payloads[i : i + chunk]
        futures = [await producer.send(topic, value, key=key) for key, value in part]
        await asyncio.gather(*futures)
        if rate:
            ahead = (i + len(part)) / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return len(payloads)


def encode_events(events: Sequence[dict[str, Any]], key_field: str | None = "card") -> list[tuple[bytes | None, bytes]]:
    """``(key, value)`` pairs: the JSON event, keyed by its ``key_field`` (by default the card:
    the card stream's entity, so that a card's payments share a partition)."""
    return [(str(e[key_field]).encode() if key_field and key_field in e else None, orjson.dumps(e)) for e in events]


def file_payloads(path: Path, key_field: str | None = "card") -> list[tuple[bytes | None, bytes]]:
    """``(key, value)`` pairs replaying a JSON-lines file: every non-blank line is sent as it is
    (bytes unchanged, bad lines too: a replay of what a topic held), keyed by its
    ``key_field`` when the line is an object that has it.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "e.jsonl"
        >>> _ = p.write_text('{"card": "c1", "amount": 3}\\n\\nnot json\\n')
        >>> file_payloads(p)
        [(b'c1', b'{"card": "c1", "amount": 3}'), (None, b'not json')]
    """
    out: list[tuple[bytes | None, bytes]] = []
    with path.open("rb") as fh:
        for line in fh:
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            key = None
            if key_field:
                with contextlib.suppress(orjson.JSONDecodeError):
                    event = orjson.loads(value)
                    if isinstance(event, dict) and event.get(key_field) is not None:
                        key = str(event[key_field]).encode()
            out.append((key, value))
    return out


async def send_events(
    client_kwargs: dict[str, Any],
    topic: str,
    events: Sequence[dict[str, Any]],
    *,
    rate: float | None = None,
    key_field: str | None = "card",
) -> int:
    """JSON-encode events (keyed by ``key_field``) and send them."""
    return await send_raw(client_kwargs, topic, encode_events(events, key_field), rate=rate)


async def stream_forever(
    client_kwargs: dict[str, Any],
    topic: str,
    *,
    rate: float,
    anomaly_rate: float,
    seed: int = 0,
    block: int = 2000,
    on_block: Callable[[list[dict[str, Any]], Any], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Send blocks of one continuing card stream (:class:`CardStream`: the same cards, a clock
    that runs on) until ``stop`` is set."""
    producer = make_producer(client_kwargs)
    await producer.start()
    stream = CardStream(seed=seed, anomaly_rate=anomaly_rate, start_ts=time.time())
    try:
        while stop is None or not stop.is_set():
            events, labels = stream.next(block)
            if on_block is not None:
                res = on_block(events, labels)
                if asyncio.iscoroutine(res):
                    await res
            await send_with(producer, topic, encode_events(events), rate=rate)
    finally:
        await producer.stop()
