"""The registry and the trainer's gate, without Kafka."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_ae.lifecycle.artifacts import ArtifactError
from stream_ae.lifecycle.registry import Registry
from stream_ae.models import AutoencoderDetector
from stream_ae.scoring.threshold import Threshold
from stream_ae.settings import Settings
from stream_ae.tools.synthetic import CardStream
from trainer.service import (
    ChampionScores,
    GateFigures,
    TrainerService,
    allowed_false_alarm_rate,
    compare,
    generated_anomalies,
    lower_to_champion_volume,
    without_detections,
)

FAST = {"min_steps": 50, "max_steps": 50, "hidden": (16,), "latent_dim": 2, "device": "cpu"}


def _publish(reg: Registry, version: str, keep: int = 5) -> None:
    det = AutoencoderDetector("ae", **FAST).fit(np.random.default_rng(0).normal(size=(300, 4)))
    reg.publish(lambda tmp: det.save(tmp, version=version), version, keep=keep)


def test_publish_promote_rollback_and_retention(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for v in ("v1", "v2", "v3"):
        _publish(reg, v, keep=2)
    assert reg.latest() == "v3"
    assert [v.version for v in reg.versions()] == ["v2", "v3"], "only the newest two are kept"
    assert reg.rollback() == "v2" and reg.latest() == "v2"
    assert reg.load().version == "v2"
    reg.promote("v3")
    assert reg.load().version == "v3"
    assert not list(reg.versions_dir.glob(".incoming-*")), "no half-written versions are left"


def test_failed_write_leaves_no_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)

    def broken(tmp: Path) -> None:
        (tmp / "manifest.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reg.publish(broken, "v9")
    assert reg.latest() is None and not reg.path_of("v9").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 80])
def test_version_names_cannot_leave_the_registry(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArtifactError):
        Registry(tmp_path).path_of(name)


def test_gate_keeps_a_worse_challenger_back() -> None:
    champ = GateFigures(false_alarm_rate=0.001, recon_loss=0.1, separation_auc=0.95)
    assert compare(GateFigures(0.001, 0.1, 0.96), champ, 0.001, 5000, 12_000) == (True, "better_or_equal")
    assert compare(GateFigures(0.05, 0.1, 0.99), champ, 0.001, 5000, 12_000)[1] == "false_alarm_rate"
    assert compare(GateFigures(0.001, 0.1, 0.80), champ, 0.001, 5000, 12_000)[1] == "separation"
    # after drift the champion floods alerts: a challenger back near target wins
    drifted = GateFigures(false_alarm_rate=0.2, recon_loss=0.5, separation_auc=0.9)
    assert compare(GateFigures(0.002, 0.1, 0.9), drifted, 0.001, 5000, 12_000)[0]
    # its detections taken out, a drifted champion looks calibrated; what it flagged of the
    # slice as it came still tells that it cannot be trusted to hold a challenger back
    cleaned = GateFigures(false_alarm_rate=0.001, recon_loss=0.5, separation_auc=0.95, flag_rate=0.015)
    assert compare(GateFigures(0.001, 0.1, 0.80), cleaned, 0.001, 5000, 12_000)[0]
    steady = GateFigures(false_alarm_rate=0.001, recon_loss=0.5, separation_auc=0.95, flag_rate=0.0012)
    assert compare(GateFigures(0.001, 0.1, 0.80), steady, 0.001, 5000, 12_000)[1] == "separation"


def test_the_gate_allows_for_the_calibration_slice_as_well_as_the_holdout() -> None:
    # 0.1 % calibrated on 2,400 rows and checked on 2,400 others: a realised 0.38 % (9 rows) is
    # within what chance gives (the holdout alone allowed 0.34 %, and kept a sound model back)
    assert allowed_false_alarm_rate(0.001, 2400, 2400) > 0.0038
    assert allowed_false_alarm_rate(0.001, 2400, 10**9) < 0.0036
    assert compare(GateFigures(0.0038, 0.1, 0.95), None, 0.001, 2400, 2400)[0]
    assert not compare(GateFigures(0.0060, 0.1, 0.95), None, 0.001, 2400, 2400)[0]


def test_the_gate_refuses_the_demos_two_bad_refreshes() -> None:
    """Issue 25's offline table, replayed through the gate: the champion (the initial model)
    flags 0.09 % of normal traffic and catches 0.836 of the frauds; the 832-event refresh flagged
    2.39 %, the verdict-trained one 0.00 % but caught 0.181. Both are refused, each for its own
    reason; a challenger that keeps the champion's recall within chance is not."""
    champion = GateFigures(0.0009, 0.1, 0.95, flag_rate=0.0009, labelled_recall=0.836)
    flooding = GateFigures(0.0239, 0.1, 0.95, labelled_recall=0.226)
    assert compare(flooding, champion, 0.001, 10_000, 12_000, n_labelled_anomalies=36) == (False, "false_alarm_rate")
    blind = GateFigures(0.0, 0.1, 0.95, labelled_recall=0.181)
    assert compare(blind, champion, 0.001, 10_000, 12_000, n_labelled_anomalies=36) == (False, "labelled_recall")
    assert compare(blind, champion, 0.001, 10_000, 12_000, n_labelled_anomalies=3)[0], "three frauds decide nothing"
    steady = GateFigures(0.0010, 0.1, 0.95, labelled_recall=0.75)
    assert compare(steady, champion, 0.001, 10_000, 12_000, n_labelled_anomalies=36) == (True, "better_or_equal")


