"""How extreme each feature of a row is, by the training data's own quantiles.

:class:`MarginalTails` stores, per feature, the training quantiles at levels packed towards
both tails (geometric from ``1e-6`` to ``0.5`` and mirrored). A value's two-sided tail
probability is ``t = min(P(X <= v), P(X >= v))``, read off that table by linear
interpolation (the levels are about 15 % apart, so ``-log t`` is within about 0.15 of the
empirical value); the row's tail score is ``sum_i -log(2 t_i)`` (0 for a row at every median).

It is the empirical-CDF view of ECOD (Li et al., 2022), kept in a fixed-size table so that it
lives in the model's safetensors and scores on the device like the rest of the network:

* ties (discrete features, a value shared by many rows) get the tail mass of the whole tie,
  ``P(X <= v)`` and ``P(X >= v)``, never an arbitrary rank inside it;
* no probability is below ``1 / (n + 1)`` inside the training range (the table cannot know
  more than ``n`` rows told it);
* beyond the range the probability keeps falling, by a factor ``e`` per unit (the scaled
  data's robust standard deviation), so a hostile value far outside still scores higher
  than one just outside.

It answers "how unusual is each value alone", which a density does not: a value between two
modes has a low density but is not extreme. On the ADBench sets marginal extremes carry
many of the labelled anomalies (cardio, mammography, pendigits; docs/benchmarks/evaluation.md).

Example:
    >>> import torch
    >>> tails = MarginalTails(2).fit(torch.randn(10_000, 2))
    >>> s = tails.score(torch.tensor([[0.0, 0.0], [4.0, 0.0], [-9.0, 0.0]]))
    >>> bool(s[0] < 0.1 and s[0] < s[1] < s[2])
    True
"""

from __future__ import annotations

import math

import torch
from torch import nn


def tail_levels(per_side: int = 96, smallest: float = 1e-6) -> torch.Tensor:
    """Quantile levels packed towards 0 and 1: geometric up to 0.5, mirrored (float64)."""
    left = torch.logspace(math.log10(smallest), math.log10(0.5), per_side, dtype=torch.float64)
    return torch.cat([left, 1.0 - left[:-1].flip(0)])


