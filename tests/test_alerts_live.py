"""The alert rules fire in a real Prometheus scraping a real worker.

Prometheus runs with ``deploy/prometheus/prometheus.yml`` (targets rewritten to this test's
ports) and the real ``alerts.yml``. The one test override (``LocalPrometheus``'s
``for_override`` and ``interval``): every rule's ``for:`` is 2 s and scrapes and evaluations
run every second, so that a 10-minute condition shows in seconds. No expression is changed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from stream_ae.kafka.admin import ensure_topics
from stream_ae.tools.produce import encode_events, send_raw
from stream_ae.tools.prometheus_local import LocalPrometheus, available
from stream_ae.tools.synthetic import CardStream
from stream_ae.tools.worker_process import WorkerProcess, worker_env
from tests.streaming import run, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_dead_letters_and_a_dead_worker_fire_their_alerts(
    bootstrap: str, topic_name: str, registry: Path, tmp_path: Path
) -> None:
    if not available():
        import os

        if os.environ.get("CI"):
            pytest.fail("prometheus missing: .ci/run installs Debian's prometheus package")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    worker = WorkerProcess(worker_env(bootstrap, registry, topic_name), tmp_path / "worker.log").start()
    prom = LocalPrometheus(
        tmp_path / "prometheus",
        {"stream-ae-worker": [f"127.0.0.1:{worker.metrics_port}"]},
        interval="1s",
        for_override="2s",
    ).start()
    stop = threading.Event()

    def traffic() -> None:  # a producer whose payloads are 20 % broken, for as long as the test wants
        stream = CardStream(seed=41)
        while not stop.is_set():
            payloads = encode_events(stream.next(400)[0])
            payloads[::5] = [(b"broken", b"{not json")] * len(payloads[::5])
            run(send_raw({"bootstrap_servers": bootstrap}, topic_name, payloads, rate=2000))

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        assert wait_for(lambda: "StreamAEDeadLetterRateHigh" in prom.firing(), timeout_s=90), prom.alerts()
        assert "StreamAEWorkerDown" not in prom.firing()
        stop.set()
        worker.stop()
        assert wait_for(lambda: "StreamAEWorkerDown" in prom.firing(), timeout_s=60), prom.alerts()
        down = next(a for a in prom.alerts() if a["labels"]["alertname"] == "StreamAEWorkerDown")
        assert down["labels"]["severity"] == "critical" and down["labels"]["job"] == "stream-ae-worker"
    finally:
        stop.set()
        worker.stop()
        prom.stop()
        sender.join(timeout=10)
        time.sleep(0.1)
