"""End-to-end throughput and latency of the worker against raw aiokafka passthroughs, one broker.

    python -m bench.throughput                                  # its own local broker
    python -m bench.throughput --events 150000 --sweep --variants ncae,ae --java
    python -m bench.throughput --events 60000 --sweep --variants ncae,ae --plot throughput.png

A topic (4 partitions) is pre-filled with N synthetic card transactions (200-300 bytes of
JSON). Then, in the same run and on the same records, each of these drains it completely:

* **raw, per record**: an aiokafka consumer -> producer passthrough, one ``send()`` per
  record and one future per record, manual commits;
* **raw, batched**: the same client used in batch mode: ``getmany``, then per fetched
  partition one ``create_batch()`` filled and one ``send_batch()`` (the upper bound of what
  the client does in Python);
* **worker** (one per ``--variants`` model): ``stream-ae worker`` with the all-scores topic
  on, so it produces a record per input as the passthroughs do (plus anomaly records).

All three keep the worker's discipline: one batch's acknowledgements and commit in flight
while the next batch is fetched; a batch is produced only after the one before is committed.
The passthroughs also fetch and compress as the worker does (its fetch sizes, and LZ4 by
the fast compressor: :mod:`stream_ae.kafka.compression`).
Figures are events/s from the first batch committed to the last (the worker's from its
metrics). ``--java`` adds Kafka's own ``ProducerPerformance`` and ``ConsumerPerformance``
(kafka-tools, resolved with Maven like the broker) on records of the same size, as a
reference. Latency: events are produced at a fixed rate while a worker runs; per anomaly
record, ``detected_at`` minus the Kafka record timestamp (p50 / p99).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from bench.environment import bench_environment, publish_bench_model
from stream_ae.kafka.admin import ensure_topics
from stream_ae.kafka.compression import use_fast_lz4
from stream_ae.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES, event_fetch_options
from stream_ae.kafka.local import resolve_jars
from stream_ae.tools.produce import encode_events, send_raw
from stream_ae.tools.synthetic import transactions
from stream_ae.tools.worker_process import WorkerProcess, worker_env

Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
PARTITIONS = 4


async def fill(bootstrap: str, topic: str, n: int, partitions: int = PARTITIONS) -> int:
    """Pre-fill ``topic``; returns the mean record size in bytes."""
    await ensure_topics({"bootstrap_servers": bootstrap}, {topic: partitions})
    events, _ = transactions(n, seed=42, anomaly_rate=0.005)
    payloads = encode_events(events)
    await send_raw({"bootstrap_servers": bootstrap}, topic, payloads, chunk=5000)
    return round(np.mean([len(v) for _, v in payloads]))


async def _passthrough(
    bootstrap: str,
    topic: str,
    n: int,
    batch: int,
    send: Callable[[AIOKafkaProducer, str, Fetched], Awaitable[list[Any]]],
) -> float:
    out = f"{topic}.raw-out-{time.time_ns()}"
    await ensure_topics({"bootstrap_servers": bootstrap}, {out: PARTITIONS})
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{time.time_ns()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
        **event_fetch_options(DEFAULT_MAX_MESSAGE_BYTES, batch),  # the worker's fetch sizes
    )
    use_fast_lz4()  # the worker's LZ4 (stream_ae.kafka.compression)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type="lz4", max_batch_size=1_000_000
    )
    await consumer.start()
    await producer.start()

    async def acknowledge_and_commit(futures: list[Any], offsets: dict[Any, int]) -> None:
        await asyncio.gather(*futures)
        await consumer.commit(offsets)

    seen, first, start, in_flight = 0, 0, None, None
    try:
        while seen < n:
            got = await consumer.getmany(timeout_ms=50, max_records=batch)
            if not got:
                continue
            if in_flight is not None:
                await in_flight  # every batch before this one is committed now
                if start is None:
                    start, first = time.perf_counter(), seen
            futures = await send(producer, out, got)
            offsets = {tp: msgs[-1].offset + 1 for tp, msgs in got.items()}
            in_flight = asyncio.ensure_future(acknowledge_and_commit(futures, offsets))
            seen += sum(len(m) for m in got.values())
        if in_flight is not None:
            await in_flight
        assert start is not None
        return (n - first) / (time.perf_counter() - start)
    finally:
        await consumer.stop()
        await producer.stop()


async def _send_each(producer: AIOKafkaProducer, out: str, got: Fetched) -> list[Any]:
    return [await producer.send(out, m.value, key=m.key) for msgs in got.values() for m in msgs]


async def _send_batches(producer: AIOKafkaProducer, out: str, got: Fetched) -> list[Any]:
    futures = []
    for tp, msgs in got.items():
        builder = producer.create_batch()
        for m in msgs:
            if builder.append(key=m.key, value=m.value, timestamp=None) is None:
                futures.append(await producer.send_batch(builder, out, partition=tp.partition))
                builder = producer.create_batch()
                builder.append(key=m.key, value=m.value, timestamp=None)
        futures.append(await producer.send_batch(builder, out, partition=tp.partition))
    return futures


def raw_passthrough(bootstrap: str, topic: str, n: int, batch: int, batched: bool) -> float:
    return asyncio.run(_passthrough(bootstrap, topic, n, batch, _send_batches if batched else _send_each))


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


def worker_throughput(
    bootstrap: str,
    registry: Path,
    topic: str,
    n: int,
    batch: int,
    wait_ms: int,
    log: Path,
    figures: dict[str, float] | None = None,
) -> float:
    """Events/s from the first committed batch to the last, by the worker's own metrics
    (scraped every 0.2 s: scraping is work for the worker too). ``figures`` receives the
    entity state's: changelog records written and entities held."""
    worker = start_worker(bootstrap, registry, topic, batch, wait_ms, log)
    try:
        deadline = time.monotonic() + 600
        while (first := worker.scored()) == 0 and time.monotonic() < deadline:
            if not worker.alive:
                raise RuntimeError(f"the worker exited; see {log}")
            time.sleep(0.01)
        start = time.time()
        while worker.scored() < n and time.monotonic() < deadline:
            time.sleep(0.2)
        m = worker.metrics()
        if figures is not None:
            figures["changelog"] = m.get("stream_ae_changelog_records_total", 0.0)
            figures["held"] = sum(v for k, v in m.items() if k.startswith("stream_ae_entities{"))
            figures["anomalies"] = sum(v for k, v in m.items() if k.startswith("stream_ae_anomalies_total"))
        return (n - first) / (m["stream_ae_last_batch_timestamp_seconds"] - start)
    finally:
        worker.stop()


