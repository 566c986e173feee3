"""The synthetic host metrics as a benchmark: are injected faults found, how soon, and how many
false incidents does a host raise per week (``stream-ae evaluate --streams``).

Protocol (one run per seed):

* :class:`~stream_ae.tools.metrics_stream.HostMetrics` with ``hosts`` hosts at one row per
  five minutes; the first ``train_hours`` are fault-free and train the model
  (:data:`~stream_ae.tools.metrics_stream.METRICS_SCHEMA`, at ``target_rate``);
* then ``test_days`` with ``faults_per_host_week`` faults per host and week on average, replayed after the training
  rows through the worker's own path (features, score, post-score stage: ``stream-ae score``);
* a fault is **found** when an alarm of its host falls inside it or within an hour after it
  ends (the short-term mean lags a spike); **time to detection** is from its start to the
  first such alarm;
* a **false incident** is an incident opened outside every fault (and its hour after);
* beside the published score, the same with the raw score above the model's raw threshold
  (after the warm-up), the way a worker without an alarm section alarms;
* the NAB score (standard profile, :mod:`trainer.nab`) of each host's test period as one
  stream, the incidents as detections, one threshold for the corpus.

Example:
    >>> report = evaluate_host_metrics(hosts=3, train_hours=24, test_days=2, seed=0, max_steps=50)
    >>> sorted(report["published"]), report["faults"] >= 0
    (['by_kind', 'false_incidents_per_host_week', 'found', 'found_share', 'median_minutes_to_detect'], True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.alarms.stage import judge_rows
from stream_ae.entities.alarm import opening_alarms
from stream_ae.features.featurize import featurize_file
from stream_ae.tools.metrics_stream import FAULT_KINDS, METRICS_SCHEMA, Fault, HostMetrics
from trainer.nab import PROFILES, Stream, anomaly_starts, corpus_score, windows_for
from trainer.train import fit_events

GRACE_S = 3600.0  # a fault counts as found by an alarm up to an hour after it ends


def evaluate_host_metrics(
    hosts: int = 30,
    train_hours: float = 72.0,
    test_days: float = 14.0,
    seed: int = 0,
    target_rate: float = 1e-4,
    faults_per_host_week: float = 1.0,
    plot: Path | None = None,
    **hyper: Any,
) -> dict[str, Any]:
    """The protocol of the module docstring; with ``plot`` a PNG of a few hosts and their alarms."""
    stream = HostMetrics(hosts=hosts, seed=seed, faults_per_host_week=0.0)
    train, _ = stream.next(hours=train_hours)
    stream.rate = faults_per_host_week
    test, _ = stream.next(hours=test_days * 24)
    hyper = {"device": "cpu", "seed": seed, **hyper}
    fitted = fit_events(train, schema=METRICS_SCHEMA, target_rate=target_rate, **hyper)
    assert fitted.encoder is not None and METRICS_SCHEMA.entity is not None
    events = train + test
    feats = featurize_file(fitted.encoder, events)
    raw = fitted.detector.score_samples(feats.batch.X)
    alarms = judge_rows(feats, raw, fitted.detector)
    ok = feats.batch.ok
    tested = ok >= len(train)
    ts = np.asarray([events[i]["ts"] for i in ok.tolist()], dtype=np.float64)
    host = np.asarray([events[i]["host"] for i in ok.tolist()])
    raw_alarm = tested & (raw > fitted.detector.threshold_)  # every host is past its warm-up by then
    inside = np.zeros(len(ts), dtype=bool)
    for f in stream.faults:
        inside |= _window(f, host, ts)
    report: dict[str, Any] = {
        "hosts": hosts,
        "train_hours": train_hours,
        "test_days": test_days,
        "seed": seed,
        "target_rate": target_rate,
        "alarm_threshold": alarms.threshold,
        "faults": len(stream.faults),
    }
    weeks = hosts * test_days / 7.0
    for name, alarm, opens in (
        ("published", tested & alarms.judged.alarm, tested & alarms.judged.opens),
        ("raw", raw_alarm, _opens_per_host(raw_alarm, host, ts)),
    ):
        found, minutes, by_kind = _found(stream.faults, alarm, host, ts)
        report[name] = {
            "found": found,
            "found_share": found / max(len(stream.faults), 1),
            "by_kind": by_kind,
            "median_minutes_to_detect": float(np.median(minutes)) if minutes else None,
            "false_incidents_per_host_week": float((opens & ~inside).sum()) / weeks,
        }
    report["found"] = report["published"]["found"]
    report["false_incidents_per_host_week"] = report["published"]["false_incidents_per_host_week"]
    report["nab_standard"] = _nab(stream.faults, alarms.judged.published, raw, host, ts, tested)
    if plot is not None:
        _plot(plot, events, ok, tested, host, alarms.judged.alarm, stream.faults)
    return report


def _window(f: Fault, host: NDArray[np.str_], ts: NDArray[np.float64]) -> NDArray[np.bool_]:
    inside: NDArray[np.bool_] = (host == f.host) & (ts >= f.start) & (ts <= f.end + GRACE_S)
    return inside


def _found(
    faults: list[Fault], alarm: NDArray[np.bool_], host: NDArray[np.str_], ts: NDArray[np.float64]
) -> tuple[int, list[float], dict[str, str]]:
    hits: dict[str, list[bool]] = {k: [] for k in FAULT_KINDS}
    minutes: list[float] = []
    for f in faults:
        at = np.flatnonzero(alarm & _window(f, host, ts))
        hits[f.kind].append(bool(len(at)))
        if len(at):
            minutes.append((ts[at[0]] - f.start) / 60.0)
    by_kind = {k: f"{sum(v)}/{len(v)}" for k, v in hits.items() if v}
    return sum(sum(v) for v in hits.values()), minutes, by_kind


def _cooldown_rows(ts: NDArray[np.float64]) -> int:
    """The schema's alarm cooldown in rows of a host's stream (rows as time, as NAB counts)."""
    assert METRICS_SCHEMA.entity is not None and METRICS_SCHEMA.entity.alarm is not None
    step = float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0
    return round((METRICS_SCHEMA.entity.alarm.cooldown or 0.0) / step)


def _opens_per_host(alarm: NDArray[np.bool_], host: NDArray[np.str_], ts: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Incidents from raw alarms by the same rule and cooldown as the post-score stage."""
    out = np.zeros(len(alarm), dtype=bool)
    for h in np.unique(host):
        rows = np.flatnonzero(host == h)
        out[rows] = opening_alarms(alarm[rows], _cooldown_rows(ts[rows]))
    return out


