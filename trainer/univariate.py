"""SMD one metric at a time: univariate streams through the user's documented path, scored by
the Numenta Anomaly Benchmark's rules (``stream-ae evaluate --streams``).

The held-out corpus this product is judged on is univariate (one metric per stream, no
separate training period), so this protocol runs the same path on development data:

* each metric of each SMD machine's test period that is not constant is one stream of
  ``{"ts", "value", "series"}`` events, a minute apart; the machine's labels are the stream's;
* the model is trained on the stream's probationary rows only (NAB's first 15 %, at most 750
  rows), with :func:`series_schema` (the value, the event time, the series as the entity with
  ``zscore``, ``delta_mean``, ``spread`` and ``repeats`` and an ``alarm`` section with the
  guide's 2.5 h cooldown) at the guide's target rate (1e-4), then the whole stream is replayed
  through the worker's path (features, raw score, post-score stage: ``stream-ae score``);
* ways of alarming: the raw score; the raw score with the cooldown; the published score
  (score likelihood) with the cooldown, each with one threshold per profile optimised over
  the corpus (NAB's rule); and the **incidents** the product opens at its own threshold
  (``-log10(target rate)``), nothing optimised: what a user of the incidents topic gets.

An SMD label marks the machine, not each metric: many metrics do not show a given anomaly.
Every way of alarming is scored on the same streams, so the figures compare ways; they are
lower than on a corpus labelled per metric. :func:`host_metric_series` is such a corpus, made
by the project's own generator: each simulated host's CPU and latency as two streams of two
weeks at one row per five minutes (4,032 rows, NAB's commonest length), its probation
fault-free, each stream labelled only where its own host's faults are
(:func:`evaluate_host_series`).

Example:
    >>> sorted(series_schema(cooldown_s=600).to_dict()["entity"]["alarm"])
    ['cooldown', 'half_life', 'likelihood', 'short', 'warmup']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.alarms.stage import judge_rows
from stream_ae.entities.spec import EntitySpec
from stream_ae.features.encoder import FeatureSchema, FieldKind, FieldSpec
from stream_ae.features.featurize import featurize_file
from stream_ae.models.detector import DegenerateDataError
from stream_ae.tools.metrics_stream import HostMetrics
from trainer.evaluate import SMD_MACHINES, SMD_START, load_smd
from trainer.nab import Stream, anomaly_starts, probation_rows, profile_table, windows_for
from trainer.train import fit_events

STEP_S = 60.0  # SMD's sampling
SERIES_START = SMD_START  # the first row's epoch seconds, in every corpus here
# the metric-streams guide's target rate: an alarm threshold of 4 on the published score
# (per-stream labels: incidents 3.2 NAB points above 1e-3; SMD's: the same within 0.5)
GUIDE_TARGET_RATE = 1e-4
# the guide's cooldown: 2.5 h, a fifth of SMD's probation of 750 one-minute rows (CAD OSE and
# KNN-CAD stay quiet for a fifth of their warm-up); a duration, whatever a stream's sampling
GUIDE_COOLDOWN_S = 9000.0


def series_schema(cooldown_s: float, alarm: dict[str, Any] | None = None) -> FeatureSchema:
    """The documented schema of a univariate metric stream: the value, the event time (its
    calendar features dropped at fit when the training rows cannot teach them), the series as
    the entity with the value's deviation from its own running mean (``zscore``) and from its
    last ten rows (``delta_mean``), the spread of those rows (``spread``: a variance change)
    and how many of them repeat the latest (``repeats``: a stuck value), the three fault
    shapes of the host-metrics schema, the first three on the signed log1p of the value
    (``log``: relative change, for metrics that move by factors), and the post-score stage
    with a ``cooldown``. The value
    itself is checked but is not a model input (``input: false``): a probation of a few hours
    cannot teach the stream's level, and a level it never saw is not a fault by itself."""
    return FeatureSchema(
        (FieldSpec("value", FieldKind.NUMERIC, input=False), FieldSpec("ts", FieldKind.TIMESTAMP)),
        time_field="ts",
        entity=EntitySpec.from_dict(
            {
                "field": "series",
                "ttl": "30d",
                "features": [
                    {"zscore": "value", "log": True},
                    {"delta_mean": ["value"], "rows": 10, "log": True},
                    {"spread": ["value"], "rows": 10, "log": True},
                    {"repeats": ["value"], "rows": 10},
                ],
                "alarm": {**(alarm or {}), "cooldown": cooldown_s},
            }
        ),
    )


@dataclass(frozen=True)
class SeriesResult:
    """One stream's scores: ``raw``, ``published`` and the incidents ``opens`` (one per row)."""

    name: str
    raw: NDArray[np.float64]
    published: NDArray[np.float64]
    opens: NDArray[np.bool_]
    windows: list[Any]
    cooldown_rows: int
    trained: bool = True  # False: the probation was constant and no model could be trained


