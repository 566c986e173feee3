"""``stream-ae trainer``: refresh the model from live traffic, gate it, publish, announce.

One run: read the last ``trainer_window_events`` events of the input topics straight from
Kafka (no consumer group: it never disturbs the workers' offsets), drop the ones the champion
flags (optional), train a challenger (optionally warm-started from the champion), compare
both on a held-out slice, and publish the challenger only when it is not worse. Runs happen
every ``trainer_interval_s`` and when a worker reports score drift on the control topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stream_ae.artifacts import ArtifactError, LoadedModel
from stream_ae.features import Event, FeatureEncoder
from stream_ae.kafka.admin import ensure_topics
from stream_ae.models import AutoencoderDetector, DegenerateDataError
from stream_ae.registry import Registry, announcement_bytes
from stream_ae.settings import Settings
from trainer.train import FittedModel, fit_events

log = logging.getLogger("stream_ae.trainer")


class TrainerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.runs = Counter("stream_ae_trainer_runs_total", "Training runs", ["trigger", "result"], registry=r)
        self.duration = Histogram(
            "stream_ae_trainer_run_seconds", "Duration of a run", registry=r, buckets=(1, 5, 15, 30, 60, 120, 300, 900)
        )
        self.publishes = Counter("stream_ae_trainer_publishes_total", "Models published", registry=r)
        self.rejections = Counter("stream_ae_trainer_rejections_total", "Challengers kept back", ["reason"], registry=r)
        self.last_success = Gauge(
            "stream_ae_trainer_last_success_timestamp_seconds", "End of the last successful run", registry=r
        )
        self.figure = Gauge(
            "stream_ae_trainer_model_figure", "Gate figures of the last run", ["model", "figure"], registry=r
        )
        self.window = Gauge("stream_ae_trainer_window_events", "Events used by the last run", registry=r)


@dataclass
class GateFigures:
    """How a model does on the held-out slice of recent traffic."""

    false_alarm_rate: float
    recon_loss: float
    separation_auc: float  # normal rows vs generated anomalies (corrupted copies)

    def as_dict(self) -> dict[str, float]:
        return {
            "false_alarm_rate": self.false_alarm_rate,
            "recon_loss": self.recon_loss,
            "separation_auc": self.separation_auc,
        }


@dataclass
class RunResult:
    published: str | None
    reason: str
    challenger: GateFigures | None = None
    champion: GateFigures | None = None
    n_events: int = 0


def _auc(neg: NDArray[Any], pos: NDArray[Any]) -> float:
    """ROC-AUC by ranks (ties averaged): P(score(pos) > score(neg))."""
    scores = np.concatenate([neg, pos])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks of ties
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def generated_anomalies(X: NDArray[np.float32], seed: int) -> NDArray[np.float32]:
    """Corrupted copies of held-out rows: one feature moved by 6 robust units, or 30 % of
    the features swapped with another row's."""
    rng = np.random.default_rng(seed)
    out = X.copy()
    n, d = X.shape
    half = n // 2
    cols = rng.integers(0, d, half)
    scale = np.maximum(np.percentile(X, 75, 0) - np.percentile(X, 25, 0), np.std(X, 0) + 1e-6)
    out[np.arange(half), cols] += rng.choice([-6.0, 6.0], half) * scale[cols]
    swap = rng.random((n - half, d)) < 0.3
    donors = X[rng.integers(0, n, n - half)]
    out[half:] = np.where(swap, donors, X[half:])
    return out


def gate_figures(
    model_detector: AutoencoderDetector, encoder: FeatureEncoder, events: list[Event], seed: int = 0
) -> GateFigures:
    X = encoder.encode(events).X
    scores = model_detector.score_samples(X)
    fa = float((scores > model_detector.threshold_).mean())
    recon = float(model_detector.component_scores(X)["recon"].mean())
    anomalies = model_detector.score_samples(generated_anomalies(X, seed))
    return GateFigures(fa, recon, _auc(scores, anomalies))


