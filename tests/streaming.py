"""Helpers for tests that run real workers against the real broker."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from stream_ae.kafka_local import free_port
from stream_ae.metrics import scrape
from stream_ae.registry import Registry
from stream_ae.synthetic import transactions
from trainer.train import FittedModel, fit_events

FAST_MODEL = {"max_steps": 800, "min_steps": 800, "target_rate": 0.001, "seed": 0, "device": "cpu"}


@functools.lru_cache(maxsize=8)
def _fitted(seed: int, amount_shift: float) -> FittedModel:
    events, _ = transactions(20_000, seed=seed, amount_shift=amount_shift)
    return fit_events(events, **FAST_MODEL)


def publish_model(registry_dir: Path, version: str, *, seed: int = 1, amount_shift: float = 0.0) -> str:
    """Publish a small NCAE trained on synthetic normal transactions (trained once per
    ``seed``/``amount_shift`` for the whole test session)."""
    fitted = _fitted(seed, amount_shift)
    Registry(registry_dir).publish(lambda tmp: fitted.save(tmp, version=version), version)
    return version


@dataclass
class WorkerProcess:
    """``stream-ae worker`` in a subprocess, with its own ports and log file."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)

    def start(self, timeout_s: float = 60.0) -> WorkerProcess:
        env = {
            **os.environ,
            **self.env,
            "STREAM_AE_METRICS_PORT": str(self.metrics_port),
            "STREAM_AE_WEB_PORT": str(self.web_port),
            "PYTHONUNBUFFERED": "1",
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_ae.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if self.health().get("ready"):
                return self
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready:\n{self.log_path.read_text()[-3000:]}")

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=1) as r:
                return dict(orjson.loads(r.read()))
        except Exception:
            return {}

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics: ``name{labels}`` -> value."""
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def worker_env(bootstrap: str, registry: Path, input_topic: str, **extra: str) -> dict[str, str]:
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


async def read_all(
    bootstrap: str, topics: Iterable[str], *, until: int | None = None, idle_s: float = 3.0, timeout_s: float = 90.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topics`` from the start: stop once ``until`` records arrived (and the
    topics stayed idle ``idle_s``), or after ``timeout_s``."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        start = last = time.monotonic()
        while time.monotonic() - start < timeout_s:
            got = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for msgs in got.values():
                out.extend(msgs)
            now = time.monotonic()
            if got:
                last = now
            elif (until is None or len(out) >= until) and now - last > idle_s:
                break
    finally:
        await consumer.stop()
    return out


def wait_for(predicate: Any, timeout_s: float = 60.0, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


def run(coro: Any) -> Any:
    return asyncio.run(coro)
