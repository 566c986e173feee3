"""``stream-ae demo --stream metrics``: fault monitoring on one machine, no Docker.

A local Kafka broker, a model trained on three fault-free simulated days of host metrics
(:mod:`stream_ae.tools.metrics_stream`, :data:`METRICS_SCHEMA`: per-host features and the
post-score stage with its score likelihood, warm-up and incidents), the worker, and a producer
that plays the hosts on at ``speed`` simulated seconds per second (a simulated day a minute
by default) with faults injected at ``faults_per_host_week``. The live view judges the
worker's output against the producer's hidden fault list: faults found (an alarm of the host
within the fault or the hour after it), missed, the time to detection, and false incidents
per host and simulated week. The first simulated day is every host's warm-up: nothing alarms,
and faults start from the second. Ctrl-C (or ``--duration``) stops everything. There is no
trainer in this demo: the model stays the one trained at the start; what adapts is each
host's own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from stream_ae.tools.demo import Demo, scrape_port
from stream_ae.tools.metrics_stream import METRICS_SCHEMA, Fault, HostMetrics
from stream_ae.tools.produce import encode_events, make_producer, send_with

if TYPE_CHECKING:
    from trainer.train import FittedModel

INPUT, ANOMALIES, INCIDENTS = "metrics", "metric-anomalies", "incidents"
TARGET_RATE = 1e-4
GRACE_S = 3600.0
WEEK_S = 7 * 86_400.0


@dataclass
class FaultTally:
    """The producer's faults against the worker's alarms and incidents (simulated time)."""

    hosts: int
    faults: list[Fault] = field(default_factory=list)
    detected: dict[int, float] = field(default_factory=dict)  # fault index -> seconds to its first alarm
    incidents: int = 0
    false_incidents: int = 0
    sim_start: float = 0.0
    sim_now: float = 0.0
    sent: int = 0

    def fault_of(self, host: str, ts: float) -> int | None:
        for k, f in enumerate(self.faults):
            if f.host == host and f.start <= ts <= f.end + GRACE_S:
                return k
        return None

    def on_alarm(self, host: str, ts: float) -> None:
        k = self.fault_of(host, ts)
        if k is not None and k not in self.detected:
            self.detected[k] = ts - self.faults[k].start

    def on_incident(self, host: str, ts: float) -> None:
        self.incidents += 1
        if self.fault_of(host, ts) is None:
            self.false_incidents += 1

    def closed(self) -> list[int]:
        """Faults whose window has passed (found or missed by now)."""
        return [k for k, f in enumerate(self.faults) if f.end + GRACE_S < self.sim_now]

    def summary(self) -> dict[str, Any]:
        closed = self.closed()
        found = [k for k in closed if k in self.detected]
        weeks = self.hosts * max(self.sim_now - self.sim_start, 1.0) / WEEK_S
        minutes = [self.detected[k] / 60 for k in found]
        return {
            "faults_closed": len(closed),
            "found": len(found),
            "median_minutes_to_detect": statistics.median(minutes) if minutes else None,
            "incidents": self.incidents,
            "false_incidents_per_host_week": self.false_incidents / weeks,
        }


class MetricDemo(Demo):
    """The card demo's broker, processes and teardown; its own model, producer and view."""

    def __init__(self, home: Path, hosts: int, speed: float, faults_per_host_week: float, console: Console) -> None:
        super().__init__(home, rate=0.0, anomaly_rate=0.0, console=console)
        self.hosts, self.speed = hosts, speed
        self.stream = HostMetrics(hosts=hosts, seed=11, faults_per_host_week=0.0)
        self.train, _ = self.stream.next(hours=72)  # the fault-free days the model learns from
        self.fault_rate = faults_per_host_week  # from the second simulated day: the first is the warm-up
        self.faults = FaultTally(hosts, sim_start=self.stream.t, sim_now=self.stream.t)

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "STREAM_AE_INPUT_TOPICS": INPUT,
            "STREAM_AE_OUTPUT_TOPIC": ANOMALIES,
            "STREAM_AE_INCIDENTS_TOPIC": INCIDENTS,
            "STREAM_AE_DEAD_LETTER_TOPIC": f"{INPUT}.dlq",
            "STREAM_AE_APP_ID": "stream-ae-metrics",
            "STREAM_AE_GROUP_ID": "stream-ae-metrics-worker",  # not the app id: Faust has that group
            "STREAM_AE_TARGET_FALSE_ALARM_RATE": str(TARGET_RATE),
        }

    def setup(self) -> None:
        say = self.console.print

        def fit() -> FittedModel:
            from trainer.train import fit_events

            return fit_events(self.train, schema=METRICS_SCHEMA, target_rate=TARGET_RATE, device="cpu")

        # the simulation starts at the same simulated time every run: an earlier run's topics,
        # committed offsets and host state (ahead of that time) would make it a different demo
        if self.broker.running_pid() is not None:
            self.broker.stop()
        if self.broker.data_dir.exists():
            shutil.rmtree(self.broker.data_dir)
            say("[yellow]•[/] the earlier run's Kafka data removed: the simulation starts again")

        self.start_broker_and_model(
            {INPUT: 4, ANOMALIES: 1, INCIDENTS: 1, f"{INPUT}.dlq": 1},
            {INCIDENTS},  # as the worker creates it: each incident's latest record is kept
            f"training the model on three simulated days of {self.hosts} hosts…",
            "metrics-v1",
            fit,
        )
        self.spawn("worker", "worker")
        say(f"[green]✓[/] worker started (log in {self.home})")
        self.start_prometheus()

    def view(self, elapsed: float) -> Table:
        m = scrape_port(self.metrics_port)
        s = self.faults.summary()
        day = (self.faults.sim_now - self.faults.sim_start) / 86_400.0
        t = Table(title="stream-ae metric demo (Ctrl-C stops everything)", show_header=False, min_width=64)
        t.add_row("simulated time", f"day {day:.1f} ({self.speed:,.0f} simulated s per s); day 1 is the warm-up")
        scored = int(m.get("stream_ae_events_scored_total", 0))
        t.add_row("hosts / events sent / scored", f"{self.hosts} / {self.faults.sent:,} / {scored:,}")
        t.add_row("faults injected (window closed)", f"{len(self.faults.faults)} ({s['faults_closed']})")
        t.add_row("faults found / missed", f"{s['found']} / {s['faults_closed'] - s['found']}")
        med = s["median_minutes_to_detect"]
        t.add_row("median time to detection", "-" if med is None else f"{med:.0f} simulated minutes")
        t.add_row("incidents opened", f"{s['incidents']:,}")
        t.add_row("false incidents per host-week", f"{s['false_incidents_per_host_week']:.2f}")
        t.add_row("worker metrics", f"http://127.0.0.1:{self.metrics_port}/metrics")
        if self.prometheus is not None:
            t.add_row("alerts firing", ", ".join(self.prometheus.firing()) or "none")
        return t

    async def produce(self, stop: asyncio.Event) -> None:
        """Each second, the next ``speed`` simulated seconds of every host."""
        producer = make_producer({"bootstrap_servers": self.broker.bootstrap_servers})
        await producer.start()
        try:
            while not stop.is_set():
                tick = time.monotonic()
                warm = self.stream.t - self.faults.sim_start >= 86_400.0
                self.stream.rate = self.fault_rate if warm else 0.0
                events, _ = self.stream.next(hours=self.speed / 3600.0)
                self.faults.faults = list(self.stream.faults)
                await send_with(producer, INPUT, encode_events(events, key_field="host"))
                self.faults.sent += len(events)
                self.faults.sim_now = self.stream.t
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.monotonic() - tick)))
        finally:
            await producer.stop()

    watched = (ANOMALIES, INCIDENTS)

    async def start_streams(self, kw: dict[str, Any], stop: asyncio.Event) -> list[asyncio.Task[Any]]:
        return [asyncio.create_task(self.produce(stop))]

    def on_record(self, topic: str, record: dict[str, Any]) -> None:
        if topic == INCIDENTS:
            # updates and closings follow on the same key; a tombstone (an operator's clean-up) is {}
            if record.get("status") == "opened":
                self.faults.on_incident(record["entity"], record["opened_at"])
        elif "event" in record:
            self.faults.on_alarm(str(record["event"]["host"]), float(record["event"]["ts"]))

    async def after_poll(self, live: Live, elapsed: float) -> None:
        return None

    async def stop_streams(self) -> None:
        return None


def run_metric_demo(
    home: Path, hosts: int, speed: float, faults_per_host_week: float, duration: float | None
) -> FaultTally:
    console = Console()
    demo = MetricDemo(home, hosts, speed, faults_per_host_week, console)
    demo.play(duration)
    s = demo.faults.summary()
    console.print(
        f"report: {s['found']} of {s['faults_closed']} faults found (median {s['median_minutes_to_detect']} simulated "
        f"minutes to detect); {s['incidents']} incidents, {s['false_incidents_per_host_week']:.2f} false per host "
        "and simulated week",
        soft_wrap=True,
    )
    return demo.faults
