"""The contamination sweep (``stream-ae evaluate --contamination``) on the synthetic card
stream, which needs no shared data: every method at every level, the share reached, a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from stream_ae.tools.cli import app
from trainer.contamination import contamination_split


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
            "--options", '{"min_steps": 40, "max_steps": 40}',
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "contamination.json").read_text())["summary"]
    assert set(summary) == {"ncae", "ncae:neighbour", "ncae:tail", "ncae:density", "iforest", "ecod"}
    for per in summary.values():
        assert set(per) == {"0", "0.02"} and per["0"]["reached"] == 0.0 and abs(per["0.02"]["reached"] - 0.02) < 0.001
        assert 0.0 < per["0"]["pr_auc"] <= 1.0
    assert (out / "contamination.png").stat().st_size > 1000
    assert "| ncae:tail |" in (out / "contamination.md").read_text()
    bad = CliRunner().invoke(app, ["evaluate", "--contamination", "0,0.7", "--out", str(out)])
    assert bad.exit_code != 0 and "[0, 0.5)" in bad.output
