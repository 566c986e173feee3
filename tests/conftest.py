"""Shared fixtures: one real Kafka broker per test session, unique topic names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_ae.kafka.local import KafkaLocalError, LocalKafka


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, one compute thread per test process: three processes that train at once
    with torch's default of a thread per core slowed CPU-bound tests several-fold on 2 cores
    (OpenMP threads spinning against each other); the workers the tests start set their own."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from stream_ae.operation.runtime import limit_threads

        limit_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the broker is a ``kafka`` test, whether or not it says so: the fast tier
    (``make test-fast``, ``-m "not kafka and not prometheus and not slow"``) never starts one."""
    for item in items:
        if "kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)
    # the long tests first: the xdist workers take them while the short ones fill the gaps, so
    # that the run does not end waiting on one long test started last (a stable sort)
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") or item.get_closest_marker("kafka") else 1)


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained test models of this run, in a folder its xdist workers share: each model is
    fitted once per run, not once per worker (:func:`tests.streaming.card_model`)."""
    import tests.streaming

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "trained-models"
    root.mkdir(exist_ok=True)
    tests.streaming.MODEL_CACHE = root
    return root


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A real single-node KRaft broker on 127.0.0.1, shared by the whole test run.

    The broker dies with the test process (PR_SET_PDEATHSIG), so a killed run leaves
    nothing behind. Under CI a broker that cannot start fails the run instead of skipping.
    """
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), die_with_parent=True)
    try:
        broker.start()
    except KafkaLocalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"local Kafka broker unavailable: {exc}")
    yield broker
    broker.stop()


@pytest.fixture
def bootstrap(kafka_broker: LocalKafka) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (a prefix to derive several from)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"t-{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tmp_models(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model registry holding "v1", a small NCAE trained on synthetic transactions."""
    from tests.streaming import publish_model

    root = tmp_path_factory.mktemp("registry")
    publish_model(root, "v1")
    return root
