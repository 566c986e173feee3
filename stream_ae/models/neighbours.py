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

    def score(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """``[n]``: mean over the samples of ``log(1 + d_k)``; larger = more isolated.

        Squared distances up to the row's own ``|x|^2`` come from one matrix product per
        chunk (``[x, 1] . [-2 y, |y|^2]``), laid out ``[rows, position in sample, sample]``. For
        ``k = 2`` (the default) the second-smallest per sample is found without indices, by
        a tournament (:func:`second_smallest`): pairwise minima and maxima of the two halves,
        recursively, all elementwise over contiguous blocks, about three times faster on the
        CPU than masking the ``argmin``, which is kept for other ``k``. On the CPU a chunk's
        matrix is 1 MB (128 rows of the default 32 samples of 64; more rows with fewer samples),
        which stays in cache, and a chunk's tournament stops at 8 positions: the
        last rounds, tiny tensors whose cost is the operation's own overhead, run once for a
        block of 1,024 rows (:func:`reduce_pairs`). On a GPU each chunk costs some thirty kernel
        launches whatever its size, so there a chunk is 16,384 rows (a 128 MB matrix): on an
        H200 the part took 7.8 ms of a 4,096-row batch in chunks of 256. The result is the
        same to float rounding (the matrix product's blocking may differ with the chunk).
        """
        if chunk is None:  # on the CPU a chunk's matrix stays about 1 MB whatever the samples
            sets, size, _ = self.points.shape
            chunk = min(1024, max(64, CPU_CHUNK_FLOATS // (sets * size))) if x.device.type == "cpu" else 16_384
        with torch.autocast(x.device.type, enabled=False):  # |y|^2 - 2 x.y cancels: never in bf16
            return self._score(x.float(), chunk)

    def _score(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        sets, size, d = self.points.shape
        if x.shape[0] == 0:
            return x.new_zeros(0)
        # position-major: column j * sets + s is row j of sample s. The row's ``1`` against the
        # sample's ``|y|^2`` folds the bias into the product: ``addmm``'s separate pass over the
        # [chunk, size * sets] output cost as much as the product itself on the CPU.
        flat = self.points.transpose(0, 1).reshape(size * sets, d)
        refs = torch.cat([flat * -2.0, (flat * flat).sum(1, keepdim=True)], 1).T.contiguous()  # [d + 1, m]
        x1 = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
        kths: list[torch.Tensor] = []  # per block of rows: the squared k-th distance minus |x|^2, [rows, sets]
        lows: list[torch.Tensor] = []  # k = 2, per chunk of the block: the tournament's survivors
        bests: list[torch.Tensor] = []  # and its best second-smallest candidate so far, [c, sets]
        for i in range(0, x.shape[0], chunk):
            part = torch.mm(x1[i : i + chunk], refs).view(-1, size, sets)  # d^2 - |x|^2
            if self.k != 2:
                for _ in range(self.k - 1):
                    part.scatter_(1, part.argmin(1, keepdim=True), float("inf"))
                kths.append(part.amin(1))
                continue
            low, best = reduce_pairs(part, FINISH_AT)
            lows.append(low)
            if best is not None:
                bests.append(best)
            if i + chunk >= x.shape[0] or len(lows) * chunk >= FINISH_ROWS:
                # the last, small rounds once for the block's chunks: a few ops, not a few per chunk
                _, best = reduce_pairs(torch.cat(lows), 1, torch.cat(bests) if bests else None)
                assert best is not None, "need at least two rows per sample"
                kths.append(best)
                lows, bests = [], []
        kth_sq = torch.cat(kths)
        kth = (kth_sq + (x * x).sum(1, keepdim=True)).clamp_min(0.0).sqrt()  # [n, sets]
        return kth.log1p().mean(1)


# a CPU chunk's distance matrix: 256K floats, 1 MB (128 rows of the default 32 samples of 64)
CPU_CHUNK_FLOATS = 1 << 18
# positions per sample at which a chunk's tournament stops; the rounds left run once for a block
# of FINISH_ROWS rows (its survivors, 1 MB at 32 samples, stay in cache), not once per chunk
FINISH_AT = 8
FINISH_ROWS = 1024


def amin_positions(h: torch.Tensor) -> torch.Tensor:
    """``h.amin(1)`` of ``[n, m, s]`` whose rows are each contiguous. On the CPU torch reduces a
    middle dimension quickly only along an inner one of 32 floats or more: with 16 or 8 samples
    it took 14 times as long (200 against 15 µs for a chunk's round). So positions are folded
    into a 32-wide inner dimension first (each column then holds one sample's positions of one
    residue), and the 32 columns halved down to the samples.

    Example:
        >>> h = torch.randn(5, 12, 8)
        >>> torch.equal(amin_positions(h), h.amin(1))
        True
    """
    n, m, s = h.shape
    if s >= 32 or 32 % s or (m * s) % 32:
        return h.amin(1)
    folded = h.reshape(n, m * s // 32, 32).amin(1)  # column c: sample c % s
    while folded.shape[1] > s:
        half = folded.shape[1] // 2
        folded = torch.minimum(folded[:, :half], folded[:, half:])
    return folded


def second_smallest(part: torch.Tensor) -> torch.Tensor:
    """The second-smallest value along dimension 1 of ``[n, m, s]`` (m >= 2), ties counted
    (two equal minima: that value). ``part`` is left as it was.

    The minimum is in the pairwise minima ``lo`` of the two halves; the second-smallest is
    either the minimum's partner (then it is the smallest of the pairwise maxima ``hi``) or
    the second-smallest of ``lo``. So it is the smaller of ``min(hi)`` and, recursively, the
    second-smallest of ``lo``. An odd element out joins ``lo`` unpaired.

    Example:
        >>> second_smallest(torch.tensor([[[5.0], [1.0], [3.0], [1.0], [9.0]]])).tolist()
        [[1.0]]
        >>> second_smallest(torch.tensor([[[5.0], [2.0], [3.0], [1.0], [9.0]]])).tolist()
        [[2.0]]
    """
    _, best = reduce_pairs(part.clone(), 1)
    assert best is not None, "need at least two rows per sample"
    return best


def reduce_pairs(
    part: torch.Tensor, stop: int, best: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rounds of :func:`second_smallest`'s tournament on ``part`` ``[n, m, s]`` until at most
    ``stop`` positions remain: returns the survivors ``lo`` and the smallest pairwise maximum
    so far (folded into ``best``; None when no round ran). The second-smallest of the whole is
    the smaller of ``best`` and the survivors' second-smallest, so a caller can stop a chunk's
    tournament early and finish the survivors of many chunks together. ``part`` is scratch:
    each round's maxima are written over its first half."""
    while part.shape[1] > stop:
        m = part.shape[1]
        half = m // 2
        a, b = part[:, :half], part[:, half : 2 * half]
        low = torch.minimum(a, b)
        top = amin_positions(torch.maximum(a, b, out=a))
        best = top if best is None else torch.minimum(best, top)
        part = low if m % 2 == 0 else torch.cat([low, part[:, 2 * half :]], 1)
    return part, best
