from __future__ import annotations

import numpy as np
import pytest

from stream_ae.scoring.threshold import Threshold, population_stability_index


@pytest.mark.parametrize("rate", [0.05, 0.01])
def test_quantile_threshold_hits_rate_on_fresh_data(rate: float) -> None:
    rng = np.random.default_rng(0)
    t = Threshold.fit(rng.gumbel(size=50_000), rate, "quantile")
    fresh = rng.gumbel(size=200_000)
    assert abs((fresh > t.value).mean() - rate) < 0.2 * rate


def test_pot_extrapolates_below_the_sample_resolution() -> None:
    rng = np.random.default_rng(1)
    rate = 1e-4  # 2,000 calibration scores see only 0.2 exceedances at this rate
    t = Threshold.fit(rng.exponential(size=2_000), rate, "auto")
    assert t.method == "pot"
    fresh = rng.exponential(size=2_000_000)
    observed = (fresh > t.value).mean()
    assert rate / 3 < observed < rate * 3, observed


def test_psi_is_small_without_drift_and_large_with_it() -> None:
    rng = np.random.default_rng(2)
    t = Threshold.fit(rng.normal(size=20_000), 0.01)
    assert population_stability_index(t.reference_quantiles, rng.normal(size=5_000)) < 0.05
    assert population_stability_index(t.reference_quantiles, rng.normal(1.0, 1, size=5_000)) > 0.25


def test_threshold_refuses_too_few_scores() -> None:
    with pytest.raises(ValueError):
        Threshold.fit(np.arange(5.0), 0.01)
