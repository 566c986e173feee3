"""``stream-ae worker`` as a child process with its own ports: for tests, benchmarks and tools
that drive a real worker from outside (start, wait until ready, scrape, measure, stop).

Example (a real broker needed):
    >>> worker = WorkerProcess({"STREAM_AE_INPUT_TOPICS": "events"}, Path("w.log")).start()  # doctest: +SKIP
    >>> worker.metrics()["stream_ae_events_scored_total"], worker.rss_mb()                 # doctest: +SKIP
    (0.0, 590.3)
    >>> worker.stop()                                                                       # doctest: +SKIP
    0
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream_ae.kafka.local import free_port
from stream_ae.operation.metrics import scrape


def worker_env(bootstrap: str, registry: Path, input_topic: str, **extra: str) -> dict[str, str]:
    """Settings for a worker reading ``input_topic``, every other topic, group and app id
    named after it (so runs on fresh topics never share state); ``extra`` overrides."""
    return {
        "STREAM_AE_BOOTSTRAP_SERVERS": bootstrap,
        "STREAM_AE_MODEL_DIR": str(registry),
        "STREAM_AE_INPUT_TOPICS": input_topic,
        "STREAM_AE_OUTPUT_TOPIC": f"{input_topic}.anomalies",
        "STREAM_AE_DEAD_LETTER_TOPIC": f"{input_topic}.dlq",
        "STREAM_AE_CONTROL_TOPIC": f"{input_topic}.control",
        "STREAM_AE_GROUP_ID": f"{input_topic}.workers",
        "STREAM_AE_APP_ID": f"{input_topic}-app",
        "STREAM_AE_BATCH_MAX_WAIT_MS": "20",
        "STREAM_AE_LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass
class WorkerProcess:
    """One worker subprocess: ``env`` adds to this process's environment; output goes to
    ``log_path``; the metrics and web ports are free ones picked here."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)

    def start(self, timeout_s: float = 60.0) -> WorkerProcess:
        """Spawn the worker and wait until ``/healthz`` says ready (raises with the log's tail)."""
        env = {
            **os.environ,
            **self.env,
            "STREAM_AE_METRICS_PORT": str(self.metrics_port),
            "STREAM_AE_WEB_PORT": str(self.web_port),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream_ae.tools.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if self.health().get("ready"):
                return self
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready:\n{self.log_path.read_text()[-3000:]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """``/healthz`` as a dict (empty while it cannot be reached within ``timeout_s``).

        Five seconds, not one: on a loaded 2-core CI host a worker busy with a batch answered
        later than one second, and a single read then looked like a dead worker.
        """
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=timeout_s) as r:
                return dict(orjson.loads(r.read()))
        except Exception:
            return {}

    def metrics(self) -> dict[str, float]:
        """Scrape ``/metrics``: ``name{labels}`` -> value (empty while it cannot be reached
        within five seconds: a loaded CI host answers late, see :meth:`health`)."""
        try:
            return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout_s=5.0)
        except OSError:
            return {}

    def scored(self) -> float:
        """The worker's ``stream_ae_events_scored_total`` (0 while it cannot be scraped)."""
        return self.metrics().get("stream_ae_events_scored_total", 0.0)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the worker's log (to explain a failed check)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_mb(self) -> float:
        """Resident memory of the worker process in MiB (0 when it is not running)."""
        if not self.alive:
            return 0.0
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Send ``sig`` (SIGKILL for a crash), wait, kill when it hangs; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
