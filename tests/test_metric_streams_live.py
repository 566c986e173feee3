"""Metric streams on the real broker: a worker with the host-metrics model (per-host features
and the post-score stage) against the documented behaviour of a constant stream and of a
stream that stops and restarts after a gap longer than its ttl; the worker's published
scores equal the offline replay's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream_ae.alarms.stage import judge_rows
from stream_ae.features.featurize import featurize_file
from stream_ae.kafka.admin import ensure_topics
from stream_ae.lifecycle.registry import Registry
from stream_ae.tools.audit import read_all
from stream_ae.tools.metrics_stream import METRICS_SCHEMA, HostMetrics
from stream_ae.tools.produce import send_events
from stream_ae.tools.worker_process import WorkerProcess, worker_env
from tests.streaming import run, wait_for
from trainer.train import fit_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
STEP = 300.0


def rows(host: str, start: float, n: int, cpu: Any) -> list[dict[str, Any]]:
    values = np.broadcast_to(np.asarray(cpu, dtype=float), (n,))
    return [
        {
            "id": f"{host}-{start + i * STEP:.0f}",
            "ts": start + i * STEP,
            "host": host,
            "cpu": float(c),
            "latency_ms": 40.0,
        }
        for i, c in enumerate(values.tolist())
    ]


def test_a_constant_stream_stays_quiet_and_a_returning_host_warms_up_again(
    bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    train, _ = HostMetrics(hosts=4, seed=2, faults_per_host_week=0.0).next(hours=48)
    fitted = fit_events(train, schema=METRICS_SCHEMA, target_rate=1e-4, max_steps=300, device="cpu", seed=0)
    registry = tmp_path / "models"
    Registry(registry).publish(lambda tmp: fitted.save(tmp, version="metrics"), "metrics")
    assert METRICS_SCHEMA.entity is not None and METRICS_SCHEMA.entity.alarm is not None
    warmup = METRICS_SCHEMA.entity.alarm.warmup
    t0 = 1_765_000_000.0
    noisy = 30 + 3 * np.random.default_rng(0).standard_normal(400)
    steady = rows("steady", t0, 400, 30.0)  # the same value for 33 hours
    gone = rows("gappy", t0, 400, noisy)
    back = rows("gappy", t0 + 400 * STEP + 2 * 86_400, 60, noisy[:60])  # two days away: longer than its ttl
    events = sorted(steady + gone + back, key=lambda e: e["ts"])

    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    env = worker_env(
        bootstrap, registry, topic_name,
        STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores", STREAM_AE_INCIDENTS_TOPIC=f"{topic_name}.incidents",
    )  # fmt: skip
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, events, key_field="host"))
        assert wait_for(lambda: worker.scored() >= len(events), timeout_s=90), worker.log_tail()
    finally:
        worker.stop()
    inputs = run(read_all(bootstrap, [topic_name], until=len(events)))
    ids = {(r.partition, r.offset): orjson.loads(r.value)["id"] for r in inputs}
    scores = [orjson.loads(r.value) for r in run(read_all(bootstrap, [f"{topic_name}.scores"], until=len(events)))]
    published = {ids[(s["source"]["partition"], s["source"]["offset"])]: s["published"] for s in scores}
    anomalies = [orjson.loads(r.value) for r in run(read_all(bootstrap, [f"{topic_name}.anomalies"], idle_s=1.0))]

    feats = featurize_file(fitted.encoder, events)  # the offline replay, in send order
    alarms = judge_rows(
        feats,
        fitted.detector.score_samples(feats.batch.X),
        fitted.detector,
    )
    offline = {
        events[i]["id"]: p for i, p in zip(feats.batch.ok.tolist(), alarms.judged.published.tolist(), strict=True)
    }
    assert set(published) == set(offline)
    np.testing.assert_allclose([published[k] for k in offline], list(offline.values()), rtol=1e-4, atol=1e-4)

    assert not any(a["event"]["host"] == "steady" for a in anomalies), "a constant stream is its own normal"
    assert max(published[e["id"]] for e in steady) < alarms.threshold  # its hour of day still moves the raw score
    assert all(published[e["id"]] == 0.0 for e in steady[:warmup]), "no verdict in the warm-up"
    assert all(published[e["id"]] == 0.0 for e in back), "back after its ttl: a new host, a new warm-up"
    assert any(published[e["id"]] > 0.0 for e in gone[warmup:]), "judged once warm"