def compare(
    challenger: GateFigures, champion: GateFigures | None, target_rate: float, n_holdout: int
) -> tuple[bool, str]:
    """Publish unless the challenger is worse: false alarms above what the target allows, or
    clearly less separation than the champion."""
    # allowed false-alarm rate: the target plus three binomial standard errors on the holdout
    allowed = target_rate + 3 * np.sqrt(target_rate * (1 - target_rate) / max(n_holdout, 1)) + 1 / max(n_holdout, 1)
    if challenger.false_alarm_rate > max(allowed, champion.false_alarm_rate if champion else 0.0):
        return False, "false_alarm_rate"
    if champion is not None and challenger.separation_auc < champion.separation_auc - 0.02:
        return False, "separation"
    return True, "better_or_equal" if champion else "first_model"


class TrainerService:
    """The long-running trainer. ``run_once`` is one gated refresh; ``run`` loops."""

    def __init__(self, settings: Settings, metrics: TrainerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or TrainerMetrics()
        self.registry = Registry(settings.model_dir)
        self._trigger = asyncio.Event()
        self._last_run = 0.0

    async def read_window(self) -> list[Event]:
        """The newest ``trainer_window_events`` decodable events across the input topics."""
        s = self.settings
        consumer = AIOKafkaConsumer(**s.kafka_client_kwargs(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [
                TopicPartition(t, p) for t in s.input_topics for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            if not parts:
                await consumer._client.force_metadata_update()  # topic just created
                parts = [
                    TopicPartition(t, p) for t in s.input_topics for p in sorted(consumer.partitions_for_topic(t) or ())
                ]
            consumer.assign(parts)
            ends = await consumer.end_offsets(parts)
            begins = await consumer.beginning_offsets(parts)
            per = max(1, s.trainer_window_events // max(len(parts), 1))
            for tp in parts:
                consumer.seek(tp, max(begins[tp], ends[tp] - per))
            events: list[Event] = []
            remaining = {tp for tp in parts if ends[tp] > max(begins[tp], ends[tp] - per)}
            while remaining:
                got = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                if not got:
                    break
                for tp, msgs in got.items():
                    for m in msgs:
                        with contextlib.suppress(orjson.JSONDecodeError):
                            value = orjson.loads(m.value or b"")
                            if isinstance(value, dict):
                                events.append(value)
                    if msgs and msgs[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            return events
        finally:
            await consumer.stop()

    def _champion(self) -> LoadedModel | None:
        try:
            return self.registry.load(device="cpu")
        except ArtifactError as exc:
            log.info("no champion (%s)", exc)
            return None

    def train_and_gate(self, events: list[Event], trigger: str = "manual") -> RunResult:
        """Blocking part of a run (executor): filter, fit, gate, publish."""
        s = self.settings
        champion = self._champion()
        if champion is not None and champion.encoder is not None and s.trainer_exclude_anomalies:
            batch = champion.encoder.encode(events)
            keep = batch.ok[champion.detector.score_samples(batch.X) <= champion.detector.threshold_]
            dropped = len(events) - len(keep)
            events = [events[i] for i in keep.tolist()]
            log.info("left out %d events the champion flags or cannot encode", dropped)
        if len(events) < 500:
            return RunResult(None, "too_few_events", n_events=len(events))
        rng = np.random.default_rng(int(time.time()))
        order = rng.permutation(len(events))
        n_hold = max(200, len(events) // 5)
        holdout = [events[i] for i in order[:n_hold]]
        train = [events[i] for i in order[n_hold:]]
        warm = champion.detector if (champion is not None and s.trainer_warm_start) else None
        schema = champion.encoder.schema if champion is not None and champion.encoder is not None else None
        try:
            fitted: FittedModel = fit_events(
                train,
                schema=schema,
                variant=s.variant,
                target_rate=s.target_false_alarm_rate,
                device=s.trainer_device,
                bf16=s.trainer_bf16,
                init_from=warm,
                max_steps=1500,
            )
        except DegenerateDataError as exc:  # one replayed event, a stuck producer: keep the champion
            self.metrics.rejections.labels(reason="degenerate_window").inc()
            log.warning("window of %d events rejected (degenerate_window): %s", len(events), exc)
            return RunResult(None, "degenerate_window", n_events=len(events))
        assert fitted.encoder is not None
        chal = gate_figures(fitted.detector, fitted.encoder, holdout)
        champ = (
            gate_figures(champion.detector, champion.encoder, holdout)
            if champion is not None and champion.encoder is not None
            else None
        )
        ok, reason = compare(chal, champ, s.target_false_alarm_rate, n_hold)
        for name, fig in (("challenger", chal), ("champion", champ)):
            if fig is not None:
                for k, v in fig.as_dict().items():
                    self.metrics.figure.labels(model=name, figure=k).set(v)
        self.metrics.window.set(len(events))
        if not ok:
            self.metrics.rejections.labels(reason=reason).inc()
            log.warning("challenger kept back (%s): challenger %s vs champion %s", reason, chal, champ)
            return RunResult(None, reason, chal, champ, len(events))
        version = time.strftime("v%Y%m%dT%H%M%S", time.gmtime()) + f"-{rng.integers(1000):03d}"
        metrics = {
            "trigger": trigger,
            "window_events": len(events),
            "challenger": chal.as_dict(),
            "champion": champ.as_dict() if champ else None,
        }
        self.registry.publish(
            lambda tmp: fitted.save(tmp, version=version, metrics=metrics), version, keep=s.registry_keep
        )
        self.metrics.publishes.inc()
        log.info("published %s (%s)", version, reason)
        return RunResult(version, reason, chal, champ, len(events))

    async def announce(self, version: str) -> None:
        info = next(v for v in self.registry.versions() if v.version == version)
        producer = AIOKafkaProducer(**self.settings.kafka_client_kwargs(), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                self.settings.control_topic, announcement_bytes(info, self.registry.root), key=b"model"
            )
        finally:
            await producer.stop()

    async def run_once(self, trigger: str = "manual") -> RunResult:
        started = time.monotonic()
        try:
            events = await self.read_window()
            result = await asyncio.get_running_loop().run_in_executor(None, self.train_and_gate, events, trigger)
            if result.published:
                await self.announce(result.published)
            self.metrics.runs.labels(trigger=trigger, result="published" if result.published else "kept").inc()
            self.metrics.last_success.set(time.time())
            return result
        except Exception:
            self.metrics.runs.labels(trigger=trigger, result="failed").inc()
            log.exception("training run failed")
            raise
        finally:
            self.metrics.duration.observe(time.monotonic() - started)
            self._last_run = time.monotonic()

    async def _watch_drift(self) -> None:
        """Set the trigger when a worker reports drift above the bound on the control topic."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            s.control_topic, **s.kafka_client_kwargs(), group_id=None, auto_offset_reset="latest"
        )
        await consumer.start()
        try:
            async for msg in consumer:
                with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
                    note = orjson.loads(msg.value or b"")
                    drift = isinstance(note, dict) and note.get("type") == "drift"
                    if drift and float(note.get("psi", 0)) >= s.drift_psi_threshold:
                        log.info("drift reported (PSI %.3f): retraining", note["psi"])
                        self._trigger.set()
        finally:
            await consumer.stop()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        s = self.settings
        stop = stop or asyncio.Event()
        await ensure_topics(s.kafka_client_kwargs(), {s.control_topic: 1}, compacted={s.control_topic})
        start_http_server(s.trainer_metrics_port, addr=s.metrics_host, registry=self.metrics.registry)
        watcher = asyncio.create_task(self._watch_drift())
        try:
            trigger = "startup"
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    await self.run_once(trigger)
                self._trigger.clear()
                waiter = asyncio.create_task(self._trigger.wait())
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait(
                    {waiter, stopper}, timeout=s.trainer_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                stopper.cancel()
                trigger = "drift" if waiter in done else "schedule"
                # a drift storm must not retrain back to back
                await asyncio.sleep(max(0.0, s.trainer_min_interval_s - (time.monotonic() - self._last_run)))
        finally:
            watcher.cancel()
