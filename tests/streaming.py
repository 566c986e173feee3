"""Helpers for tests that run real workers against the real broker."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from stream_ae.entities.spec import AlarmSpec
from stream_ae.lifecycle.artifacts import load_artifact
from stream_ae.lifecycle.registry import Registry
from stream_ae.settings import Settings
from stream_ae.tools.synthetic import CARD_SCHEMA, CARD_SCHEMA_STATELESS, transactions
from trainer.train import FittedModel, fit_events

# where card_model keeps its artifacts: conftest points it at the test run's temporary root,
# which its xdist workers share (None outside pytest: a fresh temporary folder, made when needed)
MODEL_CACHE: Path | None = None
FAST_MODEL = {"max_steps": 800, "min_steps": 800, "target_rate": 0.001, "seed": 0, "device": "cpu"}


@functools.lru_cache(maxsize=8)
def card_model(seed: int, amount_shift: float, stateless: bool = False) -> FittedModel:
    """A small NCAE fitted on 20,000 synthetic normal transactions: fitted once per test run,
    and shared by the xdist workers through an artifact on disk (the first to need it fits it
    under a file lock; the others load it, which gives the same scores)."""
    global MODEL_CACHE
    if MODEL_CACHE is None:
        MODEL_CACHE = Path(tempfile.mkdtemp(prefix="stream-ae-test-models-"))
    path = MODEL_CACHE / f"card-{seed}-{amount_shift}-{'stateless' if stateless else 'entities'}"
    with FileLock(f"{path}.lock"):
        if not (path / "X.npy").exists():
            events, _ = transactions(20_000, seed=seed, amount_shift=amount_shift)
            fitted = fit_events(events, schema=CARD_SCHEMA_STATELESS if stateless else CARD_SCHEMA, **FAST_MODEL)
            fitted.save(path / "artifact", version="cached")
            np.save(path / "X.npy", fitted.X)
            return fitted
    loaded = load_artifact(path / "artifact", device="cpu")
    return FittedModel(loaded.detector, loaded.encoder, np.load(path / "X.npy"))


# the card model with the post-score stage: short histories (a card has a few events a day),
# so that the broker tests see likelihoods, alarms and incidents
CARD_ALARM = AlarmSpec(likelihood=True, short=2, half_life=5, warmup=2, cooldown=86_400)


def with_alarm(fitted: FittedModel, alarm: AlarmSpec = CARD_ALARM) -> FittedModel:
    """The same model (same detector, same features) with an alarm section in its schema."""
    assert fitted.encoder is not None and fitted.encoder.schema.entity is not None
    encoder = copy.copy(fitted.encoder)
    schema = encoder.schema
    encoder.schema = dataclasses.replace(schema, entity=dataclasses.replace(schema.entity, alarm=alarm))
    return FittedModel(fitted.detector, encoder, fitted.X)


def publish_model(
    registry_dir: Path, version: str, *, seed: int = 1, amount_shift: float = 0.0, stateless: bool = False
) -> str:
    """Publish a small NCAE trained on synthetic normal transactions, with the card stream's
    entity features unless ``stateless`` (trained once per choice for the whole test session)."""
    fitted = card_model(seed, amount_shift, stateless)
    Registry(registry_dir).publish(lambda tmp: fitted.save(tmp, version=version), version)
    return version


def wait_for(predicate: Any, timeout_s: float = 60.0, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def trainer_settings(bootstrap: str, registry: Path, topic: str, **kw: Any) -> Settings:
    """Settings for a trainer reading ``topic`` on the test's broker, publishing into
    ``registry``, announcing on ``<topic>.control`` and reading verdicts on ``<topic>.feedback``."""
    kw.setdefault("feedback_topic", f"{topic}.feedback")
    kw.setdefault("dead_letter_topic", f"{topic}.dlq")
    return Settings(
        bootstrap_servers=bootstrap, model_dir=registry, input_topics=[topic], control_topic=f"{topic}.control", **kw
    )
