"""What entity state costs: worker throughput with the card stream's entity features against
the same worker stateless, restore rate, changelog volume and memory per entity.

    python -m bench.entities                          # its own local broker
    python -m bench.entities --events 300000 --restore 1000000

* **throughput**: a 4-partition topic is pre-filled with ``--events`` card payments keyed by
  card, drawn from a pool of 10,000 cards, of 1,000,000 cards, and of 10,000 cards where 1 %
  of them send half of the payments (a hot-key skew); for each, a worker whose model declares
  the entity features (``CARD_SCHEMA``) and one whose model does not (``CARD_SCHEMA_STATELESS``)
  drain it, all-scores topic on (``bench.throughput``'s method). Also the changelog records
  the stateful worker wrote per input event, and the entities it held.
* **hot path** (``--hot-path-only`` runs it alone): the same three streams through
  ``pipeline.process_batch`` in-process (no Kafka, one torch thread, 100,000 events in batches
  of 2,048, each card's events in one of ``--hot-partitions`` partitions, 4 as the workers'
  topic has; before 2026-12-05 all in one), stateful against stateless, with the share of
  events each model flags: what the entity state costs the hot path itself, apart from the
  client and the broker.
* **models**: for each stream, the stateful and the stateless model are trained on a day of
  payments drawn the same way (same pool, skew and payments per day, another seed), as the
  trainer would refresh them from live traffic: both then flag about their target rate, and
  the ratio is what the state costs. (A shorter training stream, a few hours of that day,
  left the stateful model flagging 0.5-1 % of the day's payments: its card velocities vary
  with the hour.) ``--generic-model`` scores every
  stream with the one model trained on the demo's traffic (2,000 cards, 2,500 payments a
  day) instead: the stateful one then sees thirty or more payments per card per day, flags
  10-50 % of the events, and the ratio also measures the anomaly records.
* **restore**: ``--restore`` entities' changelog records are written to one partition, then
  read back as a worker restores an assigned partition (entities/s and seconds).
* **memory**: bytes per entity held (rows and key index), by tracemalloc, in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import orjson
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.environment import InputRecord, bench_environment, fit_bench_model, publish_as_bench, publish_bench_model
from bench.throughput import worker_throughput
from stream_ae.entities import changelog
from stream_ae.entities.restore import restore_partition
from stream_ae.entities.step import EntityBatch
from stream_ae.entities.store import EntityStore
from stream_ae.kafka.admin import ensure_topics
from stream_ae.kafka.limits import restore_fetch_options
from stream_ae.kafka.publisher import BatchPublisher
from stream_ae.lifecycle.artifacts import load_artifact
from stream_ae.lifecycle.registry import Registry
from stream_ae.output.route import Topics
from stream_ae.pipeline import ActiveModel, process_batch
from stream_ae.tools.produce import encode_events, send_raw
from stream_ae.tools.synthetic import CARD_ENTITY, CardStream


def card_stream(n: int, cards: int, hot: bool, seed: int = 3, per_day: int | None = None) -> list[dict[str, object]]:
    """``n`` payments at ``per_day`` a simulated day (default ``n``: within one day, so that no
    card outlives the 7-day TTL and every card stays held)."""
    stream = CardStream(seed=seed, cards=cards, events_per_day=per_day or n)
    if hot:  # 1 % of the cards send half of the payments
        p = np.full(cards, 0.5 / (cards - cards // 100))
        p[: cards // 100] = 0.5 / (cards // 100)
        stream.card_p = p / p.sum()
    return stream.next(n)[0]


def stream_models(root: Path, events: int, generic: bool) -> dict[str, tuple[Path, Path]]:
    """Per stream of :data:`CONFIGS`, registries of a stateful and a stateless model (version
    ``bench``): trained on earlier traffic of the same kind as the stream's (another seed, the
    same pool, skew and rate), or with ``generic`` the one benchmark model for all."""
    if generic:
        pair = (publish_bench_model(root / "stateful"), publish_bench_model(root / "stateless", stateless=True))
        return {name: pair for name, _, _ in CONFIGS}
    out: dict[str, tuple[Path, Path]] = {}
    for i, (name, cards, hot) in enumerate(CONFIGS):
        train = card_stream(events, cards, hot, seed=40 + i)  # a day of it
        stateful, stateless = (
            publish_as_bench(root / f"{i}-{kind}", fit_bench_model(train, stateless=kind == "stateless"))
            for kind in ("stateful", "stateless")
        )
        out[name] = (stateful, stateless)
    return out


async def fill(bootstrap: str, topic: str, events: list[dict[str, object]]) -> None:
    await ensure_topics({"bootstrap_servers": bootstrap}, {topic: 4})
    await send_raw({"bootstrap_servers": bootstrap}, topic, encode_events(events), chunk=5000)


def hot_path(models_of: dict[str, tuple[Path, Path]], events: int, partitions: int = 4) -> None:
    """The three streams through ``process_batch`` in-process, stateful and stateless; each
    card's payments in one of ``partitions`` partitions (by a hash of the card), a batch holding
    every partition's share as a worker's does."""
    torch.set_num_threads(1)
    topics = Topics("out", "dead", "scores")
    for name, cards, hot in CONFIGS:
        stateful, stateless = models_of[name]
        models = {
            "stateful": ActiveModel(load_artifact(Registry(stateful).path_of("bench")), 3),
            "stateless": ActiveModel(load_artifact(Registry(stateless).path_of("bench")), 3),
        }
        stream = card_stream(events, cards, hot)
        keys = [str(e["card"]).encode() for e in stream]
        records = sorted(
            (
                InputRecord("in", zlib.crc32(k) % partitions, i, k, orjson.dumps(e))
                for i, (k, e) in enumerate(zip(keys, stream, strict=True))
            ),
            key=lambda r: (r.offset // 2048, r.partition),  # each batch of 2,048 grouped by partition, as fetched
        )
        line = []
        rates = {}
        for kind, model in models.items():
            store = EntityStore(model.entity) if model.entity is not None else None
            flagged = 0
            t0 = time.perf_counter()
            for i in range(0, len(records), 2048):
                flagged += process_batch(records[i : i + 2048], model, topics, 1_000_000, store).n_anomalies
            rates[kind] = len(records) / (time.perf_counter() - t0)
            line.append(f"{kind} {rates[kind]:9,.0f} ev/s (flags {100 * flagged / len(records):.2f} %)")
        print(f"hot path  {name:22s} " + " | ".join(line) + f" | ratio {rates['stateful'] / rates['stateless']:.2f}")


CONFIGS = (("10k cards", 10_000, False), ("1M cards", 1_000_000, False), ("10k cards, hot keys", 10_000, True))


def throughput(bootstrap: str, models_of: dict[str, tuple[Path, Path]], work: Path, events: int) -> None:
    for name, cards, hot in CONFIGS:
        stateful, stateless = models_of[name]
        topic = f"ent-{time.time_ns()}"
        stream = card_stream(events, cards, hot)
        asyncio.run(fill(bootstrap, topic, stream))
        distinct = len({e["card"] for e in stream})
        figures: dict[str, float] = {}
        with_state = worker_throughput(bootstrap, stateful, topic, events, 2048, 50, work / "stateful.log", figures)
        plain: dict[str, float] = {}
        without = worker_throughput(bootstrap, stateless, topic, events, 2048, 50, work / "stateless.log", plain)
        print(
            f"{name:22s} {distinct:9,d} distinct: stateful {with_state:9,.0f} ev/s | stateless {without:9,.0f} ev/s | "
            f"ratio {with_state / without:.2f} | changelog records per event {figures['changelog'] / events:.2f} | "
            f"entities held {figures['held']:,.0f} | flagged {100 * figures['anomalies'] / events:.2f} % "
            f"(stateless {100 * plain['anomalies'] / events:.2f} %)"
        )


def memory_per_entity(n: int = 200_000) -> float:
    store = EntityStore(CARD_ENTITY)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for start in range(0, n, 4096):
        ids = np.arange(start, min(n, start + 4096))
        keys = [b"card-%d" % i for i in ids.tolist()]
        countries = {"country": np.full(len(ids), 3, np.uint32)}
        store.process(0, EntityBatch(keys, 1_790_000_000_000 + ids, ids, {}, countries))
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / len(store.tables[0])


async def restore_rate(bootstrap: str, n: int) -> tuple[float, float]:
    """Write ``n`` entities' changelog records to one partition, then restore it."""
    topic = f"restore-{time.time_ns()}"
    await ensure_topics({"bootstrap_servers": bootstrap}, {topic: 1}, compacted={topic})
    store = EntityStore(CARD_ENTITY)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1_000_000)
    await producer.start()
    publisher = BatchPublisher(producer, 1_000_000)
    try:
        for start in range(0, n, 20_000):
            ids = np.arange(start, min(n, start + 20_000))
            keys = [b"card-%d" % i for i in ids.tolist()]
            batch = EntityBatch(keys, 1_790_000_000_000 + ids, ids, {}, {"country": np.full(len(ids), 3, np.uint32)})
            _, delta = store.process(0, batch)
            k, v = changelog.encode(store.spec, store.dtype, delta)
            await asyncio.gather(*await publisher.publish(topic, k, v, partitions=[0] * len(k)))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(  # as the worker's restore consumer
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level="read_committed",
        **restore_fetch_options(),
    )
    await consumer.start()
    try:
        restored = await restore_partition(consumer, topic, 0, store.spec, store.dtype, committed=n)
    finally:
        await consumer.stop()
    assert len(restored.keys) == n, (len(restored.keys), n)
    return n / restored.seconds, restored.seconds


