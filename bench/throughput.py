"""End-to-end throughput and latency of one worker vs a raw aiokafka passthrough, same broker.

    python -m bench.throughput                      # starts its own local broker
    python -m bench.throughput --events 200000 --sweep

Throughput: a topic is pre-filled with N synthetic events; (a) a raw aiokafka consumer ->
producer passthrough with manual commits, pipelined like the worker (one batch's acks and
commit in flight while the next is fetched: what the hardware and client reach) and (b) a
``stream-ae worker`` process (writing the all-scores topic, so it also produces one record per
input, plus anomalies) each drain it completely; figures are events/s from the first
record read to the last one committed (worker: read off its metrics). Latency: events are
produced at a fixed rate while the worker runs; per anomaly record, ``detected_at`` minus the
Kafka record timestamp (p50 / p99).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.environment import bench_environment
from stream_ae.kafka_admin import ensure_topics
from stream_ae.produce import encode_events, send_raw
from stream_ae.synthetic import transactions
from stream_ae.worker_process import WorkerProcess, worker_env


async def fill(bootstrap: str, topic: str, n: int, partitions: int = 4) -> None:
    await ensure_topics({"bootstrap_servers": bootstrap}, {topic: partitions})
    events, _ = transactions(n, seed=42, anomaly_rate=0.005)
    await send_raw({"bootstrap_servers": bootstrap}, topic, encode_events(events), chunk=5000)


async def raw_passthrough(bootstrap: str, topic: str, n: int, batch: int) -> float:
    out = f"{topic}.raw-out"
    await ensure_topics({"bootstrap_servers": bootstrap}, {out: 1})
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{time.time_ns()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type="lz4")
    await consumer.start()
    await producer.start()

    async def acknowledge_and_commit(futures: list[Any], offsets: dict[Any, int]) -> None:
        await asyncio.gather(*futures)
        await consumer.commit(offsets)

    # the worker's discipline: one batch's acknowledgements and commit in flight while the next
    # batch is fetched; it is produced only after the one before is committed
    seen, start, in_flight = 0, None, None
    try:
        while seen < n:
            got = await consumer.getmany(timeout_ms=50, max_records=batch)
            if not got:
                continue
            start = start or time.perf_counter()
            if in_flight is not None:
                await in_flight
            futures = [await producer.send(out, m.value, key=m.key) for msgs in got.values() for m in msgs]
            offsets = {tp: msgs[-1].offset + 1 for tp, msgs in got.items()}
            in_flight = asyncio.ensure_future(acknowledge_and_commit(futures, offsets))
            seen += sum(len(m) for m in got.values())
        if in_flight is not None:
            await in_flight
        assert start is not None
        return n / (time.perf_counter() - start)
    finally:
        await consumer.stop()
        await producer.stop()


def start_worker(bootstrap: str, registry: Path, topic: str, batch: int, wait_ms: int, log: Path) -> WorkerProcess:
    """A worker in a fresh consumer group that writes a record per input to the all-scores
    topic, so it produces as much as the raw passthrough does (plus anomaly records)."""
    env = worker_env(
        bootstrap,
        registry,
        topic,
        STREAM_AE_SCORES_TOPIC=f"{topic}.scores",
        STREAM_AE_GROUP_ID=f"w-{time.time_ns()}",
        STREAM_AE_APP_ID=f"bench-{time.time_ns()}",
        STREAM_AE_BATCH_MAX_SIZE=str(batch),
        STREAM_AE_BATCH_MAX_WAIT_MS=str(wait_ms),
        STREAM_AE_LOG_LEVEL="WARNING",
    )
    return WorkerProcess(env, log).start(timeout_s=120)


def worker_throughput(bootstrap: str, registry: Path, topic: str, n: int, batch: int, wait_ms: int, log: Path) -> float:
    worker = start_worker(bootstrap, registry, topic, batch, wait_ms, log)
    try:
        deadline = time.monotonic() + 600
        while worker.scored() == 0 and time.monotonic() < deadline:
            if not worker.alive:
                raise RuntimeError(f"the worker exited; see {log}")
            time.sleep(0.02)
        start = time.perf_counter()
        first = worker.scored()
        while worker.scored() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return (n - first) / (time.perf_counter() - start)
    finally:
        worker.stop()


async def _latencies(bootstrap: str, topic: str, rate: float, seconds: float) -> np.ndarray:
    n = int(rate * seconds)
    events, _ = transactions(n, seed=7, anomaly_rate=0.01, id_prefix="lat")
    await send_raw(
        {"bootstrap_servers": bootstrap}, topic, encode_events(events), rate=rate, chunk=max(1, int(rate / 20))
    )
    await asyncio.sleep(3)
    consumer = AIOKafkaConsumer(f"{topic}.anomalies", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    lat: list[float] = []
    try:
        while True:
            got = await consumer.getmany(timeout_ms=2000, max_records=100_000)
            if not got:
                break
            for msgs in got.values():
                for m in msgs:
                    rec = orjson.loads(m.value)
                    if str(rec["event_id"]).startswith("lat"):
                        lat.append(rec["detected_at"] - rec["event_time"])
    finally:
        await consumer.stop()
    return np.asarray(lat)


def latency(bootstrap: str, registry: Path, topic: str, batch: int, wait_ms: int, rate: float, log: Path) -> np.ndarray:
    asyncio.run(ensure_topics({"bootstrap_servers": bootstrap}, {topic: 4}))
    worker = start_worker(bootstrap, registry, topic, batch, wait_ms, log)
    try:
        time.sleep(4)  # group join
        return asyncio.run(_latencies(bootstrap, topic, rate, 10.0))
    finally:
        worker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--sweep", action="store_true", help="sweep batch size and max wait")
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s for the latency run")
    args = ap.parse_args()
    with bench_environment(args.bootstrap, "stream-ae-bench-") as env:
        bootstrap, registry, work = env.bootstrap, env.registry, env.work
        topic = f"bench-{time.time_ns()}"
        asyncio.run(fill(bootstrap, topic, args.events))
        print(f"device: {env.fitted.detector.device}; events: {args.events:,}; broker: {bootstrap}")
        configs = [(b, w) for b in (256, 1024, 4096) for w in (5, 50)] if args.sweep else [(2048, 50)]
        for batch, wait in configs:
            raw = asyncio.run(raw_passthrough(bootstrap, topic, args.events, batch))
            wrk = worker_throughput(bootstrap, registry, topic, args.events, batch, wait, work / "worker.log")
            print(
                f"batch {batch:5d} wait {wait:3d} ms: raw passthrough {raw:10,.0f} ev/s | "
                f"worker {wrk:10,.0f} ev/s | ratio {wrk / raw:.2f}"
            )
        lat = latency(bootstrap, registry, f"{topic}-lat", 2048, 50, args.rate, work / "worker.log")
        if len(lat):
            print(
                f"latency at {args.rate:,.0f} ev/s (batch 2048, wait 50 ms), {len(lat)} anomaly records: "
                f"p50 {np.percentile(lat, 50) * 1000:.1f} ms, p99 {np.percentile(lat, 99) * 1000:.1f} ms"
            )


if __name__ == "__main__":
    main()