def java_reference(bootstrap: str, n: int, record_bytes: int) -> dict[str, float]:
    """Records/s of Kafka's own perf tools on this broker (acks=all, lz4, records of the same size)."""
    libs = resolve_jars(artifact="kafka-tools")
    topic = f"java-perf-{time.time_ns()}"
    asyncio.run(ensure_topics({"bootstrap_servers": bootstrap}, {topic: PARTITIONS}))
    cp = f"{libs}/*"
    produce = subprocess.run(
        ["java", "-cp", cp, "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
         "--num-records", str(n), "--record-size", str(record_bytes), "--throughput", "-1",
         "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "compression.type=lz4"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    consume = subprocess.run(
        ["java", "-cp", cp, "org.apache.kafka.tools.ConsumerPerformance", "--topic", topic,
         "--messages", str(n), "--bootstrap-server", bootstrap, "--timeout", "60000"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    produced = float(re.findall(r"([\d.]+) records/sec", produce.stdout)[-1])
    header, row = consume.stdout.strip().splitlines()[-2:]
    consumed = float(dict(zip(header.split(", "), row.split(", "), strict=False))["nMsg.sec"])
    return {"producer": produced, "consumer": consumed}


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
    asyncio.run(ensure_topics({"bootstrap_servers": bootstrap}, {topic: PARTITIONS}))
    worker = start_worker(bootstrap, registry, topic, batch, wait_ms, log)
    try:
        time.sleep(4)  # group join
        return asyncio.run(_latencies(bootstrap, topic, rate, 10.0))
    finally:
        worker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--sweep", action="store_true", help="batch sizes 256, 1024, 4096 x waits 5, 50 ms")
    ap.add_argument("--batch", type=int, default=2048, help="batch size without --sweep")
    ap.add_argument("--variants", default="ncae", help="the workers' models, comma-separated (ncae, ae, ...)")
    ap.add_argument("--java", action="store_true", help="add Kafka's own perf tools as a reference")
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s for the latency run")
    ap.add_argument("--plot", type=Path, help="also draw throughput against batch size and the latency percentiles")
    args = ap.parse_args()
    rows: list[tuple[int, int, dict[str, float]]] = []
    variants = args.variants.split(",")
    with bench_environment(args.bootstrap, "stream-ae-bench-", variant=variants[0]) as env:
        bootstrap, work = env.bootstrap, env.work
        registries = {variants[0]: env.registry}
        for v in variants[1:]:
            registries[v] = publish_bench_model(work / f"models-{v}", v)
        topic = f"bench-{time.time_ns()}"
        size = asyncio.run(fill(bootstrap, topic, args.events))
        print(f"device: {env.fitted.detector.device}; events: {args.events:,} of {size} bytes; broker: {bootstrap}")
        if args.java:
            java = java_reference(bootstrap, args.events, size)
            print(f"Java perf tools: producer {java['producer']:,.0f} rec/s, consumer {java['consumer']:,.0f} rec/s")
        configs = [(b, w) for b in (256, 1024, 4096) for w in (5, 50)] if args.sweep else [(args.batch, 50)]
        for batch, wait in configs:
            each = raw_passthrough(bootstrap, topic, args.events, batch, batched=False)
            batched = raw_passthrough(bootstrap, topic, args.events, batch, batched=True)
            line = f"batch {batch:5d} wait {wait:3d} ms: raw per record {each:9,.0f} | raw batched {batched:9,.0f}"
            rates = {"raw per record": each, "raw batched": batched}
            for v in variants:
                w = worker_throughput(bootstrap, registries[v], topic, args.events, batch, wait, work / "worker.log")
                line += f" | worker {v} {w:9,.0f} ({w / each:.2f} / {w / batched:.2f})"
                rates[f"worker {v}"] = w
            rows.append((batch, wait, rates))
            print(line + " ev/s (worker / raw per record, / raw batched)")
        lat = latency(bootstrap, env.registry, f"{topic}-lat", 2048, 50, args.rate, work / "worker.log")
        if len(lat):
            print(
                f"latency at {args.rate:,.0f} ev/s (batch 2048, wait 50 ms, {variants[0]}), "
                f"{len(lat)} anomaly records: "
                f"p50 {np.percentile(lat, 50) * 1000:.1f} ms, p99 {np.percentile(lat, 99) * 1000:.1f} ms"
            )
        if args.plot is not None:
            plot(args.plot, rows, lat, args.rate, variants[0])
            print(f"plot: {args.plot}")


def plot(path: Path, rows: list[tuple[int, int, dict[str, float]]], lat: np.ndarray, rate: float, variant: str) -> None:
    """Events/s against the batch size (one line per path, at the longest wait), and the
    end-to-end latency percentiles of the latency run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tp, lp) = plt.subplots(1, 2, figsize=(11, 4))
    wait = max(w for _, w, _ in rows)
    chosen = sorted((b, r) for b, w, r in rows if w == wait)
    for name in chosen[0][1]:
        tp.plot([b for b, _ in chosen], [r[name] for _, r in chosen], "o-", label=name)
    tp.set_xscale("log", base=2)
    tp.set_xlabel(f"batch size (wait {wait} ms)")
    tp.set_ylabel("events/s")
    tp.set_title("throughput, one broker, 4 partitions")
    tp.legend(fontsize=8)
    if len(lat):
        levels = [50, 90, 99, 99.9]
        lp.bar([f"p{q:g}" for q in levels], [float(np.percentile(lat, q)) * 1000 for q in levels], color="tab:blue")
        lp.set_ylabel("ms, record timestamp to anomaly record")
        lp.set_title(f"latency at {rate:,.0f} events/s ({variant}, batch 2048)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
