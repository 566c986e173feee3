"""The model family: every variant learns, is deterministic, round-trips and is calibrated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream_ae.lifecycle.artifacts import ArtifactError, load_artifact
from stream_ae.models import AutoencoderDetector, variants
from stream_ae.models.networks import NoiseContrastiveNet, network_defaults

FAST = {"min_steps": 300, "max_steps": 300, "hidden": (32,), "latent_dim": 3}


def normal_data(n: int, seed: int = 0) -> np.ndarray:
    """Correlated 8-d normal traffic: 3 latent factors mixed into 8 features, plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    mix = np.random.default_rng(42).normal(size=(3, 8))
    return (z @ mix + 0.1 * rng.normal(size=(n, 8))).astype(np.float32)


def obvious_anomalies(n: int, seed: int = 1) -> np.ndarray:
    """Rows that break the correlation structure: features far off the normal subspace."""
    rng = np.random.default_rng(seed)
    x = normal_data(n, seed)
    cols = rng.integers(0, 8, size=n)
    x[np.arange(n), cols] += rng.choice([-6.0, 6.0], size=n)
    return x


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return normal_data(4000)


@pytest.mark.parametrize("variant", list(variants()))
def test_each_variant_learns_and_ranks_anomalies_above_normals(variant: str, data: np.ndarray) -> None:
    det = AutoencoderDetector(variant, seed=0, device="cpu", **FAST).fit(data)
    assert det.history_[-1]["loss"] < det.history_[0]["loss"], "the loss must fall"
    s_norm = det.score_samples(normal_data(500, seed=7))
    s_anom = det.score_samples(obvious_anomalies(100))
    # most injected anomalies score above the 95th percentile of fresh normals (chance: 5 %)
    assert (s_anom > np.quantile(s_norm, 0.95)).mean() >= 0.8


@pytest.mark.slow
def test_scores_are_deterministic_with_a_seed(data: np.ndarray) -> None:
    a = AutoencoderDetector("ncae", seed=3, device="cpu", **FAST).fit(data).score_samples(data[:50])
    b = AutoencoderDetector("ncae", seed=3, device="cpu", **FAST).fit(data).score_samples(data[:50])
    assert a.shape == (50,)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_calibrated_threshold_gives_the_target_false_alarm_rate() -> None:
    train = normal_data(20_000, seed=0)
    det = AutoencoderDetector("ncae", seed=0, device="cpu", target_rate=0.02, **FAST).fit(train)
    fresh = normal_data(20_000, seed=11)
    rate = det.predict(fresh).mean()
    assert 0.01 <= rate <= 0.035, rate


def test_save_load_round_trip_gives_identical_scores(data: np.ndarray, tmp_path: Path) -> None:
    det = AutoencoderDetector("ncae", seed=0, device="cpu", **FAST).fit(data)
    path = det.save(tmp_path / "m", version="v1")
    loaded = load_artifact(path, device="cpu")
    assert loaded.version == "v1"
    np.testing.assert_array_equal(det.score_samples(data[:100]), loaded.detector.score_samples(data[:100]))
    assert loaded.detector.threshold_ == det.threshold_


def _saved(tmp_path: Path, data: np.ndarray) -> Path:
    return AutoencoderDetector("ae", seed=0, device="cpu", **FAST).fit(data).save(tmp_path / "m")


def test_flipped_byte_in_weights_is_refused(data: np.ndarray, tmp_path: Path) -> None:
    path = _saved(tmp_path, data)
    weights = path / "weights.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(path)


def test_path_traversal_in_manifest_is_refused(data: np.ndarray, tmp_path: Path) -> None:
    path = _saved(tmp_path, data)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="leaves"):
        load_artifact(path)


def test_pickle_disguised_as_weights_is_refused(data: np.ndarray, tmp_path: Path) -> None:
    import hashlib
    import pickle

    path = _saved(tmp_path, data)
    weights = path / "weights.safetensors"
    weights.write_bytes(pickle.dumps({"evil": "payload"}))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))  # even with a matching checksum
    with pytest.raises(ArtifactError, match="safetensors"):
        load_artifact(path)


