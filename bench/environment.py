"""What every Kafka benchmark starts from: a broker (its own local one unless given) and a
registry holding one small NCAE trained on synthetic card transactions."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_ae.kafka.local import LocalKafka
from stream_ae.lifecycle.registry import Registry
from stream_ae.tools.synthetic import CARD_SCHEMA, CARD_SCHEMA_STATELESS, transactions
from trainer.train import FittedModel, fit_events


@dataclass(frozen=True)
class BenchEnvironment:
    bootstrap: str
    registry: Path
    work: Path
    fitted: FittedModel


@contextmanager
def bench_environment(bootstrap: str | None, prefix: str, variant: str = "ncae") -> Iterator[BenchEnvironment]:
    """Start a local broker when ``bootstrap`` is None (stopped on exit) and publish the
    benchmark model (``variant``) as version ``bench`` in a fresh registry under a temporary folder."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    broker = None
    if bootstrap is None:
        broker = LocalKafka(work / "kafka", die_with_parent=True, heap="1g")
        broker.start()
        bootstrap = broker.bootstrap_servers
    try:
        registry = publish_bench_model(work / "models", variant)
        fitted = _fitted(variant)
        yield BenchEnvironment(bootstrap, registry, work, fitted)
    finally:
        if broker is not None:
            broker.stop()


@functools.lru_cache(maxsize=4)
def _fitted(variant: str, stateless: bool = False) -> FittedModel:
    return fit_bench_model(transactions(20_000, seed=1)[0], stateless, variant)


def publish_bench_model(root: Path, variant: str = "ncae", stateless: bool = False) -> Path:
    """A registry at ``root`` holding the benchmark model (``variant``; the card stream's entity
    features unless ``stateless``) as version ``bench``."""
    return publish_as_bench(root, _fitted(variant, stateless))


def publish_as_bench(root: Path, fitted: FittedModel) -> Path:
    """A registry at ``root`` holding ``fitted`` as version ``bench``."""
    Registry(root).publish(lambda tmp: fitted.save(tmp, version="bench"), "bench")
    return root


def fit_bench_model(events: list[dict[str, Any]], stateless: bool = False, variant: str = "ncae") -> FittedModel:
    """The benchmark model's training (800 steps, target rate 0.1 %) on ``events``, with the
    card stream's entity features unless ``stateless``."""
    schema = CARD_SCHEMA_STATELESS if stateless else CARD_SCHEMA
    return fit_events(events, schema=schema, variant=variant, max_steps=800, min_steps=800, target_rate=0.001)


@dataclass
class InputRecord:
    """What the hot path reads of a Kafka record (:class:`stream_ae.input.decode.RawRecord`),
    for the benchmarks that run ``pipeline.process_batch`` in-process."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_790_000_000_000
