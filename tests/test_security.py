"""Security plumbing on a real broker: an SSL listener (certificates made here with openssl)
and SASL/SCRAM; secrets stay out of logs and /metrics."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_ae.kafka.admin import ensure_topics
from stream_ae.kafka.local import LocalKafka, free_port
from stream_ae.settings import Settings
from stream_ae.tools.produce import send_events
from stream_ae.tools.synthetic import transactions
from stream_ae.tools.worker_process import WorkerProcess, worker_env
from tests.streaming import publish_model, run, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
PASSWORD = "s3cr3t-scram-password-do-not-log"


def _certs(d: Path) -> tuple[Path, Path]:
    """A CA, and a broker certificate for 127.0.0.1 signed by it; returns (keystore, ca)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates")

    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
       "-subj", "/CN=stream-ae-test-ca")  # fmt: skip
    sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "broker.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    sh("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.p8")
    keystore = d / "keystore.pem"
    keystore.write_text((d / "broker.p8").read_text() + (d / "broker.pem").read_text())
    return keystore, d / "ca.pem"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalKafka, int, int, Path]]:
    certs = tmp_path_factory.mktemp("certs")
    keystore, ca = _certs(certs)
    broker = LocalKafka(
        tmp_path_factory.mktemp("secure-kafka"), die_with_parent=True,
        format_args=("--add-scram", f"SCRAM-SHA-256=[name=alice,password={PASSWORD}]"),
    )  # fmt: skip
    ssl_port, sasl_port = free_port(), free_port()
    plain, ctrl = broker.port, broker.controller_port
    broker.extra_properties = {
        "listeners": f"PLAINTEXT://127.0.0.1:{plain},CONTROLLER://127.0.0.1:{ctrl},"
        f"SSL://127.0.0.1:{ssl_port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{plain},SSL://127.0.0.1:{ssl_port},"
        f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca),
        "sasl.enabled.mechanisms": "SCRAM-SHA-256",
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
    }
    broker.start()
    yield broker, ssl_port, sasl_port, ca
    broker.stop()


@pytest.mark.parametrize("protocol", ["SSL", "SASL_PLAINTEXT"])
def test_worker_connects_securely_and_keeps_secrets(
    secure_broker: tuple[LocalKafka, int, int, Path], protocol: str, topic_name: str, tmp_path: Path
) -> None:
    broker, ssl_port, sasl_port, ca = secure_broker
    registry = tmp_path / "models"
    publish_model(registry, "v1")
    run(ensure_topics({"bootstrap_servers": broker.bootstrap_servers}, {topic_name: 2}))
    if protocol == "SSL":
        extra = {"STREAM_AE_SECURITY_PROTOCOL": "SSL", "STREAM_AE_SSL_CAFILE": str(ca)}
        bootstrap = f"127.0.0.1:{ssl_port}"
    else:
        extra = {
            "STREAM_AE_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAM_AE_SASL_MECHANISM": "SCRAM-SHA-256",
            "STREAM_AE_SASL_USERNAME": "alice", "STREAM_AE_SASL_PASSWORD": PASSWORD,
        }  # fmt: skip
        bootstrap = f"127.0.0.1:{sasl_port}"
    worker = WorkerProcess(worker_env(bootstrap, registry, topic_name, **extra), tmp_path / "worker.log").start()
    try:
        events, _ = transactions(2_000, seed=31)
        run(send_events({"bootstrap_servers": broker.bootstrap_servers}, topic_name, events))
        assert wait_for(lambda: worker.scored() >= len(events), 60)
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics") as r:
            exported = r.read().decode()
    finally:
        worker.stop()
    assert PASSWORD not in exported
    assert PASSWORD not in (tmp_path / "worker.log").read_text()


def test_settings_never_print_the_password() -> None:
    s = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="alice", sasl_password=PASSWORD)  # type: ignore[arg-type]
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.model_dump())
    assert s.kafka_client_kwargs()["sasl_plain_password"] == PASSWORD
