"""Overload: produce at a multiple of the worker's measured capacity, then watch it recover.

    python -m bench.overload                                  # its own local broker, 2x for 120 s
    python -m bench.overload --factor 3 --seconds 300 --batch 2048

1. **Capacity**: a topic is pre-filled with ``--calibration`` events; one worker drains it
   and its scored-events counter gives events/s (start-up excluded).
2. **Overload**: events are produced at ``factor x capacity`` for ``--seconds``, while the
   worker's RSS, its ``stream_ae_consumer_lag`` (summed over partitions) and its scored count
   are sampled every half second.
3. **Recovery**: after the producer stops, until every event is scored and the lag metric
   reads 0; then the all-scores topic is audited for lost and duplicated events.

The test suite runs this with small figures (``tests/test_faults.py``); this command is the
longer soak whose figures docs/benchmarks/figures.md reports. ``--batch`` is the worker's
``STREAM_AE_BATCH_MAX_SIZE``: a small value lowers the worker's capacity so that one Python
producer on a small machine can outrun it.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.environment import bench_environment
from stream_ae.kafka.admin import ensure_topics
from stream_ae.tools.audit import audit_delivery
from stream_ae.tools.produce import send_events
from stream_ae.tools.synthetic import transactions
from stream_ae.tools.worker_process import WorkerProcess, worker_env

SAMPLE_EVERY_S = 0.5


@dataclass
class OverloadResult:
    capacity: float  # events/s the worker drained a backlog at
    offered_rate: float  # factor x capacity: the rate asked of the producer
    produced_rate: float  # the rate the producer reached
    produced: int  # events produced during the overload
    peak_lag: float  # highest summed consumer lag the worker reported
    final_lag: float  # summed consumer lag once recovered
    recovery_s: float  # producer done -> every event scored
    rss_start_mb: float
    rss_peak_mb: float
    lost: int
    duplicated: int
    alive: bool
    recovered: bool


def _lag(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("stream_ae_consumer_lag{"))


def measure_capacity(worker: WorkerProcess, expected: int, timeout_s: float) -> float:
    """Events/s while the worker drains a pre-filled backlog of ``expected`` events."""
    deadline = time.monotonic() + timeout_s
    first: tuple[float, float] | None = None
    while time.monotonic() < deadline:
        n, now = worker.scored(), time.perf_counter()
        if n > 0 and first is None:
            first = (now, n)
        if n >= expected:
            break
        time.sleep(0.05)
    else:
        raise TimeoutError(f"the worker scored {n:.0f} of {expected} calibration events in {timeout_s:.0f} s")
    assert first is not None
    return (n - first[1]) / max(now - first[0], 1e-3)


def run_overload(
    bootstrap: str,
    registry: Path,
    topic: str,
    log_path: Path,
    *,
    factor: float = 2.0,
    seconds: float = 20.0,
    batch: int = 32,
    calibration: int = 8000,
    partitions: int = 4,
    recovery_timeout_s: float = 300.0,
) -> OverloadResult:
    """The whole scenario against one broker and registry (see the module docstring)."""
    kw = {"bootstrap_servers": bootstrap}
    scores = f"{topic}.scores"
    asyncio.run(ensure_topics(kw, {topic: partitions, scores: 1}))
    warmup, _ = transactions(calibration, seed=21, id_prefix="cal")
    asyncio.run(send_events(kw, topic, warmup))
    env = worker_env(
        bootstrap,
        registry,
        topic,
        STREAM_AE_SCORES_TOPIC=scores,
        STREAM_AE_BATCH_MAX_SIZE=str(batch),
        STREAM_AE_BATCH_MAX_WAIT_MS="5",
        STREAM_AE_LOG_LEVEL="WARNING",
    )
    worker = WorkerProcess(env, log_path).start()
    try:
        capacity = measure_capacity(worker, calibration, timeout_s=120)
        offered = factor * capacity
        events, _ = transactions(int(offered * seconds), seed=22, id_prefix="load")
        produced_s: list[float] = []

        def produce() -> None:
            t0 = time.perf_counter()
            asyncio.run(send_events(kw, topic, events, rate=offered))
            produced_s.append(time.perf_counter() - t0)

        rss_start = rss_peak = worker.rss_mb()
        peak_lag, lag, done_at = 0.0, 0.0, None
        total = calibration + len(events)
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        deadline = time.monotonic() + seconds * 3 + recovery_timeout_s
        while time.monotonic() < deadline and worker.alive:
            time.sleep(SAMPLE_EVERY_S)
            rss_peak = max(rss_peak, worker.rss_mb())
            lag = _lag(worker.metrics())
            peak_lag = max(peak_lag, lag)
            if done_at is None and not producer.is_alive():
                done_at = time.perf_counter()
            if done_at is not None and worker.scored() >= total and lag == 0:
                break
        producer.join(timeout=5)
        recovered = done_at is not None and worker.scored() >= total and lag == 0
        recovery_s = time.perf_counter() - done_at if done_at is not None else float("nan")
        alive = worker.alive
        audit = asyncio.run(audit_delivery(bootstrap, [scores], total))
    finally:
        worker.stop()
    return OverloadResult(
        capacity=capacity,
        offered_rate=offered,
        produced_rate=len(events) / produced_s[0] if produced_s else 0.0,
        produced=len(events),
        peak_lag=peak_lag,
        final_lag=lag,
        recovery_s=recovery_s,
        rss_start_mb=rss_start,
        rss_peak_mb=rss_peak,
        lost=audit.lost,
        duplicated=audit.duplicated,
        alive=alive,
        recovered=recovered,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--factor", type=float, default=2.0, help="produce at factor x measured capacity")
    ap.add_argument("--seconds", type=float, default=120.0, help="how long the overload lasts")
    ap.add_argument("--batch", type=int, default=32, help="the worker's STREAM_AE_BATCH_MAX_SIZE")
    ap.add_argument("--calibration", type=int, default=20_000, help="events of the capacity measurement")
    args = ap.parse_args()
    with bench_environment(args.bootstrap, "stream-ae-overload-") as env:
        log = env.work / "worker.log"
        result = run_overload(
            env.bootstrap,
            env.registry,
            f"overload-{time.time_ns()}",
            log,
            factor=args.factor,
            seconds=args.seconds,
            batch=args.batch,
            calibration=args.calibration,
        )
    print(f"overload {args.factor:g}x for {args.seconds:g} s, worker batch {args.batch} (log: {log})")
    for name, value in asdict(result).items():
        print(f"  {name:14s} {value:,.1f}" if isinstance(value, float) else f"  {name:14s} {value}")


if __name__ == "__main__":
    main()
