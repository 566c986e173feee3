"""The scoring kernels give the scores the plain computation gives: the neighbour part's
tournament against masking the ``argmin`` on the sample-major layout (the code before the
speed work), on the card stream and, where ``../shared/data`` is present, the ADBench sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stream_ae.features.featurize import featurize_file
from stream_ae.models import AutoencoderDetector
from stream_ae.models.neighbours import SubsampleNeighbours
from stream_ae.tools.synthetic import transactions
from tests.streaming import card_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def masked_argmin_score(nb: SubsampleNeighbours, x: torch.Tensor) -> torch.Tensor:
    """The neighbour part as first written: ``[rows, sample, position]``, the ``k - 1``
    nearest masked one ``argmin`` at a time, then the minimum."""
    sets, size, d = nb.points.shape
    flat = nb.points.reshape(sets * size, d)
    part = torch.addmm((flat * flat).sum(1), x, flat.T, alpha=-2.0).view(-1, sets, size)
    for _ in range(nb.k - 1):
        part.scatter_(2, part.argmin(2, keepdim=True), float("inf"))
    return (part.amin(2) + (x * x).sum(1, keepdim=True)).clamp_min(0.0).sqrt().log1p().mean(1)


def assert_same(nb: SubsampleNeighbours, x: torch.Tensor) -> None:
    ours, plain = nb.score(x), masked_argmin_score(nb, x)
    np.testing.assert_allclose(ours.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("size", [64, 37])
@pytest.mark.parametrize("sets", [8, 16, 32, 5])
def test_the_neighbour_kernel_equals_the_masked_argmin(k: int, size: int, sets: int) -> None:
    gen = torch.Generator().manual_seed(k * size + sets)
    train = torch.cat([torch.randn(3_000, 5, generator=gen), torch.zeros(50, 5)])  # ties: 50 equal rows
    nb = SubsampleNeighbours(5, sets=sets, size=size, k=k).fit(train, gen)
    assert_same(nb, torch.cat([torch.randn(700, 5, generator=gen) * 2, torch.zeros(5, 5), train[:30]]))


def test_the_neighbour_kernel_on_the_card_stream() -> None:
    fitted = card_model(1, 0.0)
    assert fitted.encoder is not None
    X = featurize_file(fitted.encoder, transactions(5_000, seed=11, anomaly_rate=0.01)[0]).batch.X
    net = fitted.detector.net_
    assert net is not None and net.neighbours is not None  # type: ignore[attr-defined]
    assert_same(net.neighbours, fitted.detector._to_tensor(X))  # type: ignore[attr-defined]


@pytest.mark.skipif(not (SHARED / "adbench").is_dir(), reason="needs ../shared/data (the ADBench sets)")
@pytest.mark.parametrize("name", ["cardio", "http", "shuttle", "smtp", "thyroid"])
def test_the_neighbour_kernel_on_the_shared_sets(name: str) -> None:
    """Sets with many identical rows (http, smtp) test the ties."""
    from trainer.evaluate import load_adbench

    X, _ = load_adbench(SHARED, name)
    rows = np.random.default_rng(0).choice(len(X), min(len(X), 6_000), replace=False)
    det = AutoencoderDetector("ncae", device="cpu", max_steps=4, min_steps=4, seed=0).fit(X[rows[:4_000]])
    assert det.net_ is not None and det.net_.neighbours is not None  # type: ignore[attr-defined]
    assert_same(det.net_.neighbours, det._to_tensor(X[rows]))  # type: ignore[attr-defined]


def assert_heads_same(det: AutoencoderDetector, X: np.ndarray) -> None:
    """The heads run together (scoring) against one by one (the training path)."""
    net = det.net_
    x = det._to_tensor(X)  # type: ignore[attr-defined]
    with torch.no_grad():
        grouped = net._log_ratios(x)  # type: ignore[union-attr]
    with torch.enable_grad():
        one_by_one = net._log_ratios(x).detach()  # type: ignore[union-attr]
    np.testing.assert_allclose(grouped.numpy(), one_by_one.numpy(), rtol=1e-5, atol=1e-5)


def test_the_grouped_heads_on_the_card_stream() -> None:
    fitted = card_model(1, 0.0)
    assert fitted.encoder is not None
    X = featurize_file(fitted.encoder, transactions(5_000, seed=12, anomaly_rate=0.01)[0]).batch.X
    assert_heads_same(fitted.detector, X)


@pytest.mark.skipif(not (SHARED / "adbench").is_dir(), reason="needs ../shared/data (the ADBench sets)")
def test_the_grouped_heads_on_a_shared_set() -> None:
    from trainer.evaluate import load_adbench

    X, _ = load_adbench(SHARED, "cardio")
    det = AutoencoderDetector("ncae", device="cpu", max_steps=200, min_steps=200, seed=0).fit(X)
    assert_heads_same(det, X)