def test_bad_inputs_raise_documented_errors(data: np.ndarray) -> None:
    det = AutoencoderDetector("ae", seed=0, device="cpu", **FAST).fit(data)
    with pytest.raises(ValueError, match="features"):
        det.score_samples(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        det.score_samples(np.full((1, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="variant"):
        AutoencoderDetector("nope")


def test_explain_points_at_the_broken_feature(data: np.ndarray) -> None:
    det = AutoencoderDetector("ae", seed=0, device="cpu", **FAST).fit(data)
    row = normal_data(1, seed=5)
    row[0, 6] += 8.0
    idx, share = det.explain(row, k=2)
    assert idx[0, 0] == 6 and share[0, 0] > 0.5


def test_manifest_pins_the_network_options(data: np.ndarray, tmp_path: Path) -> None:
    """An artifact must not change meaning when a library default changes later."""
    path = AutoencoderDetector("ncae", seed=0, device="cpu", **FAST).fit(data).save(tmp_path / "m")
    options = json.loads((path / "manifest.json").read_text())["detector"]["hyper"]["net_options"]
    assert set(network_defaults(NoiseContrastiveNet)) <= set(options), "every option is written down"
    assert options["reference"] == "marginal+gaussian" and options["bridges"] == 4 and options["trim"] == 0.0
    assert options["tails"] is True and options["neighbour_sets"] == 32


def test_an_artifact_from_before_telescoping_still_loads_unchanged(data: np.ndarray, tmp_path: Path) -> None:
    """Manifests written before ``bridges``, ``trim``, ``tails`` and the neighbour samples existed lack
    them: they must rebuild the single-step network they were trained as, not today's default."""
    old_style = {
        "reference": "gaussian+mixture",
        "head_hidden": [32],
        "bridges": 1,
        "trim": 0.0,
        "tails": False,
        "neighbour_sets": 0,
    }
    det = AutoencoderDetector("ncae", seed=0, device="cpu", net_options=old_style, **FAST).fit(data)
    path = det.save(tmp_path / "m")
    manifest = json.loads((path / "manifest.json").read_text())
    for option in ("bridges", "trim", "tails", "neighbour_sets", "neighbour_size", "neighbour_k"):
        del manifest["detector"]["hyper"]["net_options"][option]
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_artifact(path, device="cpu").detector
    np.testing.assert_array_equal(loaded.score_samples(data[:100]), det.score_samples(data[:100]))


@pytest.mark.slow
def test_warm_start_uses_the_champion_only_when_the_network_matches(data: np.ndarray) -> None:
    champion = AutoencoderDetector("ncae", seed=0, device="cpu", **FAST).fit(data)
    cold = AutoencoderDetector("ncae", seed=1, device="cpu", **FAST).fit(data)
    warm = AutoencoderDetector("ncae", seed=1, device="cpu", **FAST).fit(data, init_from=champion)
    assert warm.history_[0]["loss"] < cold.history_[0]["loss"], "a matching champion's weights are the start"
    other = AutoencoderDetector("ncae", seed=1, device="cpu", net_options={"bridges": 1}, **FAST)
    assert not other.same_network(champion)
    other.fit(data, init_from=champion)  # a changed network trains from scratch instead of failing
    assert np.isfinite(other.score_samples(data[:10])).all()


@pytest.mark.parametrize("steps", [1, 10, 11])
def test_very_short_training_runs(data: np.ndarray, steps: int) -> None:
    """A smoke-test budget of a few steps trains (the one-cycle schedule once divided by zero)."""
    det = AutoencoderDetector("ae", seed=0, device="cpu", epochs=1, min_steps=steps, max_steps=steps).fit(data)
    assert np.isfinite(det.score_samples(data[:10])).all()


@pytest.mark.parametrize("variant", [pytest.param("ncae", marks=pytest.mark.slow), "vae"])
def test_bf16_autocast_learns_and_keeps_the_exact_parts_in_float32(
    variant: str, data: np.ndarray, tmp_path: Path
) -> None:
    """``bf16=True`` runs the layers in bfloat16 (CPU autocast here, CUDA in production): the model
    still learns and ranks anomalies; parts that are exact statistics are unchanged; the setting
    travels with the artifact."""
    fp32 = AutoencoderDetector(variant, seed=0, device="cpu", **FAST).fit(data)
    bf16 = AutoencoderDetector(variant, seed=0, device="cpu", bf16=True, **FAST).fit(data)
    assert bf16.history_[-1]["loss"] < bf16.history_[0]["loss"]
    s_norm, s_anom = bf16.score_samples(normal_data(500, seed=7)), bf16.score_samples(obvious_anomalies(100))
    assert (s_anom > np.quantile(s_norm, 0.95)).mean() >= 0.8
    if variant == "ncae":
        ours, theirs = bf16.component_scores(data[:300]), fp32.component_scores(data[:300])
        for part in ("tail", "neighbour"):
            np.testing.assert_array_equal(ours[part], theirs[part])
        assert not np.array_equal(ours["density"], theirs["density"]), "the heads did run in bf16"
    loaded = load_artifact(bf16.save(tmp_path / "m"), device="cpu").detector
    assert loaded.hyper.bf16
    np.testing.assert_array_equal(loaded.score_samples(data[:100]), bf16.score_samples(data[:100]))


def test_training_stops_on_the_held_out_plateau_and_ranks_as_well(data: np.ndarray) -> None:
    """A long budget on easy data ends when the held-out objective stops moving (a user who
    asks for 2,000 steps on 4,000 rows does not wait for all of them), and the early model
    ranks the obvious anomalies as the full run does."""
    long = {"min_steps": 2000, "max_steps": 2000, "hidden": (32,), "latent_dim": 3, "device": "cpu", "seed": 0}
    full = AutoencoderDetector("ae", plateau_tol=0.0, **long).fit(data)
    early = AutoencoderDetector("ae", **long).fit(data)
    assert full.steps_ == 2000
    assert early.steps_ < 2000, early.steps_
    s_norm, s_anom = normal_data(500, seed=7), obvious_anomalies(100)
    for det in (full, early):
        scores_norm, scores_anom = det.score_samples(s_norm), det.score_samples(s_anom)
        assert (scores_anom > np.quantile(scores_norm, 0.95)).mean() >= 0.9
