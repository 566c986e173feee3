"""Prometheus metrics of the worker, in their own registry (no process-global state).

Names follow Prometheus conventions: counters end in ``_total``, durations are ``_seconds``.
:meth:`WorkerMetrics.serve` exposes them over HTTP on the configured host and port.
"""

from __future__ import annotations

import urllib.request
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SCORE_QUANTILES = (0.5, 0.9, 0.99, 0.999)


class WorkerMetrics:
    """Everything the worker exports. ``registry`` can be scraped in-process by tests."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.consumed = Counter(
            "stream_ae_events_consumed_total", "Records read from input topics", ["topic"], registry=r
        )
        self.scored = Counter("stream_ae_events_scored_total", "Events scored", registry=r)
        self.dead_lettered = Counter(
            "stream_ae_events_dead_lettered_total", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.anomalies = Counter("stream_ae_anomalies_total", "Anomaly records published", ["topic"], registry=r)
        self.incidents = Counter(
            "stream_ae_incidents_opened_total", "Incidents opened: an entity's alarm after a quiet cooldown", registry=r
        )
        self.batches = Counter("stream_ae_batches_total", "Micro-batches processed", registry=r)
        self.batch_errors = Counter(
            "stream_ae_batch_errors_total", "Batches that failed and were retried", ["stage"], registry=r
        )
        self.batch_size = Histogram(
            "stream_ae_batch_size", "Records per micro-batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.scoring_seconds = Histogram(
            "stream_ae_scoring_seconds", "Device scoring time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "stream_ae_batch_seconds", "Fetch-to-commit time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.end_to_end_seconds = Histogram(
            "stream_ae_end_to_end_seconds",
            "Event timestamp to anomaly record acknowledged by Kafka",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.threshold = Gauge("stream_ae_threshold", "Calibrated score threshold in use", registry=r)
        self.model_info = Gauge(
            "stream_ae_model_info", "The model version in use (value 1)", ["version", "variant"], registry=r
        )
        self.model_created = Gauge(
            "stream_ae_model_created_timestamp_seconds", "Creation time of the model in use", registry=r
        )
        self.model_swaps = Counter("stream_ae_model_swaps_total", "Hot swaps", ["result"], registry=r)
        self.score_quantile = Gauge(
            "stream_ae_score_quantile", "Score quantiles over the recent window", ["quantile"], registry=r
        )
        self.drift_psi = Gauge(
            "stream_ae_score_drift_psi", "PSI of recent scores vs the calibration distribution", registry=r
        )
        self.false_alarm_estimate = Gauge(
            "stream_ae_false_alarm_rate_estimate",
            "Share of the drift window's scores above the threshold (the live flag rate: false alarms plus anomalies)",
            registry=r,
        )
        self.target_false_alarm = Gauge(
            "stream_ae_target_false_alarm_rate", "The false-alarm rate the model in use is calibrated to", registry=r
        )
        self.lag = Gauge("stream_ae_consumer_lag", "Records behind the log end", ["topic", "partition"], registry=r)
        self.assigned = Gauge("stream_ae_assigned_partitions", "Partitions assigned to this worker", registry=r)
        self.device = Gauge("stream_ae_device_info", "Device used for scoring (value 1)", ["device"], registry=r)
        self.last_batch = Gauge(
            "stream_ae_last_batch_timestamp_seconds", "When the last batch was committed", registry=r
        )
        self.kafka_up = Gauge("stream_ae_kafka_up", "1 while the last Kafka call succeeded", registry=r)
        self.entities = Gauge("stream_ae_entities", "Entities held in memory", ["partition"], registry=r)
        self.entity_evictions = Counter(
            "stream_ae_entity_evictions_total", "Entities dropped from memory", ["reason"], registry=r
        )
        self.entity_replays = Counter(
            "stream_ae_entity_replays_total", "Events at or before their entity's last applied offset", registry=r
        )
        self.changelog_records = Counter(
            "stream_ae_changelog_records_total", "Entity changelog records written (tombstones included)", registry=r
        )
        self.restore_seconds = Histogram(
            "stream_ae_entity_restore_seconds",
            "Time to restore one partition's entity state from its changelog",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.entities_restored = Counter(
            "stream_ae_entities_restored_total", "Entities restored from the changelog", registry=r
        )
        self._recent: deque[np.ndarray] = deque()
        self._recent_n = 0

    def set_model(self, version: str, variant: str, threshold: float, created: float, target_rate: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, variant=variant).set(1)
        self.threshold.set(threshold)
        self.model_created.set(created)
        self.target_false_alarm.set(target_rate)

    def observe_scores(self, scores: np.ndarray, window: int) -> None:
        """Keep the last ``window`` scores (a batch's array is appended, the oldest dropped);
        the gauges over them are :meth:`summarise_scores`'s."""
        if len(scores):
            self._recent.append(scores)
            self._recent_n += len(scores)
            while self._recent and self._recent_n - len(self._recent[0]) >= window:
                self._recent_n -= len(self._recent.popleft())

    def summarise_scores(self) -> np.ndarray:
        """Set the score quantile gauges from the window; return the window."""
        recent = np.concatenate(list(self._recent)) if self._recent else np.zeros(0)
        if len(recent):
            for q, v in zip(SCORE_QUANTILES, np.quantile(recent, SCORE_QUANTILES), strict=True):
                self.score_quantile.labels(quantile=str(q)).set(float(v))
        return recent

    def serve(self, host: str, port: int) -> Any:
        """Start the HTTP exporter; returns the server (``shutdown()`` stops it)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """Read a Prometheus text exposition over HTTP (raises OSError when it cannot be reached);
    see :func:`parse_exposition` for the keys."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse_exposition(response.read().decode())


def parse_exposition(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition: ``name{label="value",...}`` -> value, parsed by
    ``prometheus_client``'s own parser (escapes, timestamps and label values with spaces), the
    labels in the order the exposition gives them, a sample without labels as its bare name.

    Example:
        >>> parse_exposition(
        ...     '# TYPE dlq_total counter\\n'
        ...     'dlq_total{reason="bad json",topic="a\\\\"b"} 3 1700000000000\\n'
        ...     'up 1\\n'
        ... )
        {'dlq_total{reason="bad json",topic="a\\\\"b"}': 3.0, 'up': 1.0}
    """
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def _escape(value: str) -> str:
    """A label value as the exposition writes it (backslash, double quote and newline escaped)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