class MarginalTails(nn.Module):
    """Per-feature two-sided tail probabilities from a table of training quantiles."""

    knots: torch.Tensor
    levels: torch.Tensor
    tie_start: torch.Tensor
    floor: torch.Tensor

    def __init__(self, n_features: int, per_side: int = 96) -> None:
        super().__init__()
        levels = tail_levels(per_side)
        self.register_buffer("levels", levels.float())
        self.register_buffer("knots", torch.zeros(n_features, len(levels)))
        # level of the first knot equal to each knot: P(X < v) where v is a tied value
        self.register_buffer("tie_start", levels.float().repeat(n_features, 1))
        self.register_buffer("floor", torch.tensor(0.5))

    def fit(self, x: torch.Tensor) -> MarginalTails:
        """Learn the quantile table from (scaled) training rows ``[n, d]``."""
        n = x.shape[0]
        ordered = x.double().sort(0).values  # [n, d]
        pos = self.levels.double().to(x.device) * (n - 1)  # linear interpolation between order statistics
        lo = pos.floor().long().clamp(0, n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        frac = (pos - lo).unsqueeze(1)
        knots = (ordered[lo] + frac * (ordered[hi] - ordered[lo])).T.float()  # [d, levels]
        k = knots.shape[1]
        index = torch.arange(k, device=x.device).expand_as(knots)
        starts = torch.ones_like(knots, dtype=torch.bool)
        starts[:, 1:] = knots[:, 1:] != knots[:, :-1]
        first = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
        self.knots.copy_(knots)
        self.tie_start.copy_(self.levels[first])
        self.floor.fill_(1.0 / (n + 1))
        return self

    def log_tail(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, d]``: ``-log(2 t)`` per feature (0 at the median, larger the more extreme).

        Features whose table holds at most two distinct values (flags, one-hot columns: most
        of a wide event's) take :meth:`_two_valued`, the same arithmetic without the binary
        search and the gathers; the rest take :meth:`_general`. The values are the same. A
        batch holding NaN takes the general path throughout (the other does not repeat what
        the binary search does with NaN).
        """
        v = x.T.contiguous()  # [d, n]
        knots = self.knots
        two = (knots[:, 1:] != knots[:, :-1]).sum(1) <= 1  # at most one step between the knots
        some, every, nan = torch.stack([two.any(), two.all(), torch.isnan(v).any()]).tolist()  # one device sync
        if not some or nan:
            return self._general(v, knots, self.tie_start).T
        if every:
            return self._two_valued(v, knots, self.tie_start).T
        out = torch.empty_like(v)
        rows, others = two.nonzero().squeeze(1), (~two).nonzero().squeeze(1)
        out[rows] = self._two_valued(v[rows], knots[rows], self.tie_start[rows])
        out[others] = self._general(v[others], knots[others], self.tie_start[others])
        return out.T

    def _general(self, v: torch.Tensor, knots: torch.Tensor, tie_start: torch.Tensor) -> torch.Tensor:
        """``[d, n]`` for values ``v`` ``[d, n]`` of the features whose table is ``knots``."""
        k = knots.shape[1]
        idx = torch.searchsorted(knots, v, right=True)  # how many knots are <= v
        i0, i1 = (idx - 1).clamp(0, k - 1), idx.clamp(max=k - 1)
        k0, k1 = torch.gather(knots, 1, i0), torch.gather(knots, 1, i1)
        levels = self.levels.expand_as(knots)
        l0, l1 = torch.gather(levels, 1, i0), torch.gather(levels, 1, i1)
        frac = ((v - k0) / (k1 - k0).clamp_min(1e-12)).clamp(0, 1)
        le = torch.where(idx >= k, torch.ones_like(v), l0 + frac * (l1 - l0))  # P(X <= v)
        lt = torch.where(v == k0, torch.gather(tie_start, 1, i0), le)  # P(X < v): a tie counts as >= v
        return self._finish(v, knots[:, :1], knots[:, -1:], torch.minimum(le, 1.0 - lt))

    def _two_valued(self, v: torch.Tensor, knots: torch.Tensor, tie_start: torch.Tensor) -> torch.Tensor:
        """:meth:`_general` for tables of at most two distinct values ``lo <= hi``: a value
        between them interpolates from the last ``lo`` knot to the first ``hi`` one, a value
        equal to one takes its tie's mass, as there. A value equal to ``lo`` or ``hi`` (nearly
        every value of a flag) takes its feature's answer for that value, computed once; the
        arithmetic runs only for the others."""
        k = knots.shape[1]
        lo, hi = knots[:, :1], knots[:, -1:]
        n_lo = (knots == lo).sum(1, keepdim=True)  # knots equal to lo; k when there is one value
        l0 = self.levels[n_lo - 1]  # the level of the last lo knot
        l1 = self.levels[n_lo.clamp(max=k - 1)]  # of the first hi knot
        at_lo = torch.minimum(l0, 1.0 - torch.gather(tie_start, 1, n_lo - 1))  # lo < hi: P(X <= lo), P(X < lo)
        at_hi = torch.minimum(torch.ones_like(hi), 1.0 - tie_start[:, -1:])  # P(X <= hi) = 1
        on_hi, on_lo = v == hi, v == lo
        out = torch.where(on_hi, self._finish(hi, lo, hi, at_hi), self._finish(lo, lo, hi, at_lo))
        row, col = (~(on_hi | on_lo)).nonzero(as_tuple=True)
        if len(row):
            w = v[row, col].unsqueeze(1)
            frac = ((w - lo[row]) / (hi[row] - lo[row]).clamp_min(1e-12)).clamp(0, 1)
            le = l0[row] + frac * (l1[row] - l0[row])
            out[row, col] = self._finish(w, lo[row], hi[row], torch.minimum(le, 1.0 - le)).squeeze(1)
        return out

    def _finish(self, v: torch.Tensor, first: torch.Tensor, last: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``-log(2 t)``, clipped at 0, and beyond the table's range (``first`` to ``last``
        knot) the floor's log less the distance out."""
        beyond = (first - v).clamp_min(0) + (v - last).clamp_min(0)
        floor = self.floor.to(v.dtype)
        log_t = torch.where(beyond > 0, torch.log(floor) - beyond, torch.log(t.clamp_min(floor)))
        return (-(log_t + math.log(2.0))).clamp_min(0.0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``[n]``: the row's tail score, ``sum_i -log(2 t_i)``."""
        return self.log_tail(x).sum(1)
