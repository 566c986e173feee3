"""The hot path without Kafka: every record is scored or dead-lettered, whatever its bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_ae.entities.store import EntityStore
from stream_ae.lifecycle.artifacts import load_artifact
from stream_ae.output.route import Routed, Topics
from stream_ae.pipeline import ActiveModel, process_batch
from stream_ae.tools.synthetic import CARD_ENTITY, CARD_SCHEMA, transactions
from trainer.train import fit_events

TOPICS = Topics("out", "dlq", "scores")


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_700_000_000_000


def read(routed: Routed, topic: str) -> list[dict[str, object]]:
    out = routed.outputs.get(topic)
    return [orjson.loads(v) for v in out.values] if out else []


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ActiveModel:
    events, _ = transactions(5000, seed=1)
    fitted = fit_events(events, schema=CARD_SCHEMA, max_steps=300, min_steps=300, device="cpu", target_rate=0.01)
    path = fitted.save(tmp_path_factory.mktemp("m") / "m", version="t1")
    return ActiveModel(load_artifact(Path(path), device="cpu"), top_k=3)


def test_routes_good_events_and_dead_letters_bad_ones(model: ActiveModel) -> None:
    good, _ = transactions(50, seed=2)
    attack, _ = transactions(1, seed=3, anomaly_rate=1.0)
    values = [orjson.dumps(e) for e in good + attack] + [b"\x00\x01", b"[]", orjson.dumps({"amount": 1})]
    keys = [e["card"].encode() for e in good + attack] + [None] * 3
    records = [Rec("in", 0, i, k, v) for i, (k, v) in enumerate(zip(keys, values, strict=True))]
    routed = process_batch(records, model, TOPICS, max_message_bytes=10_000, entities=EntityStore(CARD_ENTITY))
    assert routed.n_scored == 51 and sum(routed.dead_reasons.values()) == 3
    scores = read(routed, "scores")
    assert sorted(s["source"]["offset"] for s in scores) == list(range(51))
    anomalies = read(routed, "out")
    assert any(a["event_id"] == attack[0]["id"] for a in anomalies)
    top = next(a for a in anomalies if a["event_id"] == attack[0]["id"])["top_features"]
    assert len(top) == 3 and all(f["field"] in model.explainer.names for f in top)


hostile = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from(["amount", "country", "ts", "x"]), st.none() | st.integers() | st.text(), max_size=8
        ),
    ),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(0, 3000)),
    st.builds(lambda s: s.encode("utf-8", "surrogatepass"), st.text(max_size=50)),
    st.none(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hostile, min_size=1, max_size=20))
def test_fuzz_every_record_is_accounted_for(model: ActiveModel, values: list[bytes | None]) -> None:
    good, _ = transactions(3, seed=4)
    values = values + [orjson.dumps(e) for e in good]
    records = [Rec("in", 0, i, b"k", v) for i, v in enumerate(values)]
    routed = process_batch(records, model, TOPICS, max_message_bytes=2_000, entities=EntityStore(CARD_ENTITY))
    assert routed.n_scored + sum(routed.dead_reasons.values()) == len(records)
    dead = read(routed, "dlq")
    assert len(dead) == sum(routed.dead_reasons.values())
    assert all(d["reason"] and d["source"]["topic"] == "in" for d in dead)
