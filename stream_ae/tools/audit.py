"""Delivery audits: read output topics back and account for every input record.

Every scored event (on the all-scores topic) and every dead letter carries its input
coordinates in ``source``; an audit counts the distinct ``(topic, partition, offset)`` seen
against the number of input records. With at-least-once delivery a crash can repeat a
batch: ``duplicated`` counts those repeats, ``lost`` the input records never accounted for.

Example (a real broker needed):
    >>> audit = asyncio.run(audit_delivery("127.0.0.1:9092", ["events.scores", "events.dlq"], 10_000))  # doctest: +SKIP
    >>> audit.lost, audit.duplicated                                                               # doctest: +SKIP
    (0, 0)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord


async def read_all(
    bootstrap: str, topics: Iterable[str], *, until: int | None = None, idle_s: float = 3.0, timeout_s: float = 90.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of ``topics`` from the start: stop once ``until`` records arrived
    (and the topics stayed idle ``idle_s``), or after ``timeout_s``."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        start = last = time.monotonic()
        while time.monotonic() - start < timeout_s:
            got = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for msgs in got.values():
                out.extend(msgs)
            now = time.monotonic()
            if got:
                last = now
            elif (until is None or len(out) >= until) and now - last > idle_s:
                break
    finally:
        await consumer.stop()
    return out


@dataclass(frozen=True)
class DeliveryAudit:
    """How the ``expected`` input records show up in the output topics."""

    expected: int
    accounted: int  # distinct input records found
    records: int  # output records read

    @property
    def lost(self) -> int:
        return self.expected - self.accounted

    @property
    def duplicated(self) -> int:
        return self.records - self.accounted


async def audit_delivery(
    bootstrap: str, topics: Iterable[str], expected: int, *, idle_s: float = 4.0, timeout_s: float = 120.0
) -> DeliveryAudit:
    """Read ``topics`` (the all-scores topic, and the dead-letter topic when bad input is
    expected) and count each input coordinate in their records' ``source``."""
    records = await read_all(bootstrap, topics, until=expected, idle_s=idle_s, timeout_s=timeout_s)
    coords: Counter[tuple[str, int, int]] = Counter()
    for r in records:
        src = orjson.loads(r.value or b"{}")["source"]
        coords[(src["topic"], src["partition"], src["offset"])] += 1
    return DeliveryAudit(expected=expected, accounted=len(coords), records=sum(coords.values()))