def test_the_trainer_publishes_nothing_from_a_window_too_small_to_calibrate_its_target(tmp_path: Path) -> None:
    events, _ = CardStream(seed=4).next(3000)
    trainer = TrainerService(Settings(model_dir=tmp_path, target_false_alarm_rate=0.001, trainer_max_steps=60))
    result = trainer.train_and_gate(events, champion=None)
    assert (result.published, result.reason) == (None, "window_too_small")
    assert trainer.metrics.rejections.labels(reason="window_too_small")._value.get() == 1
    assert Registry(tmp_path).latest() is None
    # the same window calibrates a 1 % rate: 1,200 calibration rows, 12 above the threshold
    trainer = TrainerService(Settings(model_dir=tmp_path, target_false_alarm_rate=0.01, trainer_max_steps=60))
    assert trainer.train_and_gate(events, champion=None).reason != "window_too_small"


def test_the_trainer_trains_the_neighbour_samples_its_settings_name(tmp_path: Path) -> None:
    from stream_ae.lifecycle.artifacts import load_artifact

    events, _ = CardStream(seed=4).next(3000)
    settings = Settings(
        model_dir=tmp_path, target_false_alarm_rate=0.01, trainer_max_steps=60, trainer_neighbour_sets=8
    )
    result = TrainerService(settings).train_and_gate(events, champion=None)
    assert result.published is not None, result.reason
    detector = load_artifact(Registry(tmp_path).path_of(result.published)).detector
    assert detector.net_.neighbours.points.shape[0] == 8  # type: ignore[union-attr]


def test_generated_anomalies_differ_from_their_sources() -> None:
    X = np.random.default_rng(1).normal(size=(400, 6)).astype(np.float32)
    A = generated_anomalies(X, seed=0)
    assert A.shape == X.shape and (np.abs(A - X).sum(1) > 0).mean() > 0.9


def test_calibration_leaves_out_only_the_champions_flags_beyond_its_target() -> None:
    """A champion calibrated at 1 % that flags 3 % of a slice: its top 2 % are taken for
    detections and left out, its own 1 % of false alarms stay; with no excess, or an excess
    past 2 % (drift: the champion is not trusted), nothing is left out."""
    rng = np.random.default_rng(0)
    champ_rows = np.arange(0, 20_000, 2)  # the events the champion could encode (every other one)
    scores = rng.permutation(np.arange(len(champ_rows)) / len(champ_rows))  # exact shares above any cut
    rows = np.arange(0, 20_000, 2)  # the challenger's rows: the same events here
    cal = np.arange(len(rows))

    def kept(flag_share: float) -> np.ndarray:
        return without_detections(cal, rows, ChampionScores(champ_rows, scores, 1 - flag_share - 1e-9), 0.01)

    left = kept(0.03)
    assert len(cal) - len(left) == 200, "2 % of 10,000 rows"
    assert scores[left].max() < np.sort(scores)[-200], "the champion's highest scores went"
    assert (scores[left] > 0.97 - 1e-9).sum() == 100, "its 1 % of false alarms stay"
    assert len(kept(0.008)) == len(cal) and len(kept(0.05)) == len(cal)
    unknown = without_detections(cal, rows + 1, ChampionScores(champ_rows, scores, 0.97 - 1e-9), 0.01)
    assert len(unknown) == len(cal), "rows the champion could not encode are never judged by it"