def main_restore_only(bootstrap: str | None, n: int) -> None:
    with bench_environment(bootstrap, "stream-ae-entities-") as env:
        rate, seconds = asyncio.run(restore_rate(env.bootstrap, n))
        print(f"restore: {n:,} entities in {seconds:.1f} s, {rate:,.0f} entities/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--restore", type=int, default=1_000_000, help="entities in the restore run")
    ap.add_argument("--restore-only", action="store_true")
    ap.add_argument("--hot-path-only", action="store_true")
    ap.add_argument("--hot-events", type=int, default=100_000, help="events per stream in the hot-path run")
    ap.add_argument(
        "--hot-partitions", type=int, default=4, help="input partitions in the hot-path run (the workers': 4)"
    )
    ap.add_argument(
        "--generic-model", action="store_true", help="score every stream with the demo-traffic model, not its own"
    )
    args = ap.parse_args()
    if args.restore_only:
        main_restore_only(args.bootstrap, args.restore)
        return
    if args.hot_path_only:
        with tempfile.TemporaryDirectory() as tmp:
            hot_path(
                stream_models(Path(tmp), args.hot_events, args.generic_model), args.hot_events, args.hot_partitions
            )
        return
    print(f"memory per entity (card features: 10-minute count, since_last, 16-slot novelty ring): "
          f"{memory_per_entity():,.0f} bytes")  # fmt: skip
    with bench_environment(args.bootstrap, "stream-ae-entities-") as env:
        rate, seconds = asyncio.run(restore_rate(env.bootstrap, args.restore))
        print(f"restore: {args.restore:,} entities in {seconds:.1f} s, {rate:,.0f} entities/s")
        hot_path(
            stream_models(env.work / "hot-path-models", args.hot_events, args.generic_model),
            args.hot_events,
            args.hot_partitions,
        )
        throughput(
            env.bootstrap, stream_models(env.work / "models", args.events, args.generic_model), env.work, args.events
        )


if __name__ == "__main__":
    main()
