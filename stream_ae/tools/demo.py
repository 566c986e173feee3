"""``stream-ae demo``: the whole stack on one machine, no Docker.

A local Kafka broker, an initial model trained on generated traffic, the worker and the
trainer as child processes, and a producer of card transactions with injected frauds. A live
terminal view shows throughput, anomalies and precision/recall against the producer's
hidden labels. A share of the published anomalies gets a verdict on the feedback topic from
those labels, delayed as chargebacks would be (:class:`Chargebacks`), and the trainer learns
from them: the view shows the labelled precision it measures. Ctrl-C (or ``--duration``)
stops every process it started, in order, within a few seconds; a second Ctrl-C kills them at
once. The broker, Prometheus, the worker and the trainer run in sessions of their own, so a
terminal's Ctrl-C reaches only the demo, which stops them. When Debian's ``prometheus`` is
installed, the demo runs it with the project's alert rules and shows the alerts firing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from stream_ae.input.source import Source
from stream_ae.input.verdicts import verdict_bytes, verdict_record
from stream_ae.kafka.admin import ensure_topics
from stream_ae.kafka.local import LocalKafka, free_port
from stream_ae.lifecycle.registry import Registry
from stream_ae.operation.metrics import scrape
from stream_ae.operation.runtime import on_stop_signal
from stream_ae.scoring.explain import describe
from stream_ae.tools.produce import stream_forever
from stream_ae.tools.prometheus_local import LocalPrometheus, PrometheusError
from stream_ae.tools.prometheus_local import available as prometheus_available
from stream_ae.tools.synthetic import CARD_SCHEMA, transactions

if TYPE_CHECKING:
    from trainer.train import FittedModel

FEEDBACK_TOPIC = "stream-ae.feedback"


@dataclass
class Tally:
    labels: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    injected: int = 0
    flagged: set[str] = field(default_factory=set)
    versions: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    sent_in_minute: dict[int, list[str]] = field(default_factory=dict)  # minute -> ids of the events sent in it

    def on_block(self, events: list[dict[str, Any]], labels: np.ndarray) -> None:
        minute = int((time.monotonic() - self.started) // 60)
        ids = self.sent_in_minute.setdefault(minute, [])
        for e, y in zip(events, labels.tolist(), strict=True):
            self.labels[e["id"]] = int(y)
            ids.append(e["id"])
        self.sent += len(events)
        self.injected += int(labels.sum())

    def minute(self, m: int) -> MinuteFigures:
        """The figures of the events sent in minute ``m`` (from 0), by the producer's labels."""
        sent = self.sent_in_minute.get(m, [])
        frauds = sum(self.labels[i] for i in sent)
        flagged = [i for i in sent if i in self.flagged]
        hits = sum(self.labels[i] for i in flagged)
        return MinuteFigures(m, len(sent) - frauds, frauds, len(flagged) - hits, hits)

    def precision_recall(self) -> tuple[float, float]:
        known = [i for i in self.flagged if i in self.labels]
        tp = sum(self.labels[i] for i in known)
        precision = tp / len(known) if known else float("nan")
        recall = tp / self.injected if self.injected else float("nan")
        return precision, recall


@dataclass(frozen=True)
class MinuteFigures:
    """One minute of the demo's traffic, judged by the producer's hidden labels: the live
    false-alarm rate (normal events flagged), recall (frauds flagged) and precision."""

    minute: int
    normal: int
    frauds: int
    false_alarms: int
    found: int

    @property
    def false_alarm_rate(self) -> float:
        return self.false_alarms / self.normal if self.normal else float("nan")

    @property
    def recall(self) -> float:
        return self.found / self.frauds if self.frauds else float("nan")

    @property
    def precision(self) -> float:
        flagged = self.found + self.false_alarms
        return self.found / flagged if flagged else float("nan")

    def line(self, target: float, version: str) -> str:
        """Example:
        >>> print(MinuteFigures(3, 119_400, 600, 120, 510).line(0.001, "v2").replace(" | ", "\\n"))
        minute 4: 120,000 events, 600 frauds
        false-alarm rate 0.00101 (1.01x target)
        recall 0.850
        precision 0.810
        model v2
        """
        return (
            f"minute {self.minute + 1}: {self.normal + self.frauds:,} events, {self.frauds:,} frauds | "
            f"false-alarm rate {self.false_alarm_rate:.5f} ({self.false_alarm_rate / target:.2f}x target) | "
            f"recall {self.recall:.3f} | precision {self.precision:.3f} | model {version}"
        )


