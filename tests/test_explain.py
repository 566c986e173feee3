"""What the model expected: anomaly records name fields, with observed and expected values in
the event's own units (``stream-ae.anomaly/2``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest

from stream_ae.entities.store import EntityStore
from stream_ae.features.encoder import FeatureEncoder, FeatureSchema, FieldKind, FieldSpec
from stream_ae.lifecycle.artifacts import load_artifact
from stream_ae.output.records import ANOMALY_SCHEMA, anomaly_schema
from stream_ae.output.route import Topics
from stream_ae.pipeline import ActiveModel, process_batch
from stream_ae.scoring.explain import FieldExplainer
from stream_ae.tools.synthetic import transactions
from tests.streaming import card_model
from tests.test_pipeline import Rec

TOPICS = Topics("out", "dlq", None)


def test_the_encoding_inverts_field_by_field() -> None:
    schema = FeatureSchema(
        (
            FieldSpec("amount", FieldKind.NUMERIC, log=True),
            FieldSpec("temp", FieldKind.NUMERIC, required=False),
            FieldSpec("country", FieldKind.CATEGORICAL),
            FieldSpec("merchant", FieldKind.CATEGORICAL, hash_buckets=8),
            FieldSpec("online", FieldKind.BOOLEAN),
            FieldSpec("ts", FieldKind.TIMESTAMP),
        )
    )
    rng = np.random.default_rng(0)
    events = [
        {
            "amount": float(rng.lognormal(3, 1)),
            "temp": float(rng.normal(20, 5)),
            "country": str(rng.choice(["DE", "FR", "NG"])),
            "merchant": f"m{rng.integers(100)}",
            "online": bool(rng.random() < 0.3),
            "ts": 1_764_000_000.0 + float(rng.uniform(0, 14 * 86400)),
        }
        for _ in range(300)
    ]
    enc = FeatureEncoder(schema).fit(events)
    fields = {f.spec.name: f for f in enc.field_columns()}
    assert sorted(c for f in fields.values() for c in f.all_columns) == list(range(enc.n_features))
    X = enc.transform(events[:20])
    for event, row in zip(events[:20], X, strict=True):
        assert enc.decode_field(fields["amount"], row)["value"] == pytest.approx(event["amount"], rel=1e-5)
        temp = enc.decode_field(fields["temp"], row)
        assert temp["value"] == pytest.approx(event["temp"], rel=1e-4) and temp["probability_missing"] == 0.0
        country = enc.decode_field(fields["country"], row)
        assert country["value"] == event["country"] and country["probability"] == 1.0
        assert enc.decode_field(fields["merchant"], row) == {"value": None, "unavailable": "hashed_category"}
        assert enc.decode_field(fields["online"], row)["value"] is event["online"]
        ts = enc.decode_field(fields["ts"], row)
        hour = (event["ts"] % 86400) / 3600
        assert min(abs(ts["hour_of_day"] - hour), 24 - abs(ts["hour_of_day"] - hour)) < 1e-3
        assert ts["day_of_week"] == (int(event["ts"] // 86400) + 3) % 7  # 0 = Monday
    missing = enc.encode([{**events[0], "temp": None}]).X[0]
    assert enc.decode_field(fields["temp"], missing)["probability_missing"] == 1.0


@pytest.fixture(scope="module")
def card_active_model(tmp_path_factory: pytest.TempPathFactory) -> ActiveModel:
    """The card stream's model with its entity features (the demo's)."""
    path = card_model(1, 0.0).save(tmp_path_factory.mktemp("m") / "m", version="t1")
    return ActiveModel(load_artifact(Path(path), device="cpu"), top_k=3)


def _anomalies(model: ActiveModel, events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert model.entity is not None
    records = [Rec("in", 0, i, e["card"].encode(), orjson.dumps(e)) for i, e in enumerate(events)]
    routed = process_batch(records, model, TOPICS, max_message_bytes=100_000, entities=EntityStore(model.entity))
    out = routed.outputs.get("out")
    return {a["event_id"]: a for a in (orjson.loads(v) for v in (out.values if out else []))}


@pytest.mark.slow
def test_an_extreme_field_is_named_with_its_original_value_expected(card_active_model: ActiveModel) -> None:
    """Change one field of a normal event: the record names that field, and what the model
    expected is the field's original value: within the amount's interquartile range of it,
    or the original country."""
    events, _ = transactions(3000, seed=5)
    amounts = np.array([e["amount"] for e in events])
    iqr = float(np.subtract(*np.percentile(amounts, [75, 25])))
    chosen = np.random.default_rng(0).choice(np.arange(1000, 3000), 30, replace=False).tolist()

    def changed(field: str) -> tuple[dict[int, Any], dict[str, dict[str, Any]]]:
        stream = copy.deepcopy(events)
        originals = {i: stream[i][field] for i in chosen}
        for i in chosen:
            if field == "amount":
                stream[i]["amount"] = round(stream[i]["amount"] * 300, 2)
            else:
                stream[i]["country"] = "US" if stream[i]["country"] != "US" else "DE"
        return originals, _anomalies(card_active_model, stream)

    originals, records = changed("amount")
    for record in records.values():
        jsonschema.validate(record, ANOMALY_SCHEMA)
    entries = [next((t for t in records[events[i]["id"]]["top_features"] if t["field"] == "amount"), None)
               for i in chosen if events[i]["id"] in records]  # fmt: skip
    assert len(entries) == len(chosen), "every event with an amount 300 times its own is flagged"
    assert all(e is not None for e in entries), "and the record names the amount"
    close = [abs(e["expected"] - originals[i]) <= iqr for i, e in zip(chosen, entries, strict=True) if e]
    print(f"\n[explain] amount x300: expected within one IQR ({iqr:.1f}) of the original in {sum(close)}/30")
    assert sum(close) >= 0.7 * len(chosen)
    assert all(e and e["observed"] == round(originals[i] * 300, 2) for i, e in zip(chosen, entries, strict=True))

    originals, records = changed("country")
    flagged = [i for i in chosen if events[i]["id"] in records]
    assert len(flagged) >= 0.7 * len(chosen), "a card paying in a country it never used is flagged"
    named = {i: next((t for t in records[events[i]["id"]]["top_features"] if t["field"] == "country"), None)
             for i in flagged}  # fmt: skip
    assert sum(e is not None for e in named.values()) >= 0.9 * len(flagged)
    same = [i for i, e in named.items() if e and e["expected"] == originals[i]]
    print(f"[explain] country changed: {len(flagged)}/30 flagged, the original expected in {len(same)}")
    assert len(same) >= 0.7 * len(flagged)
    for e in named.values():
        if e:
            assert 0 <= e["observed_probability"] <= 1 and 0 < e["expected_probability"] <= 1


@pytest.mark.slow
def test_the_plain_reconstruction_would_expect_the_anomaly_itself(card_active_model: ActiveModel) -> None:
    """Why the expected value is read with its field masked: the plain reconstruction of an
    amount 300 times too large follows it far outside the normal range."""
    import torch

    events, _ = transactions(2000, seed=6)
    from stream_ae.features.featurize import featurize_file

    enc, det = card_active_model.encoder, card_active_model.loaded.detector
    i = 1500
    original = events[i]["amount"]
    events[i]["amount"] = original * 300
    batch = featurize_file(enc, events).batch
    j = int(np.flatnonzero(batch.ok == i)[0])
    explainer = FieldExplainer(enc)
    amount = explainer.names.index("amount")
    plain = explainer.entry(amount, 1.0, events[i], batch.X[j], det.reconstruct(batch.X[j : j + 1])[0])
    z = det.scale_tensor(torch.from_numpy(batch.X[j : j + 1]))
    with torch.inference_mode():
        idx, _, expected = det.explain_fields_tensor(z, torch.from_numpy(explainer.groups), len(explainer.names), 3)
    slot = idx[0].tolist().index(amount)
    masked = explainer.entry(amount, 1.0, events[i], batch.X[j], det.unscale(expected[0, slot : slot + 1].numpy())[0])
    assert abs(masked["expected"] - original) < abs(plain["expected"] - original)
    assert plain["expected"] > 5 * original


def test_version_1_records_stay_readable() -> None:
    v1 = {
        "schema": "stream-ae.anomaly/1", "event_id": "tx-1", "key": "tx-1",
        "source": {"topic": "events", "partition": 0, "offset": 1}, "event_time": 1.0, "detected_at": 2.0,
        "score": 9.0, "threshold": 3.0, "model_version": "v1",
        "top_features": [{"feature": "country=DE", "share": 0.45}], "event": {"id": "tx-1"},
    }  # fmt: skip
    jsonschema.validate(v1, anomaly_schema(v1))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**v1, "schema": "stream-ae.anomaly/2"}, anomaly_schema({"schema": "stream-ae.anomaly/2"}))


@pytest.mark.slow
def test_all_scores_records_carry_the_latent_code_when_asked(tmp_path: Path) -> None:
    """``STREAM_AE_SCORES_INCLUDE_CODE``: each all-scores record holds its event's code, the
    same as ``stream-ae embed`` gives for it; without the setting the records stay lean."""
    from stream_ae.features.featurize import featurize_file

    path = card_model(1, 0.0).save(tmp_path / "m", version="t1")
    events, _ = transactions(300, seed=8)
    records = [Rec("in", 0, i, e["card"].encode(), orjson.dumps(e)) for i, e in enumerate(events)]
    topics = Topics("out", "dlq", "scores")
    for with_codes in (True, False):
        model = ActiveModel(load_artifact(Path(path), device="cpu"), top_k=3, with_codes=with_codes)
        assert model.entity is not None
        routed = process_batch(records, model, topics, 100_000, entities=EntityStore(model.entity))
        scores = [orjson.loads(v) for v in routed.outputs["scores"].values]
        assert len(scores) == 300
        if not with_codes:
            assert all("code" not in s for s in scores)
            continue
        X = featurize_file(model.encoder, events, "card").batch.X
        want = model.loaded.detector.embed(X)
        got = np.array([s["code"] for s in scores])
        assert got.shape == (300, model.loaded.detector.hyper.latent_dim)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
