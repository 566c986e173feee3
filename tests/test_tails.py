"""The tail score: how extreme each value is by the training quantiles."""

from __future__ import annotations

import math

import numpy as np
import torch

from stream_ae.models import AutoencoderDetector
from stream_ae.models.tails import MarginalTails


def test_tail_score_is_zero_at_the_median_and_grows_with_extremity() -> None:
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(20_000, 1)).astype(np.float32))
    tails = MarginalTails(1).fit(x)
    values = torch.tensor([[0.0], [1.0], [-2.0], [3.0], [-3.5], [8.0], [80.0]])
    s = tails.score(values).numpy()
    assert s[0] < 0.05
    # inside the range it is -log of the two-sided normal tail probability
    assert abs(s[1] - -math.log(math.erfc(1 / math.sqrt(2)))) < 0.05
    assert abs(s[2] - -math.log(math.erfc(2 / math.sqrt(2)))) < 0.1
    assert np.all(np.diff(s[1:]) > 0), "further out is always more extreme, beyond the training range too"


def test_tied_values_get_the_tail_mass_of_the_whole_tie() -> None:
    """A flag that is 0 in 95 % of rows: 0 is not extreme at all, 1 is a 5 % tail."""
    flag = (np.random.default_rng(1).random((10_000, 1)) < 0.05).astype(np.float32)
    tails = MarginalTails(1).fit(torch.from_numpy(flag))
    zero, one = tails.score(torch.tensor([[0.0], [1.0]])).numpy()
    rate = float(flag.mean())
    assert zero == 0.0
    assert abs(one - -math.log(2 * rate)) < 0.15  # the table's levels are ~15 % apart in probability


def test_tail_part_flags_a_single_extreme_feature_the_density_misses() -> None:
    """One feature at the edge of its range in an otherwise typical row ranks high on ``tail``."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3_000, 6)).astype(np.float32)
    det = AutoencoderDetector("ncae", seed=0, device="cpu", epochs=2, min_steps=30, max_steps=60).fit(X)
    test = rng.normal(size=(500, 6)).astype(np.float32)
    test[0, 3] = 4.5  # beyond all but a handful of 3,000 training values
    parts = det.component_scores(test)
    assert set(parts) >= {"density", "reference", "tail", "recon"}
    assert (parts["tail"] > parts["tail"][0]).sum() <= 2
    assert (det.score_samples(test) > det.score_samples(test)[0]).sum() <= 5


def test_a_warm_started_model_learns_the_tails_of_its_own_training_window() -> None:
    """The trainer warm-starts from the champion: the tail table must still be the new window's
    (traffic moved), not the champion's copied along with its weights."""
    rng = np.random.default_rng(3)
    old, new = rng.normal(size=(2_000, 4)).astype(np.float32), rng.normal(3.0, 2.0, size=(2_000, 4)).astype(np.float32)
    fast = {"epochs": 1, "min_steps": 10, "max_steps": 20}
    champion = AutoencoderDetector("ncae", seed=0, device="cpu", **fast).fit(old)
    warm = AutoencoderDetector("ncae", seed=0, device="cpu", **fast).fit(new, init_from=champion)
    cold = AutoencoderDetector("ncae", seed=0, device="cpu", **fast).fit(new)
    knots = {name: det.state_dict()["tails.knots"] for name, det in (("warm", warm), ("cold", cold), ("old", champion))}
    assert torch.equal(knots["warm"], knots["cold"])
    assert not torch.equal(knots["warm"], knots["old"])


def test_flags_and_one_hot_columns_score_as_the_general_table_does() -> None:
    """Tables of one or two distinct values take a path without the binary search; its values
    are the general path's to the bit: at each value, between, beyond, at the edges of a tie."""
    rng = np.random.default_rng(5)
    n = 4_000
    columns = [
        (rng.random(n) < 0.03).astype(np.float32),  # a rare flag
        (rng.random(n) < 0.5).astype(np.float32) * 3.0 - 1.0,  # two values, balanced
        np.full(n, 2.5, dtype=np.float32),  # a constant
        np.where(rng.random(n) < 1e-3, 7.0, 0.0).astype(np.float32),  # a flag rarer than the table's levels
        rng.normal(size=n).astype(np.float32),  # a continuous one: the general path
    ]
    tails = MarginalTails(len(columns)).fit(torch.from_numpy(np.stack(columns, 1)))
    probes = np.array([-1e30, -3.0, -1.0, -0.5, 0.0, 1e-7, 0.3, 1.0, 2.0, 2.5, 3.0, 7.0, 9.0, np.inf, -np.inf])
    values = torch.from_numpy(np.stack([np.concatenate([probes, rng.normal(size=200) * 4])] * len(columns), 1))
    values = values.float()
    v = values.T.contiguous()
    general = tails._general(v, tails.knots, tails.tie_start)
    assert torch.equal(tails.log_tail(values).T, general)
    # a flag's table is two-valued unless a level falls between its last 0 and first 1, where
    # the quantiles interpolate (the two rare flags here); the constant's is one-valued
    two = ((tails.knots[:, 1:] != tails.knots[:, :-1]).sum(1) <= 1).nonzero().squeeze(1)
    assert two.tolist() == [1, 2]
    assert torch.equal(tails._two_valued(v[two], tails.knots[two], tails.tie_start[two]), general[two])
    # and the flag's two values mean what they did: 0 is ordinary, 1 a 3 % tail
    zero, one = tails.log_tail(torch.tensor([[0.0, -1.0, 2.5, 0.0, 0.0], [1.0, -1.0, 2.5, 0.0, 0.0]]))[:, 0].tolist()
    assert zero == 0.0 and abs(one - -math.log(2 * columns[0].mean())) < 0.15