@dataclass
class Chargebacks:
    """The demo's analysts: a share of the published anomalies gets a verdict from the
    producer's hidden label (a fraud confirmed, or a false alarm), ``delay_s`` later, as
    chargebacks and case reviews arrive after the fact."""

    share: float = 0.2
    delay_s: float = 20.0
    seed: int = 0
    pending: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=lambda: {"anomaly": 0, "normal": 0})

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def consider(self, record: dict[str, Any], label: int | None, now: float) -> None:
        if label is None or self._rng.random() >= self.share:
            return
        with contextlib.suppress(KeyError, ValueError):  # VerdictError is a ValueError
            verdict = verdict_record(
                str(record["event_id"]), "anomaly" if label else "normal", by="demo-chargebacks", at=now + self.delay_s,
                source=Source.from_dict(record.get("source")),
            )  # fmt: skip
            self.pending.append((now + self.delay_s, verdict))

    def due(self, now: float) -> list[dict[str, Any]]:
        ready = [v for t, v in self.pending if t <= now]
        self.pending = [(t, v) for t, v in self.pending if t > now]
        for v in ready:
            self.sent[v["label"]] += 1
        return ready


def _model_version(metrics: dict[str, float]) -> str:
    return next((k.split('version="')[1].split('"')[0] for k in metrics if k.startswith("stream_ae_model_info")), "-")


def scrape_port(port: int) -> dict[str, float]:
    try:
        return scrape(f"http://127.0.0.1:{port}/metrics", timeout_s=1.0)
    except OSError:
        return {}


TARGET_RATE = 0.001  # the demo's false-alarm target
REPORT_SETTLE_S = 15.0  # a minute's line waits this long past its end, for its events' anomaly records


