"""The command line a user meets: train, score, models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from stream_ae.cli import app
from stream_ae.synthetic import transactions

runner = CliRunner()


def test_train_then_score_events_offline(tmp_path: Path) -> None:
    events, _ = transactions(3000, seed=1)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(e) + "\n" for e in events))
    attacks, _ = transactions(20, seed=2, anomaly_rate=1.0)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(e) + "\n" for e in attacks) + '{"amount": "bad"}\n')

    result = runner.invoke(app, ["train", str(train), "--out", str(tmp_path / "m"), "--max-steps", "300",
                                 "--target-rate", "0.01", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["score", str(tmp_path / "m"), str(test), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    rows = np.genfromtxt(tmp_path / "s.csv", delimiter=",", names=True)
    assert len(rows) == 20, "the malformed row is reported, not scored"
    assert rows["anomaly"].mean() >= 0.8


def test_models_registry_commands(tmp_path: Path) -> None:
    X = tmp_path / "x.npz"
    np.savez(X, X=np.random.default_rng(0).normal(size=(500, 4)).astype("float32"))
    for _ in range(2):
        args = ["train", str(X), "--registry", str(tmp_path / "reg"), "--variant", "ae", "--max-steps", "50"]
        assert runner.invoke(app, args).exit_code == 0
    listing = runner.invoke(app, ["models", "list", "--dir", str(tmp_path / "reg")]).output.splitlines()
    assert len(listing) == 2 and listing[-1].startswith("*"), "two versions, the newest is LATEST"
    shown = json.loads(runner.invoke(app, ["models", "show", "--dir", str(tmp_path / "reg")]).output)
    assert shown["variant"] == "ae" and len(shown["manifest_sha256"]) == 64