def smd_series(data_dir: Path, machines: Sequence[str] = SMD_MACHINES) -> list[tuple[str, NDArray[Any], NDArray[Any]]]:
    """``(name, values, labels)`` of every non-constant metric of the machines' test periods."""
    out = []
    for machine in machines:
        _, test, label = load_smd(data_dir, machine)
        for j in range(test.shape[1]):
            v = test[:, j].astype(np.float64)
            if float(v.std()) > 1e-6:
                out.append((f"{machine}/m{j}", v, label))
    return out


def host_metric_series(
    seed: int, hosts: int = 10, days: float = 14.0, faults_per_host_week: float = 2.0
) -> list[tuple[str, NDArray[Any], NDArray[Any]]]:
    """``(name, values, labels)``: each host's ``cpu`` and ``latency_ms`` of
    :class:`~stream_ae.tools.metrics_stream.HostMetrics` (five-minute rows, ``days`` long) as
    two univariate streams, labelled where that host's faults are (the latency follows the
    CPU, so a fault shows in both). The first 15 % (NAB's probation, at most 750 rows) is
    fault-free, as a stream's training rows should be.

    Example:
        >>> [(name, len(v), int(y.sum()) >= 0) for name, v, y in host_metric_series(0, hosts=1, days=1)]
        [('host-000/cpu', 288, True), ('host-000/latency_ms', 288, True)]
    """
    stream = HostMetrics(hosts=hosts, seed=seed, faults_per_host_week=0.0)
    rows = round(days * 86_400 / stream.step_s)
    quiet = probation_rows(rows)
    first, first_labels = stream.next(hours=quiet * stream.step_s / 3600)
    stream.rate = faults_per_host_week
    rest, rest_labels = stream.next(hours=(rows - quiet) * stream.step_s / 3600)
    events, labels = first + rest, np.concatenate([first_labels, rest_labels])
    out = []
    for host in stream.hosts:
        mine = [i for i, e in enumerate(events) if e["host"] == host]
        y = (labels[mine] >= 0).astype(np.int64)
        for metric in ("cpu", "latency_ms"):
            out.append((f"{host}/{metric}", np.asarray([events[i][metric] for i in mine], dtype=np.float64), y))
    return out


def count_and_walk_series(
    seed: int, per_kind: int = 10, rows: int = 4_032
) -> list[tuple[str, NDArray[Any], NDArray[Any]]]:
    """``(name, values, labels)``: two stream kinds the host generator lacks, labelled per
    stream, five-minute rows, the probation fault-free, one to three anomalies each after it:

    * ``counts-k``: event counts, Poisson with a log-rate that has a daily cycle and AR(1)
      noise (bursty, heavy-tailed, as request or message counts are); anomalies: a burst
      (five times the rate for 30 minutes), a lasting rise (2.5 times for a day) or an outage
      (near zero for two hours);
    * ``walk-k``: a mean-reverting random walk (a utilisation that wanders); anomalies: a
      spike (10-25 up for three rows) or a level shift that stays (8-15 up; the first hour
      labelled).

    Example:
        >>> [(name, len(v)) for name, v, _ in count_and_walk_series(0, per_kind=1, rows=1_000)]
        [('counts-0', 1000), ('walk-0', 1000)]
    """
    rng = np.random.default_rng(seed)
    quiet = probation_rows(rows)
    t = np.arange(rows)
    out: list[tuple[str, NDArray[Any], NDArray[Any]]] = []
    for k in range(per_kind):
        ar = np.zeros(rows)
        for i in range(1, rows):
            ar[i] = 0.8 * ar[i - 1] + rng.normal(0.0, 0.3)
        log_rate = rng.uniform(1.5, 4.0) + 0.7 * np.sin(2 * np.pi * t / 288 + rng.uniform(0, 6)) + ar
        y = np.zeros(rows, dtype=np.int64)
        for _ in range(int(rng.integers(1, 4))):
            s, kind = int(rng.integers(quiet + 50, rows - 100)), int(rng.integers(3))
            span, change = ((6, np.log(5.0)), (288, np.log(2.5)), (24, -3.0))[kind]
            log_rate[s : s + span] += change
            y[s : s + span] = 1
        out.append((f"counts-{k}", rng.poisson(np.exp(log_rate)).astype(np.float64), y))
        level = rng.uniform(20, 60)
        x = np.full(rows, level)
        for i in range(1, rows):
            x[i] = x[i - 1] + 0.01 * (level - x[i - 1]) + rng.normal(0.0, 0.4)
        y = np.zeros(rows, dtype=np.int64)
        for _ in range(int(rng.integers(1, 4))):
            s = int(rng.integers(quiet + 50, rows - 100))
            if rng.integers(2) == 0:
                x[s : s + 3] += rng.uniform(10, 25)
                y[s : s + 3] = 1
            else:
                x[s:] += rng.uniform(8, 15)
                y[s : s + 12] = 1
        out.append((f"walk-{k}", x, y))
    return out