class Demo:
    def __init__(self, home: Path, rate: float, anomaly_rate: float, console: Console, report: bool = False) -> None:
        self.home = home
        self.report = report
        self.partitions: dict[str, int] = {}  # the demo's topics and their partition counts
        self.report_lines: list[MinuteFigures] = []
        self.report_versions: list[str] = []  # the model in use at each closed minute
        self.rate, self.anomaly_rate = rate, anomaly_rate
        self.console = console
        self.broker = LocalKafka(home / "kafka", die_with_parent=True)
        self.registry = Registry(home / "models")
        self.metrics_port, self.web_port, self.trainer_port = free_port(), free_port(), free_port()
        self.children: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []  # of the children, for the closing line
        self.tally = Tally()
        self.chargebacks = Chargebacks()
        self.prometheus: LocalPrometheus | None = None
        self.last_anomaly = ""  # the newest anomaly record's top fields, as an analyst reads them
        self._verdicts: AIOKafkaProducer | None = None  # the chargebacks' producer, while the demo runs

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "STREAM_AE_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "STREAM_AE_MODEL_DIR": str(self.registry.root),
            "STREAM_AE_INPUT_TOPICS": "events",
            "STREAM_AE_METRICS_PORT": str(self.metrics_port),
            "STREAM_AE_WEB_PORT": str(self.web_port),
            "STREAM_AE_TRAINER_METRICS_PORT": str(self.trainer_port),
            "STREAM_AE_TRAINER_INTERVAL_S": os.environ.get("STREAM_AE_TRAINER_INTERVAL_S", "300"),
            "STREAM_AE_TARGET_FALSE_ALARM_RATE": str(TARGET_RATE),
            "STREAM_AE_FEEDBACK_TOPIC": FEEDBACK_TOPIC,
        }

    def spawn(self, name: str, *args: str) -> None:
        log = (self.home / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_ae.tools.cli", *args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append(proc)
        self.names.append(name)

    def start_broker(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.console.status("starting Kafka (first run: Maven resolves the broker's jars)…"):
            if self.broker.running_pid() is not None:
                self.broker.stop()
            self.broker.start()
        self.console.print(f"[green]✓[/] Kafka at {self.broker.bootstrap_servers}")

    def start_broker_and_model(
        self, topics: dict[str, int], compacted: set[str], training: str, version: str, fit: Callable[[], FittedModel]
    ) -> None:
        """Kafka with the demo's ``topics``, then the first model (``fit``, announced as
        ``training``) published as ``version`` unless the registry holds one already."""
        self.start_broker()
        asyncio.run(ensure_topics({"bootstrap_servers": self.broker.bootstrap_servers}, topics, compacted=compacted))
        self.partitions = dict(topics)  # the live loop reads the watched ones from their ends
        if self.registry.latest() is None:
            with self.console.status(training):
                fitted = fit()
                self.registry.publish(lambda tmp: fitted.save(tmp, version=version), version)
        self.console.print(f"[green]✓[/] model {self.registry.latest()} in {self.registry.root}")

    def setup(self) -> None:
        say = self.console.print

        def fit() -> FittedModel:
            from trainer.train import fit_events

            events, _ = transactions(20_000, seed=1)
            return fit_events(events, schema=CARD_SCHEMA, target_rate=TARGET_RATE, max_steps=1500)

        self.start_broker_and_model(
            {"events": 4, "anomalies": 1, "events.dlq": 1, FEEDBACK_TOPIC: 1},
            {FEEDBACK_TOPIC},
            "training the first model on 20,000 generated transactions…",
            "v1-initial",
            fit,
        )
        self.spawn("worker", "worker")
        self.spawn("trainer", "trainer")
        say(f"[green]✓[/] worker and trainer started (logs in {self.home})")
        self.start_prometheus()

    def start_prometheus(self) -> None:
        """Prometheus with the project's alert rules, scraping the worker and the trainer, when
        Debian's ``prometheus`` is installed."""
        say = self.console.print
        if not prometheus_available():
            say("[yellow]Prometheus is not installed: no alerts in this demo (Debian: apt-get install prometheus)[/]")
            return
        targets = {
            "stream-ae-worker": [f"127.0.0.1:{self.metrics_port}"],
            "stream-ae-trainer": [f"127.0.0.1:{self.trainer_port}"],
        }
        try:
            self.prometheus = LocalPrometheus(self.home / "prometheus", targets).start()
            say(f"[green]✓[/] Prometheus at {self.prometheus.url} with the alert rules of deploy/prometheus")
        except PrometheusError as exc:
            say(f"[yellow]Prometheus did not start ({exc}); the demo runs without it[/]")

    def view(self, elapsed: float) -> Table:
        m = scrape_port(self.metrics_port)
        precision, recall = self.tally.precision_recall()
        scored = m.get("stream_ae_events_scored_total", 0.0)
        version = _model_version(m)
        t = Table(title="stream-ae demo (Ctrl-C stops everything)", show_header=False, min_width=64)
        t.add_row("events sent / scored", f"{self.tally.sent:,} / {int(scored):,}")
        t.add_row("events/s scored (avg)", f"{scored / max(elapsed, 1e-9):,.0f}")
        t.add_row("injected frauds", f"{self.tally.injected:,}")
        t.add_row("anomalies published", f"{len(self.tally.flagged):,}")
        t.add_row("precision / recall", f"{precision:.3f} / {recall:.3f}")
        sent = self.chargebacks.sent
        t.add_row("verdicts sent (fraud / false alarm)", f"{sent['anomaly']:,} / {sent['normal']:,}")
        tm = scrape_port(self.trainer_port)
        labelled = tm.get('stream_ae_trainer_labelled_precision{model="challenger"}', float("nan"))
        t.add_row("labelled precision (trainer)", "-" if labelled != labelled else f"{labelled:.3f}")
        t.add_row("last anomaly", self.last_anomaly or "-")
        dead = sum(v for k, v in m.items() if k.startswith("stream_ae_events_dead_lettered_total"))
        t.add_row("dead-lettered", f"{int(dead):,}")
        t.add_row("model version", version)
        t.add_row("worker metrics", f"http://127.0.0.1:{self.metrics_port}/metrics")
        t.add_row("trainer metrics", f"http://127.0.0.1:{self.trainer_port}/metrics")
        t.add_row("health", f"http://127.0.0.1:{self.web_port}/healthz")
        if self.prometheus is not None:
            t.add_row("Prometheus", self.prometheus.url)
            t.add_row("alerts firing", ", ".join(self.prometheus.firing()) or "none")
        return t

    # the live loop: one for every demo; a demo says what it produces, watches and does per poll
    # (from the watched topics' ends as they were before this run produced anything: a home
    # reused from an earlier run, even of an earlier version, holds that run's records)
    watched: tuple[str, ...] = ("anomalies",)

    async def start_streams(self, kw: dict[str, Any], stop: asyncio.Event) -> list[asyncio.Task[Any]]:
        """Start the producer (and whatever else feeds the stack); their tasks end after ``stop``."""
        self._verdicts = AIOKafkaProducer(**kw, acks="all")
        await self._verdicts.start()
        producer = stream_forever(
            kw,
            "events",
            rate=self.rate,
            anomaly_rate=self.anomaly_rate,
            seed=100,
            on_block=self.tally.on_block,
            stop=stop,
        )
        return [asyncio.create_task(producer)]

    def on_record(self, topic: str, record: dict[str, Any]) -> None:
        """One record of a watched topic."""
        self.tally.flagged.add(str(record.get("event_id")))
        self.last_anomaly = describe(record.get("top_features") or [])
        label = self.tally.labels.get(str(record.get("event_id")))
        self.chargebacks.consider(record, label, time.time())

    async def after_poll(self, live: Live, elapsed: float) -> None:
        """After each poll of the watched topics: verdicts that are due, a report line a minute."""
        assert self._verdicts is not None
        for v in self.chargebacks.due(time.time()):
            await self._verdicts.send(FEEDBACK_TOPIC, verdict_bytes(v), key=v["event_id"].encode())
        if self.report and elapsed >= (len(self.report_lines) + 1) * 60 + REPORT_SETTLE_S:
            self._report_minute(live)

    async def stop_streams(self) -> None:
        if self._verdicts is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._verdicts.stop(), 5)

    async def run(self, duration: float | None) -> None:
        """The live view until Ctrl-C or ``duration``: poll the watched topics, update the view."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        kw = {"bootstrap_servers": self.broker.bootstrap_servers}
        consumer = AIOKafkaConsumer(**kw, group_id=None, enable_auto_commit=False)
        await consumer.start()
        parts = [TopicPartition(t, p) for t in self.watched for p in range(self.partitions[t])]
        consumer.assign(parts)
        for tp, end in (await consumer.end_offsets(parts)).items():
            consumer.seek(tp, end)
        tasks = await self.start_streams(kw, stop)
        start = self.tally.started = time.monotonic()  # the report's minutes count from here
        try:
            with Live(self.view(0.0), console=self.console, refresh_per_second=2) as live:
                while not stop.is_set():
                    got = await consumer.getmany(timeout_ms=500)
                    for tp, msgs in got.items():
                        for msg in msgs:
                            self.on_record(tp.topic, orjson.loads(msg.value or b"{}"))
                    elapsed = time.monotonic() - start
                    await self.after_poll(live, elapsed)
                    live.update(self.view(elapsed))
                    if duration and elapsed > duration:
                        stop.set()
        finally:
            stop.set()
            await consumer.stop()
            await self.stop_streams()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)

    def play(self, duration: float | None) -> None:
        """Set up, run the live view, and always tear down (Ctrl-C while setting up included)."""
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # no connection chatter in the live view
        try:
            self.setup()
            asyncio.run(self.run(duration))
        except KeyboardInterrupt:  # Ctrl-C while setting up: stop what has started
            pass
        finally:
            self.teardown()

    def _report_minute(self, live: Live) -> None:
        """Print (and append to ``<home>/report.txt``) the figures of the next closed minute."""
        figures = self.tally.minute(len(self.report_lines))
        self.report_lines.append(figures)
        version = _model_version(scrape_port(self.metrics_port))
        self.report_versions.append(version)
        line = figures.line(TARGET_RATE, version)
        live.console.print(line, soft_wrap=True)  # one line, whatever the terminal width
        with (self.home / "report.txt").open("a") as fh:
            fh.write(line + "\n")

    def report_plot(self, path: Path) -> None:
        """The minutes' live false-alarm rate (against the target's 0.5-2x band), recall and
        precision, with each model refresh marked: ``<home>/report.png``."""
        if not self.report_lines:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        minutes = [f.minute + 1 for f in self.report_lines]
        fig, (far, pr) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
        far.axhspan(0.5, 2.0, color="tab:green", alpha=0.12, label="0.5-2x the target")
        far.plot(minutes, [f.false_alarm_rate / TARGET_RATE for f in self.report_lines], "o-", label="live rate")
        far.set_ylabel("false-alarm rate / target")
        pr.plot(minutes, [f.recall for f in self.report_lines], "o-", label="recall")
        pr.plot(minutes, [f.precision for f in self.report_lines], "s-", label="precision")
        pr.set_ylim(0, 1.02)
        pr.set_xlabel("minute of the demo")
        for i in range(1, len(self.report_versions)):
            if self.report_versions[i] != self.report_versions[i - 1]:
                for ax in (far, pr):
                    ax.axvline(minutes[i] - 0.5, color="0.5", ls="--", lw=1)
                far.text(minutes[i] - 0.45, far.get_ylim()[1] * 0.95, "new model", fontsize=7, va="top")
        far.legend(fontsize=8)
        pr.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def report_summary(self) -> str:
        """The minutes after the first two against the demo's promise: the false-alarm rate in
        0.5-2x the target and recall at least 0.8."""
        later = self.report_lines[2:]
        if not later:
            return "report: fewer than three minutes closed, nothing to judge"
        in_band = sum(0.5 * TARGET_RATE <= f.false_alarm_rate <= 2 * TARGET_RATE for f in later)
        recalled = sum(f.recall >= 0.8 for f in later)
        return (
            f"report: {len(later)} minutes after the first two; false-alarm rate within 0.5-2x the target in "
            f"{in_band}, recall at least 0.8 in {recalled}"
        )

    def teardown(self) -> None:
        """Stop in order: the producer is done already; the worker and the trainer (SIGTERM,
        8 s, then SIGKILL), Prometheus, then Kafka. A second Ctrl-C kills what is left at once."""
        started = time.monotonic()
        with on_stop_signal(self.kill_all):
            for proc in self.children:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 8.0
            for proc in self.children:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if self.prometheus is not None:
                self.prometheus.stop()
            self.broker.stop(timeout_s=5.0)
        stopped = ", ".join(["producer", *self.names]) + ", " + ("Prometheus and " if self.prometheus else "") + "Kafka"
        self.console.print(f"[green]✓[/] stopped the {stopped} in {time.monotonic() - started:.1f} s")

    def kill_all(self) -> None:
        """A second Ctrl-C: SIGKILL every process the demo started, now."""
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
        if self.prometheus is not None:
            self.prometheus.kill()
        self.broker.kill()


def run_demo(home: Path, rate: float, anomaly_rate: float, duration: float | None, report: bool = False) -> Tally:
    console = Console()
    demo = Demo(home, rate, anomaly_rate, console, report)
    demo.play(duration)
    precision, recall = demo.tally.precision_recall()
    console.print(
        f"sent {demo.tally.sent:,} events, {demo.tally.injected} frauds; {len(demo.tally.flagged)} anomalies "
        f"published; precision {precision:.3f}, recall {recall:.3f}",
        soft_wrap=True,
    )
    if report:
        summary = demo.report_summary()
        console.print(summary, soft_wrap=True)
        with (home / "report.txt").open("a") as fh:
            fh.write(summary + "\n")
        with contextlib.suppress(ImportError):  # matplotlib is an extra (eval)
            demo.report_plot(home / "report.png")
    return demo.tally
