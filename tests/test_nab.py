"""NAB's scoring rules (``trainer.nab``), checked on cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.nab import PROFILES, Stream, Window, corpus_score, probation_rows, raw_score, scaled_sigmoid, windows_for

STANDARD = PROFILES["standard"]


def _flags(n: int, *rows: int) -> np.ndarray:
    f = np.zeros(n, dtype=bool)
    f[list(rows)] = True
    return f


def test_the_reward_falls_from_the_window_start_to_its_end_and_counts_once() -> None:
    w = [Window(100, 199)]
    early, late = raw_score(_flags(1000, 100), w, STANDARD, 0), raw_score(_flags(1000, 199), w, STANDARD, 0)
    assert early == pytest.approx(scaled_sigmoid(-1.0)) and early == pytest.approx(0.98661, abs=1e-5)
    assert 0 < late < 0.03
    assert raw_score(_flags(1000, 100, 120, 150), w, STANDARD, 0) == pytest.approx(early), "later ones add nothing"


def test_false_alarms_cost_less_just_after_a_window_and_misses_cost_fn() -> None:
    w = [Window(100, 199)]
    just_after = raw_score(_flags(1000, 100, 205), w, STANDARD, 0) - raw_score(_flags(1000, 100), w, STANDARD, 0)
    far_after = raw_score(_flags(1000, 100, 900), w, STANDARD, 0) - raw_score(_flags(1000, 100), w, STANDARD, 0)
    before = raw_score(_flags(1000, 100, 50), w, STANDARD, 0) - raw_score(_flags(1000, 100), w, STANDARD, 0)
    assert -0.11 < just_after < 0 and far_after == pytest.approx(-0.11) and before == pytest.approx(-0.11)
    assert raw_score(_flags(1000), w, STANDARD, 0) == -1.0
    assert raw_score(_flags(1000), w, PROFILES["reward_low_fn"], 0) == -2.0
    assert raw_score(_flags(1000, 50), w, STANDARD, probation=150) == -1.0, "the probation is not scored"


def test_a_stream_without_anomalies_charges_every_detection_the_whole_fp() -> None:
    """NAB's corpus holds streams with no labelled anomaly; each alarm there is a false one."""
    assert raw_score(_flags(1000, 300, 600), [], STANDARD, 0) == pytest.approx(-0.22)
    assert raw_score(_flags(1000, 50), [], STANDARD, probation=150) == 0.0
    quiet = Stream("quiet", np.r_[np.zeros(999), 1.0], [])
    loud = Stream("loud", np.r_[np.zeros(500), 1.0, np.zeros(499)], windows_for(1000, [500]))
    found = scaled_sigmoid(-0.5)  # the window's middle row
    expected = 100 * (found - 0.11 + 1) / (scaled_sigmoid(-1.0) + 1)
    assert corpus_score([quiet, loud], STANDARD)[0] == pytest.approx(expected)


def test_windows_share_a_tenth_of_the_stream_and_the_probation_is_capped() -> None:
    assert windows_for(4000, [1000, 3000]) == [Window(900, 1099), Window(2900, 3099)]
    assert probation_rows(1000) == 150 and probation_rows(100_000) == 750


def test_the_corpus_score_is_100_for_a_perfect_detector_and_0_for_none() -> None:
    rng = np.random.default_rng(0)
    streams = []
    for k in range(3):
        scores = rng.random(2000) * 0.5
        w = windows_for(2000, [1000 + 200 * k])
        scores[w[0].start] = 1.0  # a spike at each window's first row
        streams.append(Stream(f"s{k}", scores, w))
    score, threshold = corpus_score(streams, STANDARD)
    assert score == pytest.approx(100.0) and threshold > 0.5
    blind = [Stream(s.name, np.zeros(2000), s.windows) for s in streams]
    assert corpus_score(blind, STANDARD)[0] == 0.0, "never detecting is always on offer"


def test_evaluate_streams_scores_each_machine_as_a_stream(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``stream-ae evaluate --streams`` on machines laid out as SMD's (here two small fakes
    with a step fault each): one NAB score per method and profile."""
    import gzip
    import json

    from typer.testing import CliRunner

    from stream_ae.tools.cli import app

    rng = np.random.default_rng(1)
    (tmp_path / "smd").mkdir()
    for machine in ("machine-1-6", "machine-2-1"):
        train = rng.normal(0.5, 0.05, (600, 3)).astype(np.float32)
        test = rng.normal(0.5, 0.05, (900, 3)).astype(np.float32)
        label = np.zeros(900, dtype=np.int64)
        test[500:520] += 0.6
        label[500:520] = 1
        for part, arr in (("train", train), ("test", test), ("test_label", label)):
            with gzip.open(tmp_path / "smd" / f"{machine}_{part}.npy.gz", "wb") as fh:
                np.save(fh, arr)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--streams", "--data-dir", str(tmp_path), "--out", str(out), "--variants", "ae",
            "--options", '{"max_steps": 30, "min_steps": 30}', "--seeds", "0",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    hosts = json.loads((out / "host_metrics_0.json").read_text())
    assert hosts["faults"] > 0 and set(hosts["published"]) >= {"found", "false_incidents_per_host_week"}
    assert (out / "host_metrics_0.png").stat().st_size > 10_000, "the plot of a few hosts and their alarms"
    corpus = json.loads((out / "host_series_0.json").read_text())
    assert set(corpus) == {"raw", "raw+cooldown", "likelihood+cooldown", "incidents"}
    assert corpus["likelihood+cooldown"]["standard"]["score"] > 40, "faults of six noise units and more are found"
    counts = json.loads((out / "count_walk_series_0.json").read_text())
    assert set(counts) == set(corpus)
    assert counts["incidents"]["standard"]["score"] > 40, "bursty counts' outages and the walks' shifts are found"
    table = json.loads((out / "streams.json").read_text())
    ways = ("", "+cooldown", "+likelihood+cooldown")
    assert set(table) == {f"{m}{v}" for m in ("ae", "iforest", "pca") for v in ways}
    assert set(table["ae"]) == set(PROFILES)
    assert all(0.0 <= v["score"] <= 100.0 for per in table.values() for v in per.values())
    assert table["pca"]["standard"]["score"] > 50, "a step fault of 12 standard deviations is found early"
    series = json.loads((out / "smd_series.json").read_text())
    assert set(series) == {"raw", "raw+cooldown", "likelihood+cooldown", "incidents"}
    assert all(0.0 <= v["score"] <= 100.0 for per in series.values() for v in per.values())
    assert series["incidents"]["standard"]["score"] > 30, "each metric's step is an incident at the product's threshold"
