"""The score likelihood: an entity judged against its own recent scores (offline building block
of the metric-streams work; ``trainer.nab`` measures it)."""

from __future__ import annotations

import numpy as np

from stream_ae.scoring.likelihood import ScoreLikelihood, first_alarms


def test_a_lasting_change_alarms_then_becomes_the_new_normal() -> None:
    rng = np.random.default_rng(1)
    raw = np.r_[rng.normal(1.0, 0.1, 2000), rng.normal(3.0, 0.1, 4000)]
    published = ScoreLikelihood(long_halflife=300).update(raw)
    assert published[:100].max() == 0.0, "no verdict during the warm-up"
    assert np.quantile(published[200:2000], 0.99) < 3.0
    assert published[2000:2015].max() >= 5.0, "the step is a rare excursion for this entity"
    assert np.median(published[-1000:]) < 1.0, "after a few half-lives the new level is ordinary"


def test_row_by_row_equals_one_batch() -> None:
    """The state carries across calls: batches of any size give the same published scores."""
    raw = np.random.default_rng(2).gamma(2.0, 1.0, 1500)
    whole = ScoreLikelihood().update(raw)
    pieces = ScoreLikelihood()
    parts = [pieces.update(raw[i : i + 137]) for i in range(0, len(raw), 137)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_a_constant_stream_never_alarms() -> None:
    published = ScoreLikelihood().update(np.full(1000, 4.2))
    assert published.max() < 1.0


def test_alarms_within_the_cooldown_join_the_open_incident() -> None:
    flags = np.zeros(100, dtype=bool)
    flags[[10, 12, 20, 40, 41, 90]] = True
    assert np.flatnonzero(first_alarms(flags, cooldown=8)).tolist() == [10, 40, 90]
