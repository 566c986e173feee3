"""Fault injection on the real broker: a broker restart, hostile input, overload. (Worker
crashes, SIGKILL in both guarantees, are ``tests/test_entity_state.py``'s: they check every
score and the entity state too.)

Each test prints its loss/duplication figures (``-s`` shows them; docs/benchmarks/figures.md lists them).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from bench.overload import run_overload
from stream_ae.kafka.admin import ensure_topics
from stream_ae.kafka.local import LocalKafka
from stream_ae.tools.audit import audit_delivery
from stream_ae.tools.produce import send_events, send_raw
from stream_ae.tools.synthetic import CardStream, transactions
from stream_ae.tools.worker_process import WorkerProcess, worker_env
from tests.streaming import card_model, run, wait_for
from tests.test_entity_state import assert_same_scores, offline_scores, worker_scores
from tests.test_worker import malformed

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _coverage(bootstrap: str, topic: str, expected: int) -> tuple[int, int]:
    """(lost, duplicated) input records according to the committed scores topic."""
    audit = run(audit_delivery(bootstrap, [f"{topic}.scores"], expected))
    return audit.lost, audit.duplicated


def test_broker_restart_is_survived(registry: Path, topic_name: str, tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", die_with_parent=True)
    broker.start()
    bootstrap = broker.bootstrap_servers
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        stream = CardStream(seed=12, anomaly_rate=0.01)  # the same cards before and after: state held across
        first, _ = stream.next(6_000)
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, first))
        assert wait_for(lambda: worker.scored() >= len(first), 60)
        broker.stop()
        saw_outage = wait_for(lambda: worker.metrics().get("stream_ae_kafka_up") == 0.0, timeout_s=20)
        time.sleep(3)
        broker = LocalKafka(tmp_path / "kafka", die_with_parent=True)
        broker.start()  # same port and log dir
        assert wait_for(lambda: worker.metrics().get("stream_ae_kafka_up") == 1.0, timeout_s=60)
        second, _ = stream.next(6_000)
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, second))
        lost, duplicated = _coverage(bootstrap, topic_name, len(first) + len(second))
        alive = worker.proc is not None and worker.proc.poll() is None
        scores = worker_scores(bootstrap, topic_name, len(first) + len(second))
    finally:
        worker.stop()
        broker.stop()
    print(f"\n[fault] broker restart: {len(first) + len(second)} events, lost {lost}, duplicated {duplicated}")
    assert saw_outage, "the outage shows in stream_ae_kafka_up"
    assert alive and lost == 0
    assert_same_scores(scores, offline_scores(card_model(1, 0.0), first + second))  # the entity state held


def test_ten_thousand_hostile_messages(bootstrap: str, topic_name: str, registry: Path, tmp_path: Path) -> None:
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_MAX_MESSAGE_BYTES="65536")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        assert worker.proc is not None
        rss_before = worker.rss_mb()
        rng = random.Random(3)
        hostile = [(k, v) for k, v, _ in malformed(800)][:8_800]
        hostile += [(None, rng.randbytes(rng.randint(1, 200))) for _ in range(1_200)]  # random bytes
        normal, _ = transactions(10_000, seed=14)
        payloads = [(e["card"].encode(), orjson.dumps(e)) for e in normal] + hostile  # keyed by the entity
        rng.shuffle(payloads)  # interleaved
        run(send_raw({"bootstrap_servers": bootstrap}, topic_name, payloads))

        def done() -> bool:
            m = worker.metrics()
            dead = sum(v for k, v in m.items() if k.startswith("stream_ae_events_dead_lettered_total"))
            return m.get("stream_ae_events_scored_total", 0) + dead >= len(payloads)

        assert wait_for(done, timeout_s=120)
        m = worker.metrics()
        rss_after = worker.rss_mb()
        alive = worker.proc.poll() is None
    finally:
        worker.stop()
    dead = sum(v for k, v in m.items() if k.startswith("stream_ae_events_dead_lettered_total"))
    print(f"\n[fault] poison: {len(hostile)} hostile + {len(normal)} normal; dead-lettered {dead:.0f}; "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MB")  # fmt: skip
    assert alive
    assert m["stream_ae_events_scored_total"] + dead == len(payloads)
    assert dead >= len(hostile) - 10  # random bytes may, very rarely, be a valid scoreable event
    assert m["stream_ae_events_scored_total"] >= len(normal)
    assert rss_after - rss_before < 400, "memory stays bounded"


def test_overload_at_twice_capacity_recovers_without_loss(
    bootstrap: str, topic_name: str, registry: Path, tmp_path: Path
) -> None:
    """Produce at 2x the worker's measured capacity: lag grows, memory stays bounded, then the
    worker catches up and every event is scored (bench/overload.py is the longer soak)."""
    r = run_overload(bootstrap, registry, topic_name, tmp_path / "worker.log", factor=2.0, seconds=15, batch=32)
    print(f"\n[fault] overload: {r}")
    assert r.produced_rate >= 1.5 * r.capacity, "the producer did not outrun the worker: no overload was tested"
    assert r.peak_lag >= 20 * 32, "consumer lag (the lag alert's metric) grows while the worker is overrun"
    assert r.alive and r.recovered and r.final_lag == 0, "the worker catches up and lag returns to 0"
    assert r.lost == 0
    assert r.rss_peak_mb - r.rss_start_mb < 300, "memory stays bounded while the backlog grows"
