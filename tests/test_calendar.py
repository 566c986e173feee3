"""Time in a schema: what inference recognises as a timestamp, and day-of-week features that a
training period shorter than a week cannot teach."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stream_ae.features import encoder as encoder_module
from stream_ae.features.encoder import FeatureEncoder, FeatureSchema, FieldKind
from stream_ae.features.featurize import featurize_file
from trainer.train import fit_events

START = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def _metric(days: float, every_s: int = 300, seed: int = 0) -> list[dict[str, object]]:
    """A noisy metric with a daily cycle, one row every ``every_s`` seconds, epoch-second ``ts``."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / every_s)
    t = START + every_s * np.arange(n)
    value = 50 + 10 * np.sin(2 * np.pi * (t % 86400) / 86400) + rng.normal(0, 2, n)
    return [{"ts": int(a), "value": float(b)} for a, b in zip(t, value, strict=True)]


def test_inference_recognises_rfc3339_strings_and_epoch_values_under_a_time_name() -> None:
    sample = [
        {"ts": START + 60 * i, "created_at": f"2013-12-02T21:{i:02d}:00Z", "bytes": START + i, "host": "a"}
        for i in range(50)
    ]
    schema = FeatureSchema.infer(sample)
    kinds = {f.name: f.kind for f in schema.fields}
    assert kinds == {
        "ts": FieldKind.TIMESTAMP,
        "created_at": FieldKind.TIMESTAMP,  # was a categorical: hashed into 64 buckets on a real topic
        "bytes": FieldKind.NUMERIC,  # epoch-sized, but not named as a time
        "host": FieldKind.CATEGORICAL,
    }
    assert schema.time_field == "ts", "the first time field is the event time"
    ms = FeatureSchema.infer([{"event_time": (START + i) * 1000, "v": float(i)} for i in range(20)])
    assert ms.time_field == "event_time" and ms.fields[0].kind is FieldKind.TIMESTAMP


def test_a_time_without_an_offset_is_utc_whatever_zone_the_host_runs_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """CSV exports write times as ``2024-03-31 01:00:00``. Read in the host's zone, a worker
    in Berlin and an offline replay in UTC gave the same event different hours of day, and the
    stream repeated or skipped an hour at each daylight-saving change (here 02:00 that night)."""
    every = [f"2024-03-{d:02d} {h:02d}:{m:02d}:00" for d in (30, 31) for h in range(24) for m in (0, 30)]
    events = [{"ts": t, "value": float(i % 7)} for i, t in enumerate(every)]
    explicit = [{"ts": t.replace(" ", "T") + "Z", "value": e["value"]} for t, e in zip(every, events, strict=True)]
    explicit[50]["ts"] = str(explicit[50]["ts"]).lower()  # RFC 3339 allows 2024-03-31t01:00:00z
    schema = FeatureSchema.infer(events)
    assert schema.time_field == "ts"

    def encoded(zone: str, rows: list[dict[str, object]]) -> np.ndarray:
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        return FeatureEncoder(schema).fit(rows).transform(rows)

    try:
        in_berlin, in_utc = encoded("Europe/Berlin", events), encoded("UTC", events)
        with_offset = encoded("Europe/Berlin", explicit)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    np.testing.assert_array_equal(in_berlin, in_utc)
    np.testing.assert_array_equal(in_berlin, with_offset)
    names = FeatureEncoder(schema).fit(events).feature_names
    hours = in_berlin[:, [i for i, name in enumerate(names) if ".hour_" in name]]
    assert len(np.unique(hours.round(6), axis=0)) == 48, "every half hour of the day, once a day"


def test_a_training_period_shorter_than_a_week_drops_day_of_week_and_says_so() -> None:
    short, long = _metric(days=2), _metric(days=8)
    enc = FeatureEncoder(FeatureSchema.infer(short)).fit(short)
    assert [f.weekday for f in enc.schema.fields if f.kind is FieldKind.TIMESTAMP] == [False]
    assert "ts.dow_sin" not in enc.feature_names and "ts.hour_sin" in enc.feature_names
    assert enc.notices and "less than a week" in enc.notices[0]
    kept = FeatureEncoder(FeatureSchema.infer(long)).fit(long)
    assert "ts.dow_sin" in kept.feature_names and not kept.notices


def test_a_model_trained_on_two_days_does_not_flag_the_weekdays_it_never_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: a metric trained on its first two days flagged most later rows, every
    weekday it had not seen (2,623 of 4,032 rows of one series). Scored on the next twelve days
    it now holds its false-alarm rate; kept, the day-of-week features still flood."""
    events = _metric(days=14, seed=3)
    train, later = events[:576], events[576:]  # two days of five-minute rows

    def flagged_share() -> float:
        fitted = fit_events(train, device="cpu", seed=0, target_rate=0.01, max_steps=400)
        assert fitted.encoder is not None
        X = featurize_file(fitted.encoder, later).batch.X
        return float((fitted.detector.score_samples(X) > fitted.detector.threshold_).mean())

    flagged = flagged_share()
    monkeypatch.setattr(encoder_module, "MIN_WEEKDAY_SPAN_S", 0.0)  # day-of-week features kept
    with_weekdays = flagged_share()
    print(f"flagged of twelve later days at a 1 % target: {flagged:.2%}; with day-of-week features {with_weekdays:.2%}")
    assert flagged <= 0.03, flagged
    assert with_weekdays >= 0.3, with_weekdays


def test_a_training_period_shorter_than_a_day_drops_hour_of_day_and_the_model_holds_its_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twelve hours of one-minute rows (a 750-row probation of a minutely series) cannot
    teach hour-of-day: the features are dropped, and the next day and a half of a steady
    series is not flooded with alarms; kept, the hours never seen flood."""
    rng = np.random.default_rng(5)
    t = START + 60 * np.arange(2880)
    events = [{"ts": int(a), "value": float(b)} for a, b in zip(t, 50 + rng.normal(0, 2, len(t)), strict=True)]
    train, later = events[:720], events[720:]

    def fitted_and_flagged() -> tuple[list[str], list[str], float]:
        fitted = fit_events(train, device="cpu", seed=0, target_rate=0.01, max_steps=400)
        assert fitted.encoder is not None
        X = featurize_file(fitted.encoder, later).batch.X
        share = float((fitted.detector.score_samples(X) > fitted.detector.threshold_).mean())
        return fitted.encoder.feature_names, fitted.encoder.notices, share

    names, notices, flagged = fitted_and_flagged()
    assert not any(n.startswith(("ts.hour", "ts.dow")) for n in names)
    assert notices and "less than a day" in notices[0]
    monkeypatch.setattr(encoder_module, "MIN_HOUR_SPAN_S", 0.0)  # hour-of-day features kept
    kept_names, _, with_hours = fitted_and_flagged()
    assert any(n.startswith("ts.hour") for n in kept_names)
    print(f"flagged of the next 36 hours at a 1 % target: {flagged:.2%}; with hour-of-day features {with_hours:.2%}")
    assert flagged <= 0.03, flagged
    assert with_hours >= 0.2, with_hours
