"""Ctrl-C in a terminal: the command stops, in order, soon, and leaves no process behind.

Each command runs under a pseudo-terminal as a user's shell would run it (its own session and
process group, the terminal as its controlling tty); Ctrl-C is SIGINT to that process group,
which is what a terminal sends.
"""

from __future__ import annotations

import os
import pty
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from stream_ae.kafka.admin import ensure_topics
from stream_ae.kafka.local import free_port
from stream_ae.tools.worker_process import worker_env
from tests.streaming import publish_model, run, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
STOP_WITHIN_S = 20.0


class Terminal:
    """A command under a pseudo-terminal; ``output`` collects what it printed."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.output = ""
        pid, fd = pty.fork()
        if pid == 0:  # the child: its own session, the terminal as controlling tty
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "stream_ae.tools.cli", *args], {**os.environ, **env})
        self.pid, self.fd = pid, fd
        self.status: int | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk.decode(errors="replace")

    def wait_for(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            if text in self.output:
                return True
            time.sleep(0.2)
        return text in self.output

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def descendants(self) -> set[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        out: set[int] = set()
        todo = [self.pid]
        while todo:
            for c in children.get(todo.pop(), []):
                out.add(c)
                todo.append(c)
        return out

    def ctrl_c(self) -> float:
        """SIGINT to the foreground process group; seconds until the command exited."""
        start = time.monotonic()
        os.killpg(os.getpgid(self.pid), signal.SIGINT)
        while self.alive() and time.monotonic() - start < STOP_WITHIN_S + 30:
            time.sleep(0.1)
        return time.monotonic() - start

    def kill(self) -> None:
        if self.alive():
            os.killpg(os.getpgid(self.pid), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_and_check(term: Terminal) -> str:
    left_before = term.descendants()
    took = term.ctrl_c()
    time.sleep(1.0)
    left = {p for p in left_before if _alive(p)}
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert took < STOP_WITHIN_S, f"stopped after {took:.1f} s:\n{term.output[-2000:]}"
    assert not left, f"processes left behind: {left}"
    return term.output


def test_kafka_start_in_the_foreground_stops_on_ctrl_c(tmp_path: Path) -> None:
    term = Terminal(["kafka", "start", "--foreground", "--dir", str(tmp_path / "kafka")], {}, tmp_path)
    try:
        assert term.wait_for("Kafka is up", timeout_s=120), term.output
        assert term.descendants(), "the broker runs as a child"
        out = stop_and_check(term)
    finally:
        term.kill()
    assert "Kafka stopped" in out and "Traceback" not in out


def test_a_foreground_worker_stops_on_ctrl_c(bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    publish_model(registry, "v1")
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    web = free_port()
    env = {**worker_env(bootstrap, registry, topic_name), "STREAM_AE_WEB_PORT": str(web),
           "STREAM_AE_METRICS_PORT": str(free_port())}  # fmt: skip
    term = Terminal(["worker"], env, tmp_path)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        out = stop_and_check(term)
    finally:
        term.kill()
    assert "Traceback" not in out


def test_the_demo_stops_everything_on_one_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    publish_model(home / "models", "v1-initial")  # a model ready: the demo skips its first training
    term = Terminal(["demo", "--home", str(home), "--rate", "500"], {"COLUMNS": "100"}, tmp_path)
    try:
        assert term.wait_for("worker and trainer started", timeout_s=150), term.output
        assert term.wait_for("events sent", timeout_s=60), term.output  # the live view runs
        # broker, worker and trainer (and Prometheus when installed)
        assert wait_for(lambda: len(term.descendants()) >= 3, timeout_s=30), term.output
        out = stop_and_check(term)
    finally:
        term.kill()
    assert "stopped the producer, worker, trainer" in out
    assert "Traceback" not in out and "NodeNotReadyError" not in out
