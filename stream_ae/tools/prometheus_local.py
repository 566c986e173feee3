"""A real Prometheus server on 127.0.0.1, run from the project's own scrape config and alert
rules (``deploy/prometheus/``): the demo's, and the alert tests'.

The scrape config is ``deploy/prometheus/prometheus.yml`` with each job's targets rewritten to
the ports in use; the rules are ``alerts.yml`` as they are. A test may shorten the rules'
``for:`` durations and the scrape and evaluation intervals (``for_override``, ``interval``):
those are the only changes, never a rule's expression. Debian's ``prometheus`` package holds
the server (``.ci/run`` installs it).

Example (the server installed):
    >>> prom = LocalPrometheus(Path("/tmp/prom"), {"stream-ae-worker": ["127.0.0.1:9108"]})  # doctest: +SKIP
    >>> prom.start(); prom.firing()                                                          # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stream_ae.kafka.local import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


class PrometheusError(RuntimeError):
    """The Prometheus server is missing, or did not start."""


def available() -> bool:
    return shutil.which("prometheus") is not None and (DEPLOY / "prometheus.yml").exists()


@dataclass
class LocalPrometheus:
    """One Prometheus process scraping ``targets`` (job name -> host:port list)."""

    data_dir: Path
    targets: dict[str, list[str]]
    port: int = field(default_factory=free_port)
    interval: str | None = None  # scrape and evaluation interval; None: the config's
    for_override: str | None = None  # every rule's `for:`; None: the rules' own
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        """The deploy config with these targets (and the test overrides), next to the rules."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
        if self.for_override is not None:
            for group in rules["groups"]:
                for rule in group["rules"]:
                    rule["for"] = self.for_override
        if self.interval is not None:
            config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = self.interval
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": self.targets.get(job["job_name"], [])}]
        (self.data_dir / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config["rule_files"] = [str(self.data_dir / "alerts.yml")]
        path = self.data_dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, timeout_s: float = 30.0) -> LocalPrometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not installed (Debian: apt-get install prometheus)")
        config = self.write_config()
        log = (self.data_dir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C reaches whoever started it, not the server
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited: see {self.data_dir / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise PrometheusError("prometheus did not become ready")

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}", timeout=2) as r:
            return json.loads(r.read())["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with their labels and state."""
        try:
            return list(self.api("alerts")["alerts"])
        except OSError:
            return []

    def firing(self) -> list[str]:
        return sorted({a["labels"]["alertname"] for a in self.alerts() if a.get("state") == "firing"})

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