class _ScoresAsRows:
    """A challenger whose score of a row is the row's only column (the calibration step's
    view of a model: its scores and its threshold)."""

    def __init__(self, threshold: Threshold) -> None:
        self.threshold = threshold

    @property
    def threshold_(self) -> float:
        return self.threshold.value

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return X[:, 0].astype(np.float64)


def test_a_challenger_that_ranks_missed_anomalies_on_top_keeps_the_champions_alarm_volume() -> None:
    """The demo's refreshed threshold (live false-alarm rate 0.33-0.85x the target): the slice
    left 12 anomalies the champion missed, the challenger trained on verdicts ranks them on
    top, and the slice's 0.1 % quantile lands on them. Flagging the champion's share of the
    slice instead (12 false alarms, 48 detections of 12,060 rows) puts the threshold among the
    normal rows at the target; the slice's quantile stays where it lies lower."""
    rng = np.random.default_rng(0)
    normal = rng.normal(size=12_000)
    missed = np.full(12, 10.0)  # the champion missed them; the challenger ranks them on top
    caught = np.r_[np.full(36, 8.0), rng.normal(size=12)]  # the champion's 48 detections, as the challenger sees them
    as_came = np.r_[normal, missed, caught][:, None]
    without = np.r_[normal, missed]  # the slice less the champion's detections
    challenger = _ScoresAsRows(Threshold.fit(without, 0.001))
    fresh = rng.normal(size=200_000)
    before = float((fresh > challenger.threshold_).mean())
    champion_share = (12 + 48) / len(as_came)
    assert lower_to_champion_volume(challenger, as_came, champion_share, 0.001, without[:, None])  # type: ignore[arg-type]
    after = float((fresh > challenger.threshold_).mean())
    print(f"\n[volume] false-alarm rate at 0.1 %: slice quantile {before:.5f}, champion's volume {after:.5f}")
    assert before < 0.0002 and 0.0005 <= after <= 0.002
    assert challenger.threshold.details["slice_quantile"] > challenger.threshold_
    slice_ = without[:, None]
    assert not lower_to_champion_volume(challenger, as_came, 0.0009, 0.001, slice_), "no excess: it detects nothing"  # type: ignore[arg-type]
    assert not lower_to_champion_volume(challenger, as_came, 0.05, 0.001, slice_), "drift: the champion is not trusted"  # type: ignore[arg-type]
    # a champion that flags 0.8 % (its own false alarms at several times the target) hands no more
    # on than the gate allows on the slice less its detections
    over = _ScoresAsRows(Threshold.fit(without, 0.001))
    assert lower_to_champion_volume(over, as_came, 0.008, 0.001, without[:, None])  # type: ignore[arg-type]
    capped = float((fresh > over.threshold_).mean())
    print(f"[volume] a champion flagging 0.8 %: {capped:.5f}")
    assert capped <= 0.0025, capped
    lower = _ScoresAsRows(Threshold.fit(without, 0.001))
    lower.threshold.value = -10.0
    assert not lower_to_champion_volume(lower, as_came, champion_share, 0.001, slice_), "never raised"  # type: ignore[arg-type]


def test_an_unreadable_latest_pointer_keeps_the_worker_on_its_model(registry: Path, tmp_path: Path) -> None:
    """The worker's registry poll runs on a timer, and an exception there stops the worker: a
    LATEST pointer that cannot be read (a shared volume's hiccup; here a folder in its place)
    must leave it scoring with the model it has."""
    import asyncio
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from stream_ae.operation.metrics import WorkerMetrics
    from stream_ae.settings import Settings
    from stream_ae.worker.follower import ModelFollower

    root = tmp_path / "registry"
    shutil.copytree(registry, root)

    async def scenario() -> str | None:
        with ThreadPoolExecutor(1) as loader:
            follower = ModelFollower(Settings(model_dir=root, device="cpu"), WorkerMetrics(), loader)
            await follower.load_initial(lambda: False)
            (root / "LATEST").unlink()
            (root / "LATEST").mkdir()
            await follower.poll_registry()  # before the fix: IsADirectoryError
            return follower.model.version if follower.model else None

    assert asyncio.run(scenario()) == "v1"
