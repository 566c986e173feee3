"""The contamination sweep (``stream-ae evaluate --contamination``) on the synthetic card
stream, which needs no shared data: every method at every level, the share reached, a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from stream_ae.models import AutoencoderDetector
from stream_ae.tools.cli import app
from trainer.contamination import card_matrix, contamination_split


def test_the_levels_share_one_test_set_and_reach_what_they_ask() -> None:
    y = np.r_[np.zeros(10_000), np.ones(300)].astype(int)
    splits = [contamination_split(y, level, seed=1) for level in (0.0, 0.005, 0.02, 0.05)]
    assert all(np.array_equal(s.test, splits[0].test) for s in splits), "one test set for every level"
    assert [round(s.level, 3) for s in splits[:3]] == [0.0, 0.005, 0.02]
    assert splits[3].level < 0.05 and int(y[splits[3].train].sum()) == 150, "the pool (half the anomalies) ran out"
    assert not np.intersect1d(splits[3].train, splits[3].test).size


def test_the_sweep_reports_each_part_beside_the_baselines(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--contamination", "0,0.02", "--datasets", "card", "--seeds", "0", "--out", str(out),
            "--options", '{"min_steps": 40, "max_steps": 40}', "--train-rows", "3000",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "contamination.json").read_text())
    assert report["max_train"] == 3000 and "at most 3,000 normal training rows" in result.output
    summary = report["summary"]
    assert set(summary) == {"ncae", "ncae:neighbour", "ncae:tail", "ncae:density", "iforest", "ecod"}
    for per in summary.values():
        assert set(per) == {"0", "0.02"} and per["0"]["reached"] == 0.0 and abs(per["0.02"]["reached"] - 0.02) < 0.001
        assert 0.0 < per["0"]["pr_auc"] <= 1.0
    assert (out / "contamination.png").stat().st_size > 1000
    assert "| ncae:tail |" in (out / "contamination.md").read_text()
    bad = CliRunner().invoke(app, ["evaluate", "--contamination", "0,0.7", "--out", str(out)])
    assert bad.exit_code != 0 and "[0, 0.5)" in bad.output


def _decayed_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """A decayed 10-minute count as the entity state reads it: 0 for most rows, a hair above 0
    where the last event is hours old, a fraction of an event after a recent one."""
    u = rng.random(n)
    return np.where(u < 0.73, 0.0, np.where(u < 0.76, rng.uniform(1e-5, 1e-3, n), rng.uniform(0.05, 1.0, n)))


def test_stragglers_a_hair_off_zero_do_not_set_a_columns_scale() -> None:
    # three quarters of the rows at 0 and a few at 1e-5: the quartile range, 1e-5, is no
    # spread; divided by it, an ordinary count of half an event read as hundreds of units
    rng = np.random.default_rng(0)

    def rows(n: int) -> np.ndarray:
        return np.column_stack([rng.normal(size=(n, 3)), _decayed_counts(rng, n)]).astype(np.float32)

    det = AutoencoderDetector("ncae", max_steps=150, min_steps=150, target_rate=0.01, seed=0).fit(rows(6000))
    assert det.scale_ is not None and det.scale_[3] > 0.1, det.scale_
    assert det.predict(rows(4000)).mean() < 0.03  # normal traffic flagged near its 1 % target
    odd = rows(500)
    odd[:, 0] += 6.0  # six standard deviations off in another column
    # found: 0.988 of them; 0.08 while the count column was divided by its stragglers' 4e-4,
    # whose half-event counts then outranked everything else
    assert det.predict(odd).mean() > 0.9


def test_the_card_stream_holds_its_ranking_with_two_percent_unlabelled_frauds() -> None:
    data = card_matrix()
    split = contamination_split(data.y, 0.02, seed=0)
    det = AutoencoderDetector(seed=0).fit(data.X[split.train], scale_floor=data.scale_floor)
    pr = average_precision_score(data.y[split.test], det.score_samples(data.X[split.test]))
    assert pr > 0.6, pr  # 0.916 clean; 0.109 when a decayed count's stragglers set its scale
