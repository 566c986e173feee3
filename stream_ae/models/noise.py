"""Noise for the noise-contrastive head: what the head learns to tell apart from real events.

Two families, on purpose:

* **Reference noise with a known density**: ``gaussian`` (a Gaussian fitted to the scaled
  training data, widened by ``scales``) or ``marginal`` (independent draws from each
  feature's histogram: per-feature shuffles with a known density). Because ``log q(x)`` is known, the head's logit
  ``log p(x)/q(x)`` turns into a density estimate ``log p(x) = logit + log q(x)`` (classic
  noise-contrastive estimation). This is what the NCAE score uses.
* **Telescoping chains** (``bridges`` > 1 in the network): waymarks between real rows and
  reference samples (:meth:`Reference.bridge`), e.g. rows with a growing fraction of features
  swapped for marginal draws. One head per step learns ``log p_k / p_(k+1)`` between two
  close distributions; their sum is ``log p / q`` without the "density chasm" of a single
  classifier against far-away noise (Rhodes et al., 2020, telescoping density-ratio estimation).
* **Corruptions of real rows** (``swap``, ``mask``, ``shift``, ``jitter``, ``uniform``): hard
  negatives close to the data. Their density is unknown, so they only sharpen the head as
  extra negatives (``hard_negative_weight``); they never enter ``log q``.

Example:
    >>> import torch
    >>> ref = GaussianReference(4, scales=(1.0, 2.0)).fit(torch.randn(500, 4))
    >>> x = ref.sample(8, torch.Generator().manual_seed(0))
    >>> x.shape, ref.log_prob(x).shape
    (torch.Size([8, 4]), torch.Size([8]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

Corruption = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Reference(nn.Module):
    """Noise with an exact log-density: ``sample`` and ``log_prob``, state in buffers."""

    def fit(self, x: torch.Tensor) -> Reference:
        raise NotImplementedError

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bridge(self, real: torch.Tensor, noise: torch.Tensor, alpha: float, u: torch.Tensor) -> torch.Tensor:
        """A waymark between real rows (``alpha`` 0) and paired reference samples (``alpha`` 1).

        ``u`` (uniform, the shape of ``real``) is shared by every waymark of one step, so the
        waymarks of a chain are nested. The default interpolates with variance kept,
        ``sqrt(1 - alpha^2) real + alpha noise``.
        """
        return math.sqrt(1.0 - alpha * alpha) * real + alpha * noise


class GaussianReference(Reference):
    """A scale mixture of Gaussians ``N(mean, s^2 cov)`` fitted to the data."""

    mean: torch.Tensor
    chol: torch.Tensor
    scales: torch.Tensor

    def __init__(self, n_features: int, scales: Sequence[float] = (1.0, 2.0), ridge: float = 1e-3) -> None:
        super().__init__()
        self.ridge = ridge
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("chol", torch.eye(n_features))
        self.register_buffer("scales", torch.tensor([float(s) for s in scales]))

    def fit(self, x: torch.Tensor) -> GaussianReference:
        xd = x.double()
        cov = torch.cov(xd.T).reshape(x.shape[1], x.shape[1])
        eye = torch.eye(x.shape[1], dtype=xd.dtype, device=xd.device)  # on x's device: CUDA too
        cov = cov + self.ridge * cov.diagonal().mean().clamp_min(1e-6) * eye
        self.mean.copy_(xd.mean(0).float())
        self.chol.copy_(torch.linalg.cholesky(cov).float())
        return self

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        eps = torch.randn(n, self.mean.shape[0], generator=gen, device=gen.device).to(self.mean.device)
        pick = torch.randint(len(self.scales), (n,), generator=gen, device=gen.device).to(self.mean.device)
        return self.mean + self.scales[pick, None] * (eps @ self.chol.T)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[1]
        sol = torch.linalg.solve_triangular(self.chol, (x - self.mean).T, upper=False).T
        maha = (sol.double() ** 2).sum(1)
        logdet = 2.0 * torch.log(self.chol.diagonal().double()).sum()
        s = self.scales.double()[:, None]
        comps = -0.5 * maha[None, :] / s**2 - d * torch.log(s) - 0.5 * logdet - 0.5 * d * math.log(2 * math.pi)
        return (torch.logsumexp(comps, 0) - math.log(len(self.scales))).float()

    def bridge(self, real: torch.Tensor, noise: torch.Tensor, alpha: float, u: torch.Tensor) -> torch.Tensor:
        """Interpolation around the fitted mean, variance kept."""
        return self.mean + math.sqrt(1.0 - alpha * alpha) * (real - self.mean) + alpha * (noise - self.mean)


class MarginalReference(Reference):
    """The product of the data's marginals, each a smoothed histogram: ``q(x) = prod_i p_i(x_i)``.

    Samples break the joint structure but keep every marginal, so the head learns only the
    dependence between features, and ``logit + log q`` still is a log-density in which
    marginal extremes (``log p_i`` small) count too. Outside the histogram's range the
    log-density falls linearly with the distance, in bin widths.
    """

    lo: torch.Tensor
    width: torch.Tensor
    log_density: torch.Tensor

    def __init__(self, n_features: int, bins: int = 64, pad: float = 0.1, smoothing: float = 0.5) -> None:
        super().__init__()
        self.bins, self.pad, self.smoothing = bins, pad, smoothing
        self.register_buffer("lo", torch.zeros(n_features))
        self.register_buffer("width", torch.ones(n_features))
        self.register_buffer("log_density", torch.zeros(n_features, bins))

    def fit(self, x: torch.Tensor) -> MarginalReference:
        lo, hi = x.min(0).values, x.max(0).values
        span = (hi - lo).clamp_min(1e-3)
        lo, hi = lo - self.pad * span, hi + self.pad * span
        width = (hi - lo) / self.bins
        idx = ((x - lo) / width).long().clamp(0, self.bins - 1)
        counts = torch.zeros(x.shape[1], self.bins, dtype=torch.float64, device=x.device)
        counts.scatter_add_(1, idx.T, torch.ones_like(idx.T, dtype=torch.float64))
        prob = (counts + self.smoothing) / (counts.sum(1, keepdim=True) + self.smoothing * self.bins)
        self.lo.copy_(lo)
        self.width.copy_(width)
        self.log_density.copy_((prob.log() - width.double().log()[:, None]).float())
        return self

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        d = self.lo.shape[0]
        probs = (self.log_density + self.width.log()[:, None]).exp()  # bin probabilities
        bins = torch.multinomial(probs.to(gen.device), n, replacement=True, generator=gen).T.to(self.lo.device)
        u = torch.rand(n, d, generator=gen, device=gen.device).to(self.lo.device)
        return self.lo + (bins.float() + u) * self.width

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        pos = (x - self.lo) / self.width
        idx = pos.floor().long().clamp(0, self.bins - 1)
        lp = torch.gather(self.log_density.expand(x.shape[0], -1, -1), 2, idx.unsqueeze(2)).squeeze(2)
        outside = torch.where(pos < 0, -pos, (pos - self.bins).clamp_min(0))
        return (lp - outside).sum(1)

    def bridge(self, real: torch.Tensor, noise: torch.Tensor, alpha: float, u: torch.Tensor) -> torch.Tensor:
        """Feature swaps: each feature of a real row is replaced, with probability ``alpha``,
        by an independent draw from its marginal (the paired reference sample's value)."""
        return torch.where(u < alpha, noise, real)


class MixtureReference(Reference):
    """An equal-weight mixture of a Gaussian and a marginal reference (both densities exact)."""

    def __init__(self, n_features: int, scales: Sequence[float] = (1.0, 2.0)) -> None:
        super().__init__()
        self.gaussian = GaussianReference(n_features, scales)
        self.marginal = MarginalReference(n_features)

    def fit(self, x: torch.Tensor) -> MixtureReference:
        self.gaussian.fit(x)
        self.marginal.fit(x)
        return self

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        half = n // 2
        return torch.cat([self.gaussian.sample(half, gen), self.marginal.sample(n - half, gen)])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.stack([self.gaussian.log_prob(x), self.marginal.log_prob(x)])
        return torch.logsumexp(both, 0) - math.log(2.0)


REFERENCES: dict[str, type[Reference]] = {
    "gaussian": GaussianReference,
    "marginal": MarginalReference,
    "mixture": MixtureReference,
}


def swap(x: torch.Tensor, gen: torch.Generator, frac: float = 0.2) -> torch.Tensor:
    """Replace a random ``frac`` of each row's features by the same feature of another row."""
    perm = torch.randperm(x.shape[0], generator=gen, device=gen.device).to(x.device)
    mask = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device) < frac
    return torch.where(mask, x[perm], x)


