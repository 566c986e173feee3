"""What a stream-ae process takes of its host: CPU threads and scheduling priority.

Torch and the BLAS behind numpy each start a thread per core by default, and OpenMP threads
spin while they wait: two such processes on one host (a worker and a trainer, as the demo,
docker-compose and single-host deployments run them) fight over every core. On a 2-core host
a training run beside an evaluation took 42 times longer than alone. So each process sets its
own: the worker ``STREAM_AE_TORCH_THREADS`` (default 1: its event loop, the broker and the
trainer need the other cores), the trainer ``STREAM_AE_TRAINER_THREADS`` (default half the
cores) at ``STREAM_AE_TRAINER_NICE`` (default 10: the worker wins a contended core).

:func:`limit_threads` must run before numpy and torch are imported: the BLAS libraries read
their thread count from the environment when they load.

Example:
    >>> limit_threads(1, nice=0)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def default_trainer_threads() -> int:
    """Half of the cores this process may run on (at least one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def limit_threads(threads: int, interop_threads: int = 1, nice: int = 0) -> None:
    """Cap this process's compute threads (BLAS/OpenMP and torch) and lower its priority by
    ``nice``. An environment variable the user set for a BLAS library wins over ``threads``."""
    for name in BLAS_VARIABLES:
        os.environ.setdefault(name, str(threads))
    import torch  # after the environment: the BLAS libraries torch and numpy load read it

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(interop_threads)
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(nice)


def wait_for_stop_signal() -> int:
    """Block until SIGINT or SIGTERM; return it (a foreground command's Ctrl-C)."""
    got: list[int] = []
    done = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        got.append(signum)
        done.set()

    with _handlers(handler):
        while not done.wait(0.5):
            pass
    return got[0]


@contextlib.contextmanager
def on_stop_signal(action: Callable[[], Any]) -> Iterator[None]:
    """While inside, SIGINT or SIGTERM runs ``action`` (used while stopping: a second Ctrl-C
    forces the stop at once)."""

    def handler(_signum: int, _frame: Any) -> None:
        action()

    with _handlers(handler):
        yield


@contextlib.contextmanager
def _handlers(handler: Callable[[int, Any], None]) -> Iterator[None]:
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
