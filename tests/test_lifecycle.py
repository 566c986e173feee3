"""Model lifecycle on the real broker: hot swap without loss, refusal of bad models, drift."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream_ae.kafka.admin import ensure_topics
from stream_ae.lifecycle.registry import Registry
from stream_ae.tools.audit import read_all
from stream_ae.tools.produce import send_events
from stream_ae.tools.synthetic import CardStream, transactions
from stream_ae.tools.worker_process import WorkerProcess, worker_env
from tests.streaming import publish_model, run, trainer_settings, wait_for
from trainer.service import TrainerService

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_hot_swap_drops_nothing_and_refuses_a_tampered_model(bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    publish_model(registry, "v1")
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 4}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    trainer = TrainerService(trainer_settings(bootstrap, registry, topic_name))
    events, _ = transactions(24_000, seed=3)
    try:
        sender = threading.Thread(
            target=run, args=(send_events({"bootstrap_servers": bootstrap}, topic_name, events, rate=4000),)
        )
        sender.start()  # a steady stream for about six seconds
        assert wait_for(lambda: worker.scored() > 4000, timeout_s=30)
        publish_model(registry, "v2", seed=2)
        run(trainer.announce("v2"))
        assert wait_for(lambda: worker.health().get("model_version") == "v2", timeout_s=30), "v2 swapped in"
        sender.join()

        # a tampered v3: announced, refused; v2 keeps serving
        publish_model(registry, "v3", seed=4)
        weights = Registry(registry).path_of("v3") / "weights.safetensors"
        raw = bytearray(weights.read_bytes())
        raw[-3] ^= 0xFF
        weights.write_bytes(bytes(raw))
        run(trainer.announce("v3"))
        assert wait_for(lambda: worker.metrics().get('stream_ae_model_swaps_total{result="rejected"}', 0) >= 1)
        more, _ = transactions(1000, seed=9)
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, more))
        total = len(events) + len(more)
        assert wait_for(lambda: worker.scored() >= total, timeout_s=60)
        assert worker.health()["model_version"] == "v2"
        assert worker.metrics()['stream_ae_model_swaps_total{result="swapped"}'] == 1
    finally:
        worker.stop()

    scores = [orjson.loads(r.value) for r in run(read_all(bootstrap, [f"{topic_name}.scores"], until=total))]
    coords = Counter((s["source"]["partition"], s["source"]["offset"]) for s in scores)
    assert len(coords) == total, "no event dropped across the swap"
    assert max(coords.values()) == 1, "no event scored twice across the swap"
    versions = Counter(s["model_version"] for s in scores)
    assert set(versions) == {"v1", "v2"} and versions["v2"] >= len(more)


def test_drift_triggers_a_retrain_that_restores_the_false_alarm_rate(
    bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    registry = tmp_path / "models"
    publish_model(registry, "v1")
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    env = worker_env(
        bootstrap,
        registry,
        topic_name,
        STREAM_AE_DRIFT_WINDOW_EVENTS="3000",
        STREAM_AE_DRIFT_PSI_THRESHOLD="0.25",
        STREAM_AE_DRIFT_REPORT_INTERVAL_S="5",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    settings = trainer_settings(
        bootstrap,
        registry,
        topic_name,
        trainer_interval_s=3600,
        trainer_min_interval_s=0,
        trainer_window_events=12_000,
        trainer_warmup_events=8_000,  # the 2,000 cards seen about four times each before training rows
        trainer_metrics_port=0,
        # 1 %: the 12,000-event window gives 2,400 calibration rows, 24 above the threshold. At
        # 0.1 % it held 2.4 (a tail fit's guess), and the gate once kept the challenger back on
        # a 0.38 % holdout rate; the trainer now refuses such a window (window_too_small)
        target_false_alarm_rate=0.01,
        trainer_warm_start=False,
    )
    trainer = TrainerService(settings)
    stop = asyncio.Event()
    # normal traffic moves: every amount is e times larger than at training time. 1,000 payments
    # a day, so that the trainer's 12,000-event window spans every weekday: at the stream's
    # default 2,500 a day it spanned five days, and the new model flagged 0.7-0.9 % of the new
    # normal, the payments on the weekdays it never saw (the cyclic day-of-week features)
    stream = CardStream(seed=21, amount_shift=1.0, events_per_day=1_000)

    async def scenario() -> list[dict[str, object]]:
        trainer_task = asyncio.create_task(trainer.run(stop))
        for _ in range(300):  # the startup run finds too few events and publishes nothing
            if trainer.metrics.runs.labels(trigger="startup", result="kept")._value.get() >= 1:
                break
            await asyncio.sleep(0.1)
        shifted, _ = stream.next(20_000)
        await send_events({"bootstrap_servers": bootstrap}, topic_name, shifted)
        for _ in range(120):
            if worker.health().get("model_version") not in (None, "v1"):
                break
            await asyncio.sleep(1)
        stream.id_prefix = "after"  # the same cards, their clock running on
        fresh, _ = stream.next(10_000)
        await send_events({"bootstrap_servers": bootstrap}, topic_name, fresh)
        await asyncio.sleep(1)
        stop.set()
        await trainer_task
        return fresh  # type: ignore[return-value]

    try:
        fresh = run(scenario())
        # one read can miss a worker busy with the fresh events (CI once read {} here after the
        # swap had happened): wait for an answer rather than take one
        assert wait_for(lambda: bool(worker.health()), timeout_s=30), worker.log_tail()
        new_version = worker.health().get("model_version")
        m = worker.metrics()
        assert new_version not in (None, "v1"), f"drift led to a retrain and a swap\n{worker.log_tail()}"
        assert trainer.metrics.runs.labels(trigger="drift", result="published")._value.get() >= 1
        assert m["stream_ae_score_drift_psi"] >= 0.0
        assert wait_for(lambda: worker.scored() >= 30_000, timeout_s=60)
    finally:
        worker.stop()
    out = [orjson.loads(r.value) for r in run(read_all(bootstrap, [f"{topic_name}.anomalies"], until=1))]
    fresh_ids = {e["id"] for e in fresh}
    after = [a for a in out if a["event_id"] in fresh_ids and a["model_version"] == new_version]
    rate = len(after) / len(fresh)
    print(f"\n[drift] {new_version}: false-alarm rate on the new normal {rate:.4f} (target 0.01)")
    # margin: about 100 of the 10,000 fresh events expected, with a standard deviation near 22
    # (the count's 10 and the 2,400-row calibration's 20 %): twice the target is 4.5 of them
    assert rate <= 2 * 0.01, f"false-alarm rate on the new normal {rate:.4f}"
