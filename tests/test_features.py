"""Feature encoding: what a user sees when events are good, odd or hostile."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_ae.features.encoder import EncodeError, FeatureEncoder, FeatureSchema, FieldKind, FieldSpec

SAMPLE = [
    {
        "id": f"e{i}",
        "amount": float(i % 50),
        "country": ["DE", "FR", "US"][i % 3],
        "card_present": i % 2 == 0,
        "ts": 1_700_000_000 + 60 * i,
        "tip": (None if i % 4 == 0 else 1.0),
    }
    for i in range(200)
]


def make_encoder() -> FeatureEncoder:
    schema = FeatureSchema.infer(SAMPLE, id_field="id", time_field="ts")
    return FeatureEncoder(schema).fit(SAMPLE)


def test_inferred_schema_kinds_and_optional_field() -> None:
    schema = FeatureSchema.infer(SAMPLE, id_field="id", time_field="ts")
    kinds = {f.name: (f.kind, f.required) for f in schema.fields}
    assert kinds == {
        "amount": (FieldKind.NUMERIC, True),
        "country": (FieldKind.CATEGORICAL, True),
        "card_present": (FieldKind.BOOLEAN, True),
        "ts": (FieldKind.TIMESTAMP, True),
        "tip": (FieldKind.NUMERIC, False),
    }


def test_encoding_is_robustly_scaled_and_one_hot() -> None:
    enc = make_encoder()
    X = enc.transform(SAMPLE)
    names = enc.feature_names
    assert X.shape == (200, len(names)) and X.dtype == np.float32
    amount = X[:, names.index("amount")]
    assert abs(float(np.median(amount))) < 0.05  # centred by the median
    onehot = X[:, [i for i, n in enumerate(names) if n.startswith("country=")]]
    assert (onehot.sum(1) == 1).all()
    assert X[0, names.index("tip__missing")] == 1.0 and X[1, names.index("tip__missing")] == 0.0


def test_unknown_category_goes_to_unknown_bucket() -> None:
    enc = make_encoder()
    X = enc.transform([{**SAMPLE[1], "country": "ZZ"}])
    assert X[0, enc.feature_names.index("country=<unknown>")] == 1.0


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"amount": "12"}, "amount", "wrong_type"),
        ({"amount": math.nan}, "amount", "non_finite"),
        ({"amount": math.inf}, "amount", "non_finite"),
        ({"amount": 10**400}, "amount", "non_finite"),
        ({"amount": None}, "amount", "missing_field"),
        ({"card_present": 1}, "card_present", "wrong_type"),
        ({"country": {"nested": [1]}}, "country", "wrong_type"),
        ({"ts": "not a date"}, "ts", "bad_timestamp"),
    ],
)
def test_bad_values_name_the_field(patch: dict[str, object], field: str, reason: str) -> None:
    enc = make_encoder()
    with pytest.raises(EncodeError) as info:
        enc.transform([SAMPLE[0], {**SAMPLE[1], **patch}])
    assert (info.value.field, info.value.reason, info.value.row) == (field, reason, 1)


def test_encode_keeps_good_rows_and_reports_bad_ones() -> None:
    enc = make_encoder()
    batch = enc.encode([SAMPLE[0], {"amount": "x"}, SAMPLE[2]])
    assert batch.ok.tolist() == [0, 2] and batch.X.shape[0] == 2
    assert set(batch.errors) == {1}


def test_missing_required_field_is_reported() -> None:
    enc = make_encoder()
    event = dict(SAMPLE[3])
    del event["country"]
    assert enc.encode([event]).errors[0].reason == "missing_field"


def test_hashing_for_high_cardinality_is_stable() -> None:
    schema = FeatureSchema((FieldSpec("user", FieldKind.CATEGORICAL, hash_buckets=16),))
    enc = FeatureEncoder(schema).fit([{"user": f"u{i}"} for i in range(100)])
    a = enc.transform([{"user": "u7"}])
    again = FeatureEncoder.from_dict(enc.to_dict()).transform([{"user": "u7"}])
    assert a.shape == (1, 16) and np.array_equal(a, again)


def test_round_trip_through_dict_gives_identical_encoding() -> None:
    enc = make_encoder()
    again = FeatureEncoder.from_dict(enc.to_dict())
    assert np.array_equal(enc.transform(SAMPLE), again.transform(SAMPLE))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["amount", "country", "card_present", "ts", "tip", "x"]), json_values, max_size=6
        ),
        max_size=8,
    )
)
def test_fuzz_encode_never_crashes_and_never_emits_non_finite(events: list[dict[str, object]]) -> None:
    enc = make_encoder()
    batch = enc.encode(events)
    assert len(batch.ok) + len(batch.errors) == len(events)
    assert np.isfinite(batch.X).all()


def test_a_declared_unit_is_the_smallest_scale_and_is_checked() -> None:
    """A count declared with ``unit: 1`` is scaled by at least one count (its spread in the
    sample, one non-zero row of 1,000, is about 0.03), round-trips through the schema file, and a
    unit that is not a number >= 0 is refused when the schema is read."""
    schema = FeatureSchema.from_dict({"fields": [{"name": "retries", "kind": "numeric", "unit": 1}]})
    events = [{"retries": 0}] * 999 + [{"retries": 1}]
    encoder = FeatureEncoder(schema).fit(events)
    assert encoder.stats["retries"]["iqr"] == 1.0 and encoder.scale_floor().tolist() == [1.0]
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    assert "unit" not in FeatureSchema.from_dict({"fields": [{"name": "x", "kind": "numeric"}]}).to_dict()["fields"][0]
    for bad in (-1, "one", float("nan")):
        with pytest.raises(ValueError, match="unit"):
            FeatureSchema.from_dict({"fields": [{"name": "retries", "kind": "numeric", "unit": bad}]})


def test_a_field_that_is_not_a_model_input_is_still_checked_and_feeds_the_entity_features() -> None:
    """``input: false``: no column of its own, but a bad value still rejects its event, the
    entity features still read it, and the schema file keeps the declaration."""
    from stream_ae.features.featurize import featurize_file
    from trainer.train import fit_events

    schema = FeatureSchema.from_dict(
        {
            "fields": [{"name": "value", "kind": "numeric", "input": False}, {"name": "ts", "kind": "timestamp"}],
            "time_field": "ts",
            "entity": {"field": "series", "features": [{"delta_mean": ["value"], "rows": 5}]},
        }
    )
    events = [{"value": float(i % 7), "ts": 1_700_000_000 + 60 * i, "series": "a"} for i in range(300)]
    fitted = fit_events(events, schema=schema, max_steps=20, device="cpu")
    assert fitted.encoder is not None and fitted.encoder.feature_names == ["entity.value_delta5"]
    later = [{"value": "high", "ts": 1_700_000_400, "series": "a"}, {"value": 40.0, "ts": 1_700_000_460, "series": "a"}]
    feats = featurize_file(fitted.encoder, [*events[:5], *later])
    assert 5 in feats.batch.errors and "value" in str(feats.batch.errors[5]), "a bad value is still refused"
    assert feats.batch.ok.tolist() == [0, 1, 2, 3, 4, 6]
    assert feats.batch.X[-1, 0] > 5, "the entity feature sees the jump (38 against deltas of +-3) with no column for it"
    field = fitted.encoder.field_columns()[0]
    assert (
        field.columns == ()
        and fitted.encoder.decode_field(field, feats.batch.X[0])["unavailable"] == "not_a_model_input"
    )
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    with pytest.raises(ValueError, match="input: false"):
        FeatureSchema.from_dict({"fields": [{"name": "c", "kind": "categorical", "input": False}]})
