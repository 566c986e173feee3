"""A worker and a trainer on one host: how much each slows the other (with the default thread
limits: the worker's torch on 1 thread, the trainer's on half the cores at nice 10).

    python -m bench.sharing                        # its own local broker
    python -m bench.sharing --events 300000

In one run: (1) ``stream-ae trainer --once`` alone (window of 50,000 events at its default);
(2) a worker draining a backlog alone; (3) the same worker draining an equal backlog while a
trainer refresh runs beside it (both started together), timing both; (4) the worker's latency
at a fixed rate alone and during a refresh. Processes are started as the demo starts them, so
each applies its own ``STREAM_AE_*`` thread settings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.environment import bench_environment
from bench.throughput import fill, latency, worker_throughput


def trainer_once(bootstrap: str, registry: Path, topic: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "STREAM_AE_BOOTSTRAP_SERVERS": bootstrap,
        "STREAM_AE_MODEL_DIR": str(registry),
        "STREAM_AE_INPUT_TOPICS": topic,
        "STREAM_AE_CONTROL_TOPIC": f"{topic}.control",
        "STREAM_AE_TRAINER_METRICS_PORT": "0",
    }
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "stream_ae.tools.cli", "trainer", "--once"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def timed(proc: subprocess.Popen[bytes], start: float) -> float:
    proc.wait()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s for the latency runs")
    args = ap.parse_args()
    with bench_environment(args.bootstrap, "stream-ae-sharing-") as env:
        b, reg, work = env.bootstrap, env.registry, env.work
        alone_topic, shared_topic = f"alone-{time.time_ns()}", f"shared-{time.time_ns()}"
        asyncio.run(fill(b, alone_topic, args.events))
        asyncio.run(fill(b, shared_topic, args.events))
        start = time.perf_counter()
        trainer_alone = timed(trainer_once(b, reg, alone_topic, work / "trainer.log"), start)
        worker_alone = worker_throughput(b, reg, alone_topic, args.events, 2048, 50, work / "worker.log")
        start = time.perf_counter()
        trainer = trainer_once(b, reg, shared_topic, work / "trainer.log")
        worker_shared = worker_throughput(b, reg, shared_topic, args.events, 2048, 50, work / "worker.log")
        worker_done = time.perf_counter() - start
        trainer_shared = timed(trainer, start)
        lat_alone = latency(b, reg, f"lat-alone-{time.time_ns()}", 2048, 50, args.rate, work / "worker.log")
        trainer = trainer_once(b, reg, alone_topic, work / "trainer.log")
        lat_shared = latency(b, reg, f"lat-shared-{time.time_ns()}", 2048, 50, args.rate, work / "worker.log")
        trainer.wait()
    print(f"cores {os.cpu_count()}; {args.events:,} events; window 50,000")
    slower = trainer_shared / trainer_alone
    print(f"trainer refresh: alone {trainer_alone:.1f} s | beside a busy worker {trainer_shared:.1f} s "
          f"(x{slower:.2f}; the worker was busy for the first {worker_done:.1f} s)")  # fmt: skip
    print(f"worker: alone {worker_alone:,.0f} ev/s | during a refresh {worker_shared:,.0f} ev/s "
          f"(x{worker_shared / worker_alone:.2f})")  # fmt: skip
    for name, lat in (("alone", lat_alone), ("during a refresh", lat_shared)):
        if len(lat):
            print(f"latency at {args.rate:,.0f} ev/s {name}: p50 {np.percentile(lat, 50) * 1000:.1f} ms, "
                  f"p99 {np.percentile(lat, 99) * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
