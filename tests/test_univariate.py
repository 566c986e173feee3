"""A univariate metric stream the way the metric-streams guide says: its schema (read from the
guide itself), `stream-ae train` on the first rows, `stream-ae score` on the stream; the
detections to count are the incidents opened."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stream_ae.tools.cli import app

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "getting-started" / "metric-streams.md"


def _guide_schema(calibrated: bool = False) -> str:
    schema = re.search(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    assert schema is not None, "the guide shows the schema"
    text = schema.group(1)
    if calibrated:
        text = text.replace("alarm: {cooldown: 2.5h}", "alarm: {cooldown: 2.5h, calibrated: true}")
        assert "calibrated" in text
    return text


def _train_and_score(tmp_path: Path, schema: str, value: np.ndarray) -> list[dict[str, str]]:
    """`stream-ae train` on the first 450 rows with ``schema``, `stream-ae score` on all of them."""
    (tmp_path / "series.yaml").write_text(schema)
    rows = [{"ts": 1_700_000_000 + 60 * i, "value": float(v), "series": "s1"} for i, v in enumerate(value)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:450]))
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()
    trained = runner.invoke(
        app, ["train", str(tmp_path / "train.jsonl"), "--schema", str(tmp_path / "series.yaml"),
              "--out", str(tmp_path / "m"), "--device", "cpu"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    scored = runner.invoke(
        app, ["score", str(tmp_path / "m"), str(tmp_path / "all.jsonl"), "--out", str(tmp_path / "s.csv")]
    )
    assert scored.exit_code == 0, scored.output
    return list(csv.DictReader((tmp_path / "s.csv").open()))


def test_the_guides_univariate_schema_finds_a_stuck_value_and_a_variance_change(tmp_path: Path) -> None:
    """A reading with two decimals repeats by chance now and then (about 8 times in these
    3,000 rows); frozen for an hour it alarms within minutes, as does its noise growing
    fourfold (inside an earlier incident's cooldown the alarm joins that incident)."""
    rng = np.random.default_rng(1)
    value = np.round(rng.normal(10.0, 1.0, 3000), 2)
    value[1500:1560] = value[1499]  # stuck for an hour
    value[2400:2500] = np.round(10.0 + 4.0 * rng.normal(size=100), 2)  # the noise four times as wide
    chance = int((np.diff(value[:1500]) == 0).sum())
    out = _train_and_score(tmp_path, _guide_schema(), value)
    opens = [int(r["row"]) for r in out if r["opens_incident"] == "1"]
    alarms = [int(r["row"]) for r in out if r["anomaly"] == "1"]
    print(f"\n[univariate] {chance} chance repeats before the fault; incidents opened at rows {opens}")
    assert chance >= 2, "the stream holds chance repeats for the schema to ignore"
    assert any(1501 <= r <= 1515 for r in alarms), "the frozen value alarms within minutes"
    assert any(2400 <= r <= 2420 for r in alarms), "the wider noise alarms within minutes"
    assert len(opens) <= 8, "a few false incidents, not one per chance repeat"


@pytest.mark.parametrize("calibrated", [False, True])
def test_the_guides_univariate_schema_opens_one_incident_at_a_spike(tmp_path: Path, calibrated: bool) -> None:
    """With ``calibrated: true`` the alarms outside the fault fall to about the target rate."""
    rng = np.random.default_rng(0)
    value = rng.normal(10.0, 1.0, 3000)
    value[2000:2040] += 8.0  # a fault of 40 minutes
    out = _train_and_score(tmp_path, _guide_schema(calibrated), value)
    opens = [int(r["row"]) for r in out if r["opens_incident"] == "1"]
    alarms = [int(r["row"]) for r in out if r["anomaly"] == "1"]
    outside = [r for r in alarms if not 2000 <= r < 2060]
    print(f"\n[univariate] calibrated {calibrated}: incidents opened at rows {opens}; {len(alarms)} alarms, "
          f"{len(outside)} outside the fault")  # fmt: skip
    assert any(2000 <= r <= 2005 for r in opens), "the fault opens an incident within minutes"
    assert len([r for r in alarms if 2000 <= r < 2040]) > 1, "every alarm of it is an anomaly row"
    assert len(opens) <= 8, "a few false incidents, not one per alarm"
    if calibrated:
        assert len(outside) <= 9, "about the target rate (0.1 %) of the 2,940 rows outside the fault"
    inside = {out[r]["incident"] for r in alarms if 2000 <= r < 2040}
    assert len(inside) == 1, "the fault's alarms share one incident"


def test_the_guides_schema_is_the_one_the_evaluation_measures() -> None:
    """The guide's figures come from `stream-ae evaluate --streams`, which builds its schema in
    code (`trainer.univariate.series_schema`, a fifth of a 750-row probation of minutes as the
    cooldown: 2.5 h). The two must not drift apart."""
    import yaml

    from stream_ae.features.encoder import FeatureSchema
    from trainer.univariate import GUIDE_COOLDOWN_S, series_schema

    documented = FeatureSchema.from_dict(yaml.safe_load(_guide_schema()))
    assert documented == series_schema(cooldown_s=GUIDE_COOLDOWN_S)


def test_the_guides_univariate_schema_finds_an_outage_in_a_bursty_count(tmp_path: Path) -> None:
    """Request counts move by factors: bursty, with bursts several times the usual level that
    are nobody's fault. Measured linearly, counts falling from about 40 to about 1 for two
    hours sat inside that noise (the guide's schema without ``log``: no incident, the published
    score peaked near 1 where it alarms above 4); on the log scale the outage opens an
    incident at once. The stream is ``trainer.univariate.count_and_walk_series(1)``'s first."""
    from trainer.univariate import count_and_walk_series

    name, value, labels = count_and_walk_series(1)[0]
    start = int(np.flatnonzero(np.diff(np.r_[0, labels]) == 1)[-1])
    assert (
        name == "counts-0" and np.median(value[start - 100 : start]) > 30 and np.median(value[start : start + 24]) < 3
    )
    found = {}
    for log in (True, False):
        schema = _guide_schema() if log else _guide_schema().replace(", log: true", "")
        assert ("log: true" in schema) == log
        (tmp_path / str(log)).mkdir()
        out = _train_and_score(tmp_path / str(log), schema, value)
        found[log] = [int(r["row"]) for r in out if r["opens_incident"] == "1" and start <= int(r["row"]) < start + 24]
    print(
        f"\n[univariate] outage at row {start}: incidents opened in it, log scale {found[True]}, linear {found[False]}"
    )
    assert found[True] and found[True][0] <= start + 3, "the outage opens an incident within minutes"
    assert not found[False], "measured linearly it stays inside the bursts' noise"
