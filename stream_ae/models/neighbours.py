"""How isolated a row is from small random samples of the training data.

:class:`SubsampleNeighbours` keeps ``sets`` random samples of ``size`` training rows each
(without replacement within a sample). A row's neighbour score is the mean over the samples
of ``log(1 + d_k)``, where ``d_k`` is its Euclidean distance (in the scaled input space) to
the ``k``-th nearest row of that sample.

Why small samples: training data is contaminated, and anomalies often come as a tight
cluster (many copies of one attack, one faulty sensor state). Against all training rows such
a cluster is dense, so a density estimate or a plain nearest-neighbour distance calls it
normal. In a sample of 64 rows a cluster holding 0.5 % of the traffic has on average a third
of a member, so with ``k = 2`` its rows are still far from their second neighbour, while
rows of the bulk always find two. This is the masking argument behind IsolationForest's 256-row
sub-samples and iNNE (Bandaragoda et al., 2018); averaging over many samples removes most of
one sample's luck. Samples are drawn with a seeded generator: a refit on the same rows gives
the same score.

The samples are buffers of the network (``sets * size`` rows, 2,048 by default), so they
travel in the model's safetensors and score on the device: one matrix product per batch.

Example:
    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> x = torch.cat([torch.randn(5_000, 2), torch.full((25, 2), 6.0)])  # 0.5 % identical outliers
    >>> nb = SubsampleNeighbours(2, sets=32, size=64, k=2).fit(x, gen)
    >>> s = nb.score(torch.tensor([[0.0, 0.0], [6.0, 6.0]]))
    >>> bool(s[1] > s[0] + 1.0)
    True
"""

from __future__ import annotations

import torch
from torch import nn


class SubsampleNeighbours(nn.Module):
    """Mean ``log(1 + distance to the k-th nearest row)`` over small random training samples."""

    points: torch.Tensor

    def __init__(self, n_features: int, sets: int = 32, size: int = 64, k: int = 2) -> None:
        super().__init__()
        if sets < 1 or size < 1 or not 1 <= k <= size:
            raise ValueError(f"need sets >= 1 and 1 <= k <= size, got sets={sets}, size={size}, k={k}")
        self.k = k
        self.register_buffer("points", torch.zeros(sets, size, n_features))

    def fit(self, x: torch.Tensor, gen: torch.Generator) -> SubsampleNeighbours:
        """Draw the samples from (scaled) training rows ``[n, d]``. With fewer than ``size``
        rows each sample repeats rows; ``k`` is then the distance to a repeat of itself at worst,
        which is what a tiny training set can tell."""
        sets, size, _ = self.points.shape
        n = x.shape[0]
        if n >= size:
            idx = torch.stack([torch.randperm(n, generator=gen, device=gen.device)[:size] for _ in range(sets)])
        else:
            idx = torch.randint(n, (sets, size), generator=gen, device=gen.device)
        self.points.copy_(x[idx.to(x.device)])
        return self

    def score(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """``[n]``: mean over the samples of ``log(1 + d_k)``; larger = more isolated.

        Squared distances up to the row's own ``|x|^2`` come from one matrix product per
        chunk (``|y|^2 - 2 x.y``); the ``k``-th smallest per sample is found by ``k - 1``
        rounds of "mask the minimum" and a last minimum, which for small ``k`` is several
        times faster than ``topk`` on the CPU. Chunks of 1,024 rows keep the matrix in cache.
        """
        with torch.autocast(x.device.type, enabled=False):  # |y|^2 - 2 x.y cancels: never in bf16
            return self._score(x.float(), chunk)

    def _score(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        sets, size, d = self.points.shape
        flat = self.points.reshape(sets * size, d)
        sq = (flat * flat).sum(1)
        out = []
        for i in range(0, x.shape[0], chunk):
            xc = x[i : i + chunk]
            part = torch.addmm(sq, xc, flat.T, alpha=-2.0).view(-1, sets, size)  # d^2 - |x|^2
            for _ in range(self.k - 1):
                part.scatter_(2, part.argmin(2, keepdim=True), float("inf"))
            kth = (part.amin(2) + (xc * xc).sum(1, keepdim=True)).clamp_min(0.0).sqrt()  # [c, sets]
            out.append(kth.log1p().mean(1))
        return torch.cat(out) if out else x.new_zeros(0)