def score_series(
    name: str,
    values: NDArray[np.float64],
    labels: NDArray[Any],
    target_rate: float,
    seed: int,
    step_s: float = STEP_S,
    **hyper: Any,
) -> SeriesResult:
    """Train on the probationary rows, replay the whole stream through the worker's path."""
    n = len(values)
    probation = probation_rows(n)
    cooldown_rows = max(1, round(GUIDE_COOLDOWN_S / step_s))  # the guide's cooldown, in this stream's rows
    schema = series_schema(GUIDE_COOLDOWN_S, hyper.pop("alarm", None))
    events = [
        {"ts": SERIES_START + step_s * i, "value": float(x), "series": name} for i, x in enumerate(values.tolist())
    ]
    windows = windows_for(n, anomaly_starts(labels))
    try:
        fitted = fit_events(
            events[:probation], schema=schema, target_rate=target_rate, device="cpu", seed=seed, **hyper
        )  # fmt: skip
    except DegenerateDataError:  # a constant probation: `stream-ae train` refuses it, and nothing is detected
        zero = np.zeros(n)
        return SeriesResult(name, zero, zero, np.zeros(n, dtype=bool), windows, cooldown_rows, trained=False)
    assert fitted.encoder is not None
    feats = featurize_file(fitted.encoder, events)
    assert len(feats.batch.ok) == n, "a number a minute always encodes"
    raw = fitted.detector.score_samples(feats.batch.X)
    alarms = judge_rows(feats, raw, fitted.detector)
    return SeriesResult(
        name,
        raw,
        alarms.judged.published,
        alarms.judged.opens,
        windows,
        cooldown_rows,
    )


def evaluate_smd_series(
    data_dir: Path,
    machines: Sequence[str] = SMD_MACHINES,
    target_rate: float = GUIDE_TARGET_RATE,
    seed: int = 0,
    limit: int | None = None,
    on_series: Callable[[SeriesResult], None] | None = None,
    **hyper: Any,
) -> dict[str, dict[str, dict[str, float]]]:
    """The protocol of the module docstring on the SMD metrics. Returns way of alarming ->
    profile -> normalised score and threshold (for ``incidents`` the threshold is the
    product's own)."""
    series = smd_series(data_dir, machines)[:limit]
    return evaluate_series(series, STEP_S, target_rate, seed, on_series, **hyper)


def evaluate_host_series(
    seed: int = 0,
    hosts: int = 10,
    target_rate: float = GUIDE_TARGET_RATE,
    on_series: Callable[[SeriesResult], None] | None = None,
    **hyper: Any,
) -> dict[str, dict[str, dict[str, float]]]:
    """The protocol of the module docstring on :func:`host_metric_series` (labelled per
    stream), as :func:`evaluate_smd_series` returns it."""
    return evaluate_series(host_metric_series(seed, hosts), 300.0, target_rate, seed, on_series, **hyper)


def evaluate_count_walk_series(
    seed: int = 0,
    target_rate: float = GUIDE_TARGET_RATE,
    on_series: Callable[[SeriesResult], None] | None = None,
    **hyper: Any,
) -> dict[str, dict[str, dict[str, float]]]:
    """The protocol of the module docstring on :func:`count_and_walk_series` (bursty counts
    and wandering levels, labelled per stream), as :func:`evaluate_smd_series` returns it."""
    return evaluate_series(count_and_walk_series(seed), 300.0, target_rate, seed, on_series, **hyper)


def evaluate_series(
    series: Sequence[tuple[str, NDArray[Any], NDArray[Any]]],
    step_s: float,
    target_rate: float,
    seed: int,
    on_series: Callable[[SeriesResult], None] | None = None,
    **hyper: Any,
) -> dict[str, dict[str, dict[str, float]]]:
    """Each ``(name, values, labels)`` stream, ``step_s`` seconds a row, trained on its
    probation and replayed (:func:`score_series`), every way of alarming scored by NAB's rules."""
    streams: dict[str, list[Stream]] = {"raw": [], "raw+cooldown": [], "likelihood+cooldown": [], "incidents": []}
    for name, values, labels in series:
        r = score_series(name, values, labels, target_rate, seed, step_s, **dict(hyper))
        if on_series is not None:
            on_series(r)
        streams["raw"].append(Stream(name, r.raw, r.windows))
        streams["raw+cooldown"].append(Stream(name, r.raw, r.windows, r.cooldown_rows))
        streams["likelihood+cooldown"].append(Stream(name, r.published, r.windows, r.cooldown_rows))
        streams["incidents"].append(Stream(name, r.opens.astype(np.float64), r.windows))
    return profile_table(streams)
