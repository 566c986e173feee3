"""What the worker reports about itself beyond its batches: score drift (to Prometheus and,
past the bound, to the trainer on the control topic), consumer lag, broker reachability."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_ae.operation.metrics import WorkerMetrics
from stream_ae.pipeline import ActiveModel
from stream_ae.scoring.threshold import population_stability_index
from stream_ae.settings import Settings

log = logging.getLogger("stream_ae.worker")


async def bootstrap_reachable(servers: str, timeout_s: float = 2.0) -> bool:
    """True when a TCP connection to any bootstrap server opens (the client's own metadata
    is cached and does not tell an outage)."""
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout_s)
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True
    return False


class HealthReporter:
    """Drift, lag and reachability; the worker's timers call it."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.psi = 0.0
        self.kafka_reachable = True
        self._drift_reported = 0.0

    def observe_scores(self, scores: np.ndarray) -> None:
        """Add a committed batch's scores to the drift window (cheap: the summaries over the
        window are :meth:`summarise`'s, on a timer, not per batch)."""
        self.metrics.observe_scores(scores, self.settings.drift_window_events)

    def summarise(self, model: ActiveModel | None) -> None:
        """Quantiles, PSI and the estimated false-alarm rate of the drift window (the window's
        share above the threshold: without labels it counts true anomalies too, a fraction of
        a per cent on most streams). The worker calls it once a second: the gauges are scraped
        every few seconds, and summarising 20,000 scores after every batch was 4 % of a busy
        worker's time."""
        recent = self.metrics.summarise_scores()
        threshold = model.loaded.detector.threshold if model is not None else None
        if threshold is not None and len(recent) >= min(1000, self.settings.drift_window_events):
            self.psi = population_stability_index(threshold.reference_quantiles, recent)
            self.metrics.drift_psi.set(self.psi)
            self.metrics.false_alarm_estimate.set(float((recent > threshold.value).mean()))

    async def report_drift(self, producer: AIOKafkaProducer | None, model: ActiveModel | None) -> None:
        """Tell the trainer (control topic) when scores drift past the configured PSI bound,
        at most once per ``drift_report_interval_s``."""
        s = self.settings
        now = time.monotonic()
        if self.psi < s.drift_psi_threshold or producer is None or model is None:
            return
        if now - self._drift_reported < s.drift_report_interval_s:
            return
        self._drift_reported = now
        note = {"type": "drift", "psi": self.psi, "version": model.version, "at": time.time()}
        with contextlib.suppress(Exception):
            if s.processing_guarantee == "exactly_once":
                async with producer.transaction():
                    await producer.send(s.control_topic, orjson.dumps(note), key=b"drift")
            else:
                await producer.send_and_wait(s.control_topic, orjson.dumps(note), key=b"drift")
            log.warning("score drift: PSI %.3f >= %.3f reported to the trainer", self.psi, s.drift_psi_threshold)

    async def probe_kafka(self) -> None:
        self.kafka_reachable = await bootstrap_reachable(self.settings.bootstrap_servers)
        self.metrics.kafka_up.set(1 if self.kafka_reachable else 0)

    async def update_lag(self, consumer: AIOKafkaConsumer | None) -> None:
        if consumer is None or not self.kafka_reachable:
            return
        for tp in consumer.assignment():
            # a rebalance can take ``tp`` away while this loop awaits: aiokafka then asserts in
            # ``highwater`` (seen crashing a worker through this timer); the lag is for later
            with contextlib.suppress(Exception):
                high = consumer.highwater(tp)
                pos = await asyncio.wait_for(consumer.position(tp), 1.0)
                if high is not None:
                    self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - pos))
