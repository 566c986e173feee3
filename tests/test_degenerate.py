"""Degenerate training data: constant columns, few distinct rows, extreme magnitudes.

Every outcome is the documented one (docs/concepts/model.md, "Degenerate training data"): ``fit`` succeeds
with finite scores and a finite threshold, or raises :class:`DegenerateDataError` naming the
reason; the threshold never crashes; the trainer rejects such a window and keeps its champion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_ae.lifecycle.registry import Registry
from stream_ae.models import AutoencoderDetector, DegenerateDataError, variants
from stream_ae.models.detector import MIN_DISTINCT_ROWS, MIN_ROWS
from stream_ae.scoring.threshold import Threshold
from stream_ae.tools.synthetic import transactions

QUICK = {"max_steps": 12, "min_steps": 12, "device": "cpu", "seed": 0}


@pytest.mark.parametrize("variant", ["ncae", "ae"])
@pytest.mark.parametrize(
    ("X", "reason"),
    [
        (np.ones((2000, 5)), "1 distinct row;"),
        (np.repeat(np.eye(2, 5), 1000, axis=0), "2 distinct rows;"),
        (np.ones((1, 5)), "1 row;"),
        (np.arange(10.0).reshape(2, 5), "2 rows;"),
    ],
    ids=["constant", "two-rows-repeated", "single-row", "two-rows"],
)
def test_the_issue_cases_raise_the_documented_error(variant: str, X: np.ndarray, reason: str) -> None:
    with pytest.raises(DegenerateDataError, match=reason) as info:
        AutoencoderDetector(variant=variant, **QUICK).fit(X)
    assert isinstance(info.value, ValueError), "a subclass of ValueError, as documented"
    assert str(MIN_DISTINCT_ROWS if "distinct" in reason else MIN_ROWS) in str(info.value), "it names the minimum"


@pytest.mark.parametrize("variant", ["ncae", "ae"])
def test_a_constant_column_fits_and_a_later_change_in_it_is_anomalous(variant: str) -> None:
    rng = np.random.default_rng(0)
    X = np.hstack([rng.normal(size=(2000, 4)), np.full((2000, 1), 3.0)]).astype(np.float32)
    det = AutoencoderDetector(variant=variant, device="cpu", seed=0, max_steps=300, min_steps=300).fit(X)
    fresh = np.hstack([rng.normal(size=(500, 4)), np.full((500, 1), 3.0)]).astype(np.float32)
    assert det.predict(fresh).mean() <= 0.05, "the constant column held: normal rows stay normal"
    moved = fresh.copy()
    moved[:, 4] = 3.5  # the stuck field moves by a sixth of its value
    assert det.predict(moved).mean() >= 0.95, "a change of the never-changing field is anomalous"
    if variant == "ncae":  # its tail part puts any value outside the training range past every training row
        moved[:, 4] = 3.01
        assert det.predict(moved).mean() >= 0.95


def test_the_threshold_falls_back_to_the_quantile_when_the_tail_has_no_spread() -> None:
    two_values = np.r_[np.zeros(390), np.ones(10)]  # 0.1 % target, 400 scores: the tail branch
    t = Threshold.fit(two_values, 0.001)
    assert t.method == "quantile" and t.details.get("pot_fallback") == 1.0
    assert t.value == 1.0 and not (two_values > t.value).any()
    constant = Threshold.fit(np.full(1000, 7.25), 1e-4)
    assert constant.value == 7.25


@st.composite
def degenerate_matrices(draw: st.DrawFn) -> np.ndarray:
    """Matrices of the kinds a stuck sensor, a replayed event or a quiet metric give."""
    kind = draw(st.sampled_from(["constant", "few_distinct", "huge", "tiny_variance", "one_row", "two_rows"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    d = draw(st.integers(1, 6))
    n = draw(st.integers(20, 300))
    if kind == "constant":
        return np.full((n, d), draw(st.floats(-1e30, 1e30, allow_nan=False)), dtype=np.float32)
    if kind == "few_distinct":
        atoms = rng.normal(size=(draw(st.integers(1, 5)), d)) * draw(st.sampled_from([1e-6, 1.0, 1e6]))
        return atoms[rng.integers(0, len(atoms), n)].astype(np.float32)
    if kind == "huge":
        magnitude = draw(st.sampled_from([1e10, 1e20, 1e30]))
        return (rng.normal(size=(n, d)) * magnitude).astype(np.float32)
    if kind == "tiny_variance":
        sd = draw(st.sampled_from([1e-12, 1e-9, 1e-6]))
        return (draw(st.floats(-1e3, 1e3)) + sd * rng.normal(size=(n, d))).astype(np.float32)
    rows = 1 if kind == "one_row" else 2
    return rng.normal(size=(rows, d)).astype(np.float32) * draw(st.sampled_from([1.0, 1e30]))


@pytest.mark.parametrize("variant", list(variants()))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=degenerate_matrices())
def test_fit_succeeds_with_finite_scores_or_raises_the_documented_error(variant: str, X: np.ndarray) -> None:
    det = AutoencoderDetector(variant=variant, **QUICK)
    try:
        det.fit(X)
    except DegenerateDataError:
        return
    assert np.isfinite(det.threshold_)
    assert np.isfinite(det.score_samples(X)).all()
    probe = X[:5] + np.float32(1.0)  # a departure from every seen row scores finitely too
    assert np.isfinite(det.score_samples(probe)).all()


@pytest.mark.slow
def test_the_trainer_rejects_a_degenerate_window_and_keeps_its_champion(tmp_path: Path) -> None:
    from stream_ae.settings import Settings
    from tests.streaming import publish_model
    from trainer.service import TrainerService

    publish_model(tmp_path, "v1", stateless=True)  # with entity features a replayed event is a burst, not a flat window
    # 1 %: a window of 3,000 calibrates it (at the default 0.1 % it is refused as window_too_small)
    trainer = TrainerService(Settings(model_dir=tmp_path, trainer_metrics_port=0, target_false_alarm_rate=0.01))
    replayed = transactions(1, seed=5)[0] * 3000  # a producer replaying one event
    result = trainer.train_and_gate(replayed, trigger="schedule")
    assert (result.published, result.reason) == (None, "degenerate_window")
    assert trainer.metrics.rejections.labels(reason="degenerate_window")._value.get() == 1
    assert Registry(tmp_path).latest() == "v1", "the champion keeps serving"


def test_train_on_a_stuck_sensor_says_why_without_a_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stream_ae.tools.cli import app

    csv = tmp_path / "stuck.csv"
    csv.write_text("a,b\n" + "1.5,0\n" * 500)
    result = CliRunner().invoke(app, ["train", str(csv), "--out", str(tmp_path / "m"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "training data has 1 distinct row; at least 10 are needed" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "m").exists()
