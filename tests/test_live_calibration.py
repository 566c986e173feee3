"""The live false-alarm rate holds its target through retraining, measured by the producer's
labels as the demo measures it, with the trainer's window at its default size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream_ae.kafka.admin import ensure_topics
from stream_ae.tools.audit import read_all
from stream_ae.tools.produce import send_events
from stream_ae.tools.synthetic import CardStream
from stream_ae.tools.worker_process import WorkerProcess, worker_env
from tests.streaming import publish_model, run, trainer_settings, wait_for
from trainer.service import TrainerService

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
TARGET = 0.001


def test_the_live_false_alarm_rate_stays_in_band_over_two_refreshes(
    bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    registry = tmp_path / "models"
    publish_model(registry, "v1")
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 4}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    settings = trainer_settings(bootstrap, registry, topic_name, target_false_alarm_rate=TARGET, trainer_metrics_port=0)
    assert settings.trainer_window_events == 50_000, "the window at its default size"
    trainer = TrainerService(settings)
    stream = CardStream(seed=50, anomaly_rate=0.005)  # the demo's share of frauds
    labels: dict[str, int] = {}
    versions = ["v1"]
    sent = 0
    try:
        for phase, n in enumerate((70_000, 70_000, 80_000)):
            events, y = stream.next(n)
            labels.update((e["id"], int(v)) for e, v in zip(events, y.tolist(), strict=True))
            run(send_events({"bootstrap_servers": bootstrap}, topic_name, events))
            sent += n
            assert wait_for(lambda: worker.scored() >= sent, timeout_s=120)  # noqa: B023
            if phase < 2:
                result = run(trainer.run_once("schedule"))
                assert result.published, f"refresh {phase + 1} published nothing: {result.reason}"
                versions.append(result.published)
                assert wait_for(lambda: worker.health().get("model_version") == versions[-1], timeout_s=60)
    finally:
        worker.stop()

    inputs = run(read_all(bootstrap, [topic_name], until=sent))
    ids = {(r.partition, r.offset): orjson.loads(r.value)["id"] for r in inputs}
    scored: dict[str, str] = {}  # event id -> the version that scored it
    for r in run(read_all(bootstrap, [f"{topic_name}.scores"], until=sent)):
        s = orjson.loads(r.value)
        scored[ids[(s["source"]["partition"], s["source"]["offset"])]] = s["model_version"]
    anomalies = run(read_all(bootstrap, [f"{topic_name}.anomalies"], until=1))
    flagged = {orjson.loads(r.value)["event_id"] for r in anomalies}
    normal_by_version = Counter(v for i, v in scored.items() if labels[i] == 0)
    alarms_by_version = Counter(v for i, v in scored.items() if labels[i] == 0 and i in flagged)
    normal = sum(normal_by_version.values())
    rate = sum(alarms_by_version.values()) / normal
    by_version = {v: alarms_by_version[v] / normal_by_version[v] for v in versions if normal_by_version[v]}
    after = sum(alarms_by_version[v] for v in versions[1:]) / sum(normal_by_version[v] for v in versions[1:])
    frauds = [i for i, y in labels.items() if y == 1]
    recall = sum(1 for i in frauds if i in flagged) / len(frauds)
    print(f"\n[calibration] {normal:,} normal events, live false-alarm rate {rate:.5f} (target {TARGET}); "
          f"per version {by_version}; after the refreshes {after:.5f}; recall {recall:.3f}")  # fmt: skip
    assert normal >= 200_000 and len(versions) == 3
    assert 0.5 * TARGET <= rate <= 2 * TARGET, rate
    assert 0.5 * TARGET <= after <= 2 * TARGET, f"the retrained models keep the target: {after}"
