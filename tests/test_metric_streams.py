"""Metric streams end to end offline: the synthetic host metrics, their faults, and what the
post-score stage makes of them against raw scores (the protocol of trainer.host_metrics)."""

from __future__ import annotations

import numpy as np

from stream_ae.tools.metrics_stream import FAULT_KINDS, HostMetrics
from trainer.host_metrics import evaluate_host_metrics


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


def test_the_score_likelihood_finds_the_faults_raw_scores_miss_without_flooding() -> None:
    """12 hosts, three days of training, a week with about three faults per host."""
    report = evaluate_host_metrics(hosts=12, train_hours=72, test_days=7, seed=1, faults_per_host_week=3.0)
    published, raw = report["published"], report["raw"]
    print(f"\n[metrics] {report['faults']} faults; published {published}; raw {raw}")
    assert report["faults"] >= 20
    assert published["found_share"] >= 0.6, published
    assert published["found"] >= 2 * raw["found"], "the per-host likelihood sees what one raw threshold cannot"
    assert published["false_incidents_per_host_week"] <= 1.5
