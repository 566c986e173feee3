"""Synthetic, labelled host metrics made by the project itself (metric demo, tests, evaluation).

:class:`HostMetrics` is a time-ordered stream of one event per host every ``step_s`` seconds:
``{"ts", "host", "cpu", "latency_ms"}``. Each host has its own level, its own daily cycle
(peak in the afternoon) and its own noise, so one raw threshold cannot serve them all; the
latency follows the CPU. Faults are injected at ``faults_per_host_week`` per host, each on one
host for a while, one kind each, scaled by that host's noise (so a fault is as hard to see on
a noisy host as on a quiet one):

* ``spike``: one to three points far above normal;
* ``level_shift``: the level jumps and stays up for one to three hours;
* ``drift``: the level creeps up over two to four hours;
* ``stuck``: the metric repeats one value for two to four hours (no noise, no cycle);
* ``variance``: the noise grows sixfold for one to two hours;
* ``seasonal_break``: the daily cycle inverts for three to six hours (the values stay within
  the host's usual range: only the time of day tells).

Labels come beside the events (the fault's index in :attr:`HostMetrics.faults`, -1 for
normal), never inside them.

Example:
    >>> stream = HostMetrics(hosts=4, seed=0, faults_per_host_week=20)
    >>> events, labels = stream.next(hours=24)
    >>> len(events), sorted(events[0]), len(stream.faults) > 0
    (1152, ['cpu', 'host', 'latency_ms', 'ts'], True)
    >>> {f.kind for f in stream.faults} <= set(FAULT_KINDS)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.spec import EntitySpec
from stream_ae.features.encoder import FeatureSchema, FieldKind, FieldSpec

FAULT_KINDS = ("spike", "level_shift", "drift", "stuck", "variance", "seasonal_break")
DAY = 86_400.0

# The metric stream's declared features: the metrics and the hour of day; per host, the row
# minus the host's recent rows (its own level) and the score likelihood with incidents.
METRICS_ENTITY = EntitySpec.from_dict(
    {
        "field": "host",
        "ttl": "1d",
        "features": [
            {"delta_mean": ["cpu", "latency_ms"], "rows": 12},
            {"spread": ["cpu"], "rows": 12},
            {"repeats": ["cpu"], "rows": 12},
        ],
        "alarm": {"likelihood": True, "short": 3, "half_life": 2016, "warmup": 288, "cooldown": "2h"},
    }
)
METRICS_SCHEMA = FeatureSchema(
    (
        FieldSpec("cpu", FieldKind.NUMERIC),
        FieldSpec("latency_ms", FieldKind.NUMERIC, log=True),
        FieldSpec("ts", FieldKind.TIMESTAMP, weekday=False),
    ),
    time_field="ts",
    entity=METRICS_ENTITY,
)


@dataclass(frozen=True)
class Fault:
    """One injected fault: on ``host`` from ``start`` to ``end`` (epoch seconds, inclusive)."""

    host: str
    kind: str
    start: float
    end: float


class HostMetrics:
    """An endless stream of host metrics; :meth:`next` continues it."""

    def __init__(
        self,
        *,
        hosts: int = 30,
        seed: int = 0,
        step_s: float = 300.0,
        start_ts: float = 1_764_547_200.0,  # a Monday, 00:00 UTC
        faults_per_host_week: float = 1.0,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.hosts = [f"host-{i:03d}" for i in range(hosts)]
        self.step_s = step_s
        self.t = start_ts
        self.rate = faults_per_host_week
        r = self.rng
        self.level = r.uniform(15.0, 60.0, hosts)
        self.amplitude = self.level * r.uniform(0.1, 0.5, hosts)
        self.noise = r.lognormal(math.log(2.0), 0.7, hosts)  # from about 0.5 to 8 CPU points
        self.phase = r.normal(0.0, 0.05, hosts)  # the afternoon peak, give or take an hour
        self.faults: list[Fault] = []
        self._stuck: dict[int, float] = {}  # host -> the value it repeats

    def _cycle(self, ts: NDArray[np.float64], host: NDArray[np.int64]) -> NDArray[np.float64]:
        day = (ts % DAY) / DAY
        return np.sin(2 * math.pi * (day - 0.375 - self.phase[host]))  # peak at 15:00

    def _schedule(self, until: float) -> None:
        """Faults that start before ``until``: Poisson per host, none overlapping on a host."""
        r = self.rng
        weeks = (until - self.t) / (7 * DAY)
        for host in self.hosts:
            for _ in range(r.poisson(self.rate * weeks)):
                kind = FAULT_KINDS[r.integers(len(FAULT_KINDS))]
                start = self.t + r.uniform(0, until - self.t)
                start -= start % self.step_s
                hours = {
                    "spike": (0, 0.2),
                    "level_shift": (1, 3),
                    "drift": (2, 4),
                    "stuck": (2, 4),
                    "variance": (1, 2),
                    "seasonal_break": (3, 6),
                }[kind]
                end = start + r.uniform(*hours) * 3600
                if any(f.host == host and f.start <= end + 3600 and start <= f.end + 3600 for f in self.faults):
                    continue
                self.faults.append(Fault(host, kind, start, end))

    def next(self, hours: float) -> tuple[list[dict[str, Any]], NDArray[np.int64]]:
        """The next ``hours`` of the stream: events in time order (hosts in order within a
        step) and each event's fault index (-1 normal)."""
        steps = round(hours * 3600 / self.step_s)
        until = self.t + steps * self.step_s
        self._schedule(until)
        n_h = len(self.hosts)
        ts = np.repeat(self.t + np.arange(steps) * self.step_s, n_h)
        host = np.tile(np.arange(n_h), steps)
        r = self.rng
        base = self.level[host] + self.amplitude[host] * self._cycle(ts, host)
        noise = self.noise[host] * r.standard_normal(len(ts))
        cpu = base + noise
        labels = np.full(len(ts), -1, dtype=np.int64)
        index = {h: i for i, h in enumerate(self.hosts)}
        for k, f in enumerate(self.faults):
            h = index[f.host]
            on = (host == h) & (ts >= f.start) & (ts <= f.end)
            if not on.any():
                continue
            labels[on] = k
            sd = self.noise[h]
            elapsed = ts[on] - f.start
            if f.kind == "spike":
                cpu[on] += sd * r.uniform(7.0, 10.0, int(on.sum()))
            elif f.kind == "level_shift":
                cpu[on] += sd * 6.0
            elif f.kind == "drift":
                cpu[on] += sd * 10.0 * elapsed / max(f.end - f.start, self.step_s)
            elif f.kind == "stuck":
                stuck = self._stuck.setdefault(k, float(cpu[on][0]))
                cpu[on] = stuck
            elif f.kind == "variance":
                cpu[on] = base[on] + noise[on] * 6.0
            else:  # seasonal_break: the cycle runs backwards
                cpu[on] = self.level[h] - self.amplitude[h] * self._cycle(ts[on], host[on]) + noise[on]
        cpu = np.clip(cpu, 0.0, 100.0)
        latency = 20.0 * np.exp(cpu / 60.0) * np.exp(0.05 * r.standard_normal(len(ts)))
        self.t = until
        events = [
            {"ts": t, "host": self.hosts[h], "cpu": round(c, 3), "latency_ms": round(lat, 2)}
            for t, h, c, lat in zip(ts.tolist(), host.tolist(), cpu.tolist(), latency.tolist(), strict=True)
        ]
        return events, labels
