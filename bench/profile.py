"""Where a worker's time goes while it drains a backlog: a py-spy profile of every thread.

    python -m bench.profile                       # its own local broker, 150,000 events
    python -m bench.profile --events 300000 --variant ae --top 25

A topic (4 partitions) is pre-filled with synthetic card transactions; one worker (all-scores
topic on, like ``bench.throughput``) drains it while ``py-spy record`` samples it from outside
(``--nonblocking``: the worker is never paused). The table lists the functions that were on
CPU the most: *self* is the share of samples in which the function itself was running,
*total* the share in which it was anywhere on the stack. Idle samples (threads waiting in
``select``, on a lock or a queue) are left out, so the shares are of busy time across threads.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.environment import bench_environment
from bench.throughput import fill, start_worker


def read_raw(path: Path) -> tuple[Counter[str], Counter[str], int, Counter[str]]:
    """py-spy's raw (collapsed) format: ``frame;frame;... count`` per line, leaf last.
    Returns (self samples per function, total samples per function, all samples, samples per
    thread kind: the executor threads' or the event loop's)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
        threads["executor (process_batch)" if "_worker (thread.py)" in frames else "event loop (Kafka I/O)"] += k
        n += k
    return own, total, n, threads


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (file.py)``: one row per function, not per line."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({file.rsplit('/', 1)[-1]})" if file else name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--variant", default="ncae", help="the worker's model variant")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--gil", action="store_true", help="only samples holding the GIL (what serialises the threads)")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with bench_environment(args.bootstrap, "stream-ae-profile-", variant=args.variant) as env:
        topic = f"profile-{time.time_ns()}"
        asyncio.run(fill(env.bootstrap, topic, args.events))
        worker = start_worker(env.bootstrap, env.registry, topic, args.batch, 50, env.work / "worker.log")
        assert worker.proc is not None
        out = env.work / "profile.txt"
        try:
            while worker.scored() == 0:
                time.sleep(0.02)
            started = time.perf_counter()
            spy_proc = subprocess.Popen(
                [spy, "record", "--pid", str(worker.proc.pid), "--format", "raw", "--output", str(out),
                 "--rate", str(args.rate), "--nonblocking", *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            while worker.scored() < args.events and time.perf_counter() - started < 600:
                time.sleep(0.2)  # a scrape is work for the worker too
            seconds = time.perf_counter() - started
            spy_proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy_proc.wait(30)
        finally:
            worker.stop()
        own, total, n, threads = read_raw(out)
    what = "samples holding the GIL" if args.gil else "busy samples"
    rate = args.events / seconds
    print(f"variant {args.variant}, batch {args.batch}: {args.events:,} events in {seconds:.1f} s "
          f"({rate:,.0f} ev/s); {n:,} {what} in {seconds * args.rate:,.0f} sampling ticks")  # fmt: skip
    print("; ".join(f"{kind} {100 * k / n:.0f} %" for kind, k in threads.most_common()))
    print("| function | self | total |\n|---|---|---|")
    for name, k in own.most_common(args.top):
        print(f"| `{name}` | {100 * k / n:.1f} % | {100 * total[name] / n:.1f} % |")


if __name__ == "__main__":
    main()