def mask(x: torch.Tensor, gen: torch.Generator, frac: float = 0.2) -> torch.Tensor:
    """Set a random ``frac`` of features to the (scaled) centre, 0."""
    keep = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device) >= frac
    return x * keep


def shift(x: torch.Tensor, gen: torch.Generator, size: float = 3.0) -> torch.Tensor:
    """Move one random feature of each row by ``±size`` scaled units."""
    col = torch.randint(x.shape[1], (x.shape[0],), generator=gen, device=gen.device).to(x.device)
    sign = torch.randint(2, (x.shape[0],), generator=gen, device=gen.device).to(x.device) * 2 - 1
    out = x.clone()
    out[torch.arange(x.shape[0], device=x.device), col] += sign * size
    return out


def jitter(x: torch.Tensor, gen: torch.Generator, sigma: float = 0.5) -> torch.Tensor:
    """Add isotropic Gaussian noise of scale ``sigma``."""
    return x + sigma * torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)


def uniform(x: torch.Tensor, gen: torch.Generator, widen: float = 0.25) -> torch.Tensor:
    """Uniform samples over the batch's per-feature range widened by ``widen`` per side."""
    lo, hi = x.min(0).values, x.max(0).values
    span = (hi - lo).clamp_min(1e-6)
    u = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device)
    return lo - widen * span + u * span * (1 + 2 * widen)


CORRUPTIONS: dict[str, Corruption] = {
    "swap": swap,
    "mask": mask,
    "shift": shift,
    "jitter": jitter,
    "uniform": uniform,
}


def corrupt(x: torch.Tensor, kinds: Sequence[str], gen: torch.Generator) -> torch.Tensor:
    """One corrupted copy of each row, each row by a kind drawn uniformly from ``kinds``."""
    if not kinds:
        raise ValueError("no corruption kinds given")
    pick = torch.randint(len(kinds), (x.shape[0],), generator=gen, device=gen.device).to(x.device)
    out = torch.empty_like(x)
    for i, kind in enumerate(kinds):
        rows = pick == i
        if rows.any():
            out[rows] = CORRUPTIONS[kind](x[rows], gen)
    return out