def _nab(
    faults: list[Fault],
    published: NDArray[np.float64],
    raw: NDArray[np.float64],
    host: NDArray[np.str_],
    ts: NDArray[np.float64],
    tested: NDArray[np.bool_],
) -> dict[str, float]:
    """Each host's test period as a NAB stream: windows around each fault's start."""
    out: dict[str, float] = {}
    for name, scores in (("published", published), ("raw", raw)):
        streams = []
        for h in np.unique(host):
            rows = np.flatnonzero((host == h) & tested)
            y = np.zeros(len(rows), dtype=bool)
            for f in faults:
                if f.host == h:
                    y |= (ts[rows] >= f.start) & (ts[rows] <= f.end)
            windows = windows_for(len(rows), anomaly_starts(y))
            if windows:
                streams.append(Stream(str(h), scores[rows], windows, _cooldown_rows(ts[rows])))
        out[name] = corpus_score(streams, PROFILES["standard"])[0] if streams else float("nan")
    return out


def _plot(
    path: Path,
    events: list[dict[str, Any]],
    ok: NDArray[np.int64],
    tested: NDArray[np.bool_],
    host: NDArray[np.str_],
    alarm: NDArray[np.bool_],
    faults: list[Fault],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(dict.fromkeys(f.host for f in faults))[:3]
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 2.4 * len(shown)), squeeze=False)
    for ax, h in zip(axes[:, 0], shown, strict=True):
        rows = np.flatnonzero((host == h) & tested)
        t = np.asarray([events[int(ok[r])]["ts"] for r in rows]) / 86_400.0
        cpu = np.asarray([events[int(ok[r])]["cpu"] for r in rows])
        ax.plot(t - t[0], cpu, lw=0.6, color="0.3")
        for f in faults:
            if f.host == h:
                ax.axvspan((f.start / 86_400.0) - t[0], (f.end / 86_400.0) - t[0], color="tab:orange", alpha=0.3)
                ax.text((f.start / 86_400.0) - t[0], cpu.max(), f.kind, fontsize=7, va="top")
        hit = alarm[rows]
        ax.plot((t - t[0])[hit], cpu[hit], "v", color="tab:red", ms=4, label="alarm")
        ax.set_ylabel(f"{h} cpu")
    axes[-1, 0].set_xlabel("days into the test period (orange: injected faults; red: alarms)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
