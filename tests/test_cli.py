"""The command line a user meets: train, score, models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from stream_ae.cli import app
from stream_ae.synthetic import FRAUD_KINDS, CardStream, transactions

runner = CliRunner()


def test_train_then_score_events_offline(tmp_path: Path) -> None:
    events, _ = transactions(3000, seed=1)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(e) + "\n" for e in events))
    stream = CardStream(seed=2, anomaly_rate=1.0)
    frauds, _ = stream.next(400)
    attacks = [e for e, k in zip(frauds, stream.kinds, strict=True) if FRAUD_KINDS[k] != "burst"][:20]
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


def test_evaluate_applies_options_and_writes_a_report(tmp_path: Path) -> None:
    """`stream-ae evaluate` on a generated ADBench-style set: options reach the detector and
    the report, the baselines give the bar (no ../shared/ needed)."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(1900, 5)), rng.normal(6.0, 1.0, size=(100, 5))]).astype("float32")
    y = np.r_[np.zeros(1900), np.ones(100)].astype("int64")
    (tmp_path / "data" / "adbench").mkdir(parents=True)
    np.savez(tmp_path / "data" / "adbench" / "1_toy.npz", X=X, y=y)
    args = ["evaluate", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r"), "--datasets", "toy",
            "--variants", "ncae", "--seeds", "0", "--no-smd",
            "--options", '{"max_steps": 150, "min_steps": 150, "net_options": {"bridges": 2}}']  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["options"]["net_options"] == {"bridges": 2}
    assert report["tabular"]["ncae"]["toy"]["roc_auc"] > 0.95, "shifted rows are found"
    assert set(report["tabular"]) == {"ncae", "iforest", "ecod", "pca"} and "bar_best_of_iforest_ecod" in report
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "toy.png").exists()
    bad = runner.invoke(app, [*args[:-1], "{not json"])
    assert bad.exit_code != 0 and "not JSON" in bad.output
    refused = runner.invoke(app, [*args[:-1], '{"net_options": {"bridges": 0}}'])
    assert isinstance(refused.exception, ValueError), "the options reach the detector, which refuses them"
