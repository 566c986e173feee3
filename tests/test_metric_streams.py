"""Metric streams end to end offline: the synthetic host metrics, their faults, and what the
post-score stage makes of them against raw scores (the protocol of trainer.host_metrics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_ae.features.featurize import featurize_file
from stream_ae.tools.metrics_stream import FAULT_KINDS, METRICS_SCHEMA, HostMetrics
from trainer.host_metrics import evaluate_host_metrics
from trainer.train import fit_events


def test_hosts_differ_and_faults_are_labelled() -> None:
    stream = HostMetrics(hosts=20, seed=3, faults_per_host_week=7.0)
    events, labels = stream.next(hours=7 * 24)
    cpu = np.asarray([e["cpu"] for e in events]).reshape(-1, 20)
    normal = (labels.reshape(-1, 20) < 0).all(axis=1)
    spread = np.diff(cpu[normal], axis=0).std(axis=0)
    assert spread.max() > 4 * spread.min(), "noise levels differ per host: one raw threshold cannot fit all"
    assert {f.kind for f in stream.faults} == set(FAULT_KINDS)
    for k, f in enumerate(stream.faults):
        rows = np.flatnonzero(labels == k)
        assert len(rows) and all(events[r]["host"] == f.host and f.start <= events[r]["ts"] <= f.end for r in rows)


@pytest.mark.slow  # trains a model on 10,000 rows and scores 30,000
def test_the_score_likelihood_finds_the_faults_raw_scores_miss_without_flooding() -> None:
    """12 hosts, three days of training, a week with about three faults per host."""
    report = evaluate_host_metrics(hosts=12, train_hours=72, test_days=7, seed=1, faults_per_host_week=3.0)
    published, raw = report["published"], report["raw"]
    print(f"\n[metrics] {report['faults']} faults; published {published}; raw {raw}")
    assert report["faults"] >= 20
    assert published["found_share"] >= 0.6, published
    assert published["found"] >= 2 * raw["found"], "the per-host likelihood sees what one raw threshold cannot"
    assert published["false_incidents_per_host_week"] <= 1.0, "the target: one false incident per host and week"


def test_the_metric_demo_judges_alarms_and_incidents_against_the_injected_faults() -> None:
    """The live view's arithmetic: an alarm inside a fault (or its hour after) finds it, once,
    with its time to detection; an incident outside every fault is a false one."""
    from stream_ae.tools.metric_demo import FaultTally
    from stream_ae.tools.metrics_stream import Fault

    t0 = 1_764_547_200.0
    tally = FaultTally(hosts=2, sim_start=t0, sim_now=t0 + 7 * 86_400)
    tally.faults = [Fault("host-000", "spike", t0 + 3600, t0 + 3900), Fault("host-001", "stuck", t0 + 7200, t0 + 9000)]
    tally.on_alarm("host-000", t0 + 3600 + 300)
    tally.on_alarm("host-000", t0 + 3600 + 600)  # the same fault again: its first alarm counts
    tally.on_alarm("host-001", t0 + 3600)  # another host's fault window: no
    tally.on_incident("host-000", t0 + 3900)
    tally.on_incident("host-001", t0 + 86_400)  # outside every fault
    s = tally.summary()
    assert (s["faults_closed"], s["found"], s["median_minutes_to_detect"]) == (2, 1, 5.0)
    assert s["incidents"] == 2 and s["false_incidents_per_host_week"] == 0.5


def test_the_metric_demo_skips_records_it_cannot_read(tmp_path: Path) -> None:
    """A tombstone on the compacted incidents topic (an operator's clean-up) or a record of
    another layout reaches the live view as ``{}``: it counts nothing and stops nothing (a
    rerun in a home an earlier version wrote once crashed the view with a KeyError)."""
    from rich.console import Console

    from stream_ae.tools.metric_demo import ANOMALIES, INCIDENTS, MetricDemo

    demo = MetricDemo(tmp_path, hosts=2, speed=60.0, faults_per_host_week=1.0, console=Console(quiet=True))
    demo.on_record(INCIDENTS, {})
    demo.on_record(INCIDENTS, {"schema": "stream-ae.incident/1", "entity": "host-000"})
    demo.on_record(ANOMALIES, {})
    assert demo.faults.summary()["incidents"] == 0
    demo.on_record(INCIDENTS, {"status": "opened", "entity": "host-000", "opened_at": demo.stream.t})
    assert demo.faults.summary()["incidents"] == 1


@pytest.mark.slow  # trains a model on 6,900 rows
def test_one_chance_repeat_is_not_a_frozen_metric() -> None:
    """``repeats`` counts rows, so the model scales it by at least one row: a float reading
    that repeats once by chance (the column 0 in all but a few training rows) stays under the
    threshold, a reading frozen for seven rows goes over it."""
    train, _ = HostMetrics(hosts=8, seed=5, faults_per_host_week=0.0).next(hours=72)
    fitted = fit_events(train, schema=METRICS_SCHEMA, target_rate=1e-3, device="cpu", seed=0, max_steps=400)
    assert fitted.encoder is not None
    col = fitted.encoder.feature_names.index("entity.cpu_repeats12")
    X = featurize_file(fitted.encoder, train).batch.X
    rows = X[X[:, col] == 0][-500:]
    assert (X[:, col] > 0).mean() < 0.005, "chance repeats are rare in training"
    once, frozen = rows.copy(), rows.copy()
    once[:, col], frozen[:, col] = 1.0, 6.0
    threshold = fitted.detector.threshold_
    assert (fitted.detector.score_samples(once) > threshold).mean() < 0.05
    assert (fitted.detector.score_samples(frozen) > threshold).mean() > 0.95
