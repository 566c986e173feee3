"""The autoencoder family as torch modules with one contract.

Every network maps a batch of scaled rows ``x`` (float32, ``[n, d]``) to:

* ``training_loss(x, gen) -> (loss, parts)``: the objective of its variant;
* ``score_parts(x) -> dict``: raw per-row anomaly components, higher = more anomalous
  (always ``"recon"``; the NCAE adds ``"density"``, ``"reference"``, ``"tail"`` and ``"neighbour"``, the VAE ``"kl"``);
* ``residual(x) -> [n, d]``: per-feature reconstruction error (for explanations).

Variants: ``ae`` (plain), ``dae`` (denoising), ``sparse`` (L1 on the code), ``contractive``
(Hutchinson estimate of the encoder Jacobian's Frobenius norm), ``vae`` (ELBO) and ``ncae``
(autoencoder + noise-contrastive density heads, see :mod:`stream_ae.models.noise`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Collection, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stream_ae.models.neighbours import SubsampleNeighbours
from stream_ae.models.noise import REFERENCES, MarginalReference, Reference, corrupt
from stream_ae.models.tails import MarginalTails

Parts = dict[str, torch.Tensor]


def mlp(sizes: Sequence[int], final_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_act:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class AutoencoderNet(nn.Module):
    """Plain autoencoder; the other variants change its loss or add parts."""

    def __init__(self, n_features: int, hidden: Sequence[int], latent_dim: int, **_: Any) -> None:
        super().__init__()
        self.n_features = n_features
        self.encoder = mlp([n_features, *hidden, self.code_width(latent_dim)])
        self.decoder = mlp([latent_dim, *reversed(hidden), n_features])
        self.latent_dim = latent_dim

    def code_width(self, latent_dim: int) -> int:
        return latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # type: ignore[no-any-return]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))  # type: ignore[no-any-return]

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.reconstruct(x)

    def training_loss(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Parts]:
        recon = F.mse_loss(self.reconstruct(x), x)
        return recon, {"recon": recon.detach()}

    def score_parts(self, x: torch.Tensor, need: Collection[str] | None = None) -> Parts:
        """Raw score components; ``need`` limits the work to the named ones (None: all)."""
        return {"recon": self.residual(x).pow(2).mean(1)} if need is None or "recon" in need else {}


class DenoisingNet(AutoencoderNet):
    """Reconstructs clean rows from jittered and masked copies."""

    def __init__(self, *args: Any, noise_sigma: float = 0.3, mask_frac: float = 0.1, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.noise_sigma, self.mask_frac = noise_sigma, mask_frac

    def training_loss(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Parts]:
        noisy = x + self.noise_sigma * torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)
        noisy = noisy * (torch.rand(x.shape, generator=gen, device=gen.device).to(x.device) >= self.mask_frac)
        recon = F.mse_loss(self.decoder(self.encode(noisy)), x)
        return recon, {"recon": recon.detach()}


class SparseNet(AutoencoderNet):
    """L1 penalty on the latent code."""

    def __init__(self, *args: Any, sparsity: float = 1e-3, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sparsity = sparsity

    def training_loss(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Parts]:
        z = self.encode(x)
        recon = F.mse_loss(self.decoder(z), x)
        l1 = z.abs().mean()
        return recon + self.sparsity * l1, {"recon": recon.detach(), "l1": l1.detach()}


class ContractiveNet(AutoencoderNet):
    """Penalises ``||dz/dx||_F^2``, estimated with one Hutchinson probe per step."""

    def __init__(self, *args: Any, contraction: float = 1e-3, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.contraction = contraction

    def training_loss(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Parts]:
        x = x.detach().requires_grad_(True)
        z = self.encode(x)
        v = torch.randn(z.shape, generator=gen, device=gen.device).to(z.device)
        (jtv,) = torch.autograd.grad(z, x, grad_outputs=v, create_graph=True)
        jac = jtv.pow(2).sum(1).mean()
        recon = F.mse_loss(self.decoder(z), x)
        return recon + self.contraction * jac, {"recon": recon.detach(), "jacobian": jac.detach()}


class VariationalNet(AutoencoderNet):
    """Gaussian VAE; the code is the posterior mean, the score adds the KL term (negative ELBO)."""

    def __init__(self, *args: Any, beta: float = 1.0, **kw: Any) -> None:
        self.beta = beta
        super().__init__(*args, **kw)

    def code_width(self, latent_dim: int) -> int:
        return 2 * latent_dim

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._posterior(x)[0]

    @staticmethod
    def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)

    def training_loss(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Parts]:
        mu, logvar = self._posterior(x)
        eps = torch.randn(mu.shape, generator=gen, device=gen.device).to(mu.device)
        recon = F.mse_loss(self.decoder(mu + eps * (0.5 * logvar).exp()), x, reduction="none").sum(1)
        kl = self._kl(mu, logvar)
        loss = (recon + self.beta * kl).mean() / self.n_features
        return loss, {"recon": recon.mean().detach() / self.n_features, "kl": kl.mean().detach()}

    def score_parts(self, x: torch.Tensor, need: Collection[str] | None = None) -> Parts:
        mu, logvar = self._posterior(x)
        return {"recon": (x - self.decoder(mu)).pow(2).mean(1), "kl": self._kl(mu, logvar)}

    def generate(self, n: int, gen: torch.Generator, noise_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` rows in the network's input space: codes from the standard normal prior,
        decoded; with ``noise_scale`` (per feature) the Gaussian decoder's noise added."""
        device = next(self.parameters()).device
        codes = torch.randn((n, self.latent_dim), generator=gen).to(device)
        rows: torch.Tensor = self.decoder(codes).float()
        if noise_scale is not None:
            rows = rows + torch.randn(rows.shape, generator=gen).to(device) * noise_scale.to(device)
        return rows


class NoiseContrastiveNet(AutoencoderNet):
    """Autoencoder plus noise-contrastive heads that tell real rows from reference noise.

    Each reference noise has an exact density ``q`` (``reference``: ``gaussian``, ``marginal``,
    ``mixture``, or several joined by ``+``). With ``bridges`` = 1 one head per reference is
    trained with binary cross-entropy against its samples; at the optimum its logit is
    ``log p(x) - log q(x)``. With ``bridges`` = K > 1 the step from data to noise is cut into
    K (telescoping): waymark ``k`` is :meth:`Reference.bridge` at ``alpha = k / K`` (for the
    marginal reference: a fraction ``k / K`` of the features swapped for marginal draws), one
    head per step tells waymark ``k`` from ``k + 1``, and the logits sum to ``log p / q``.

    Score parts: ``density`` = ``-(sum of logits + log q(x))``, an estimate of ``-log p(x)``
    (mean over references), and ``reference`` = ``-log q(x)``, how unusual the row is under
    the reference alone (for the marginal reference: feature by feature). With ``tails`` on,
    ``tail`` is how extreme each feature's value is by the training quantiles, summed over
    features (:class:`~stream_ae.models.tails.MarginalTails`): a value between two modes has a
    low density but is not extreme, a value beyond all but a few training rows is. With
    ``neighbour_sets`` > 0, ``neighbour`` is how far the row is from its ``neighbour_k``-th
    nearest row in each of that many random samples of ``neighbour_size`` training rows
    (:class:`~stream_ae.models.neighbours.SubsampleNeighbours`): small samples see through a
    tight cluster of anomalies that the density, fitted on all rows, learns as common.

    ``trim`` (off by default) leaves the real rows with the lowest current density estimate
    (that fraction of each batch) out of the "real" side, so the heads never learn to call
    the rarest training rows real: a least-trimmed loss against contaminated training data,
    which also teaches them that rare *legitimate* modes are anomalous. Hard negatives
    (corrupted real rows) can be added as extra negatives of the first step.
    """

    def __init__(
        self,
        *args: Any,
        head_hidden: Sequence[int] = (128, 128),
        nc_weight: float = 1.0,
        hard_negatives: Sequence[str] = (),
        hard_negative_weight: float = 0.0,
        real_jitter: float = 0.0,
        reference: str = "gaussian+mixture",
        noise_scales: Sequence[float] = (1.0, 2.0),
        bridges: int = 1,
        trim: float = 0.0,
        tails: bool = False,
        neighbour_sets: int = 0,
        neighbour_size: int = 64,
        neighbour_k: int = 2,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        if bridges < 1 or not 0.0 <= trim < 0.5:
            raise ValueError(f"need bridges >= 1 and 0 <= trim < 0.5, got {bridges}, {trim}")
        refs: list[Reference] = []
        for kind in reference.split("+"):
            ref_cls = REFERENCES[kind]
            refs.append(
                ref_cls(self.n_features) if ref_cls is MarginalReference else ref_cls(self.n_features, noise_scales)
            )
        self.references: list[Reference] = nn.ModuleList(refs)  # type: ignore[assignment]
        self.bridges = bridges
        # heads[r * bridges + k] tells waymark k from k + 1 of reference r
        self.heads: list[nn.Sequential] = nn.ModuleList(  # type: ignore[assignment]
            mlp([self.n_features, *head_hidden, 1]) for _ in range(len(refs) * bridges)
        )
        self.real_jitter = real_jitter
        self.nc_weight = nc_weight
        self.hard_negatives = tuple(hard_negatives)
        self.hard_negative_weight = hard_negative_weight
        self.trim = trim
        self.tails = MarginalTails(self.n_features) if tails else None
        self.neighbours = (
            SubsampleNeighbours(self.n_features, neighbour_sets, neighbour_size, neighbour_k)
            if neighbour_sets  # a negative count is refused there
            else None
        )

    def fit_references(self, x: torch.Tensor, seed: int = 0, keep: torch.Tensor | None = None) -> None:
        """Fit everything the network knows exactly from the training rows (no gradients):
        the reference noises and, when on, the tail table and the neighbour samples (drawn
        with ``seed``). With ``keep`` (a boolean mask of rows) the references and the tail
        table see only those rows; the neighbour samples are drawn from all of them."""
        kept = x if keep is None else x[keep]
        for ref in self.references:
            ref.fit(kept)
        if self.tails is not None:
            self.tails.fit(kept)
        if self.neighbours is not None:
            self.neighbours.fit(x, torch.Generator(device=x.device).manual_seed(seed))

    def _chain(self, r: int) -> list[nn.Sequential]:
        return self.heads[r * self.bridges : (r + 1) * self.bridges]

    def _log_ratios(self, x: torch.Tensor) -> torch.Tensor:
        """``[references, n]``: each chain's summed logits, its estimate of ``log p(x) / q(x)``.
        Without gradients (scoring) the heads run together (:func:`grouped_heads`)."""
        if not torch.is_grad_enabled():
            return grouped_heads(self.heads, x).view(len(self.references), self.bridges, -1).sum(1)
        return torch.stack(
            [torch.stack([head(x).squeeze(1) for head in self._chain(r)]).sum(0) for r in range(len(self.references))]
        )

    def _log_q(self, x: torch.Tensor) -> torch.Tensor:
        """``[references, n]``: each reference's exact log-density (float32, under any autocast)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            return torch.stack([ref.log_prob(x) for ref in self.references])

    def density(self, x: torch.Tensor, log_q: torch.Tensor | None = None) -> torch.Tensor:
        """``-log p(x)`` estimated by each reference's chain, averaged over the references."""
        return -(self._log_ratios(x) + (self._log_q(x) if log_q is None else log_q)).mean(0)

    def training_loss(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Parts]:
        if self.trim > 0:
            with torch.no_grad():
                keep = self.density(x).argsort()[: max(2, round(len(x) * (1.0 - self.trim)))]
            x = x[keep]
        recon = F.mse_loss(self.reconstruct(x), x)
        real = x
        if self.real_jitter > 0:  # kernel-smooths the estimated density: less over-fitting
            real = x + self.real_jitter * torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)
        hard = corrupt(x, self.hard_negatives, gen) if self.hard_negatives and self.hard_negative_weight > 0 else None
        bce = torch.zeros((), device=x.device)
        pairs: list[torch.Tensor] = []  # per head, in order: its near waymark then its far one
        for r, ref in enumerate(self.references):
            noise = ref.sample(x.shape[0], gen)
            marks = [real, noise]
            if self.bridges > 1:
                u = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device)
                marks[1:1] = [ref.bridge(real, noise, k / self.bridges, u) for k in range(1, self.bridges)]
            pairs += [torch.cat([marks[k], marks[k + 1]]) for k in range(self.bridges)]
            if hard is not None:
                bce = bce + self.hard_negative_weight * F.softplus(self._chain(r)[0](hard).squeeze(1)).mean()
        # every head on its own pair of waymarks, as one batched product per layer
        logits = grouped_heads(self.heads, torch.stack(pairs))  # [heads, 2n]
        near, far = logits[:, : x.shape[0]], logits[:, x.shape[0] :]
        bce = bce + (F.softplus(-near).mean(1) + F.softplus(far).mean(1)).sum() / self.bridges
        return recon + self.nc_weight * bce, {"recon": recon.detach(), "bce": bce.detach()}

    def score_parts(self, x: torch.Tensor, need: Collection[str] | None = None) -> Parts:
        parts = super().score_parts(x, need)
        want = {"density", "reference"} if need is None else {"density", "reference"} & set(need)
        if want:
            log_q = self._log_q(x)  # shared by both parts
            if "density" in want:
                parts["density"] = self.density(x, log_q)
            if "reference" in want:
                parts["reference"] = -log_q.mean(0)
        if self.tails is not None and (need is None or "tail" in need):
            parts["tail"] = self.tails.score(x)
        if self.neighbours is not None and (need is None or "neighbour" in need):
            parts["neighbour"] = self.neighbours.score(x)
        return parts


def grouped_heads(heads: Sequence[nn.Sequential], x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``[heads, n]``: every head of the same shape (Linear and GELU layers, one output) on
    rows ``x``, as one batched product per layer instead of a small product per head and
    layer. ``x`` is ``[n, d]`` (the same rows for every head: the first layer is then one
    matrix product) or ``[heads, n, d]`` (each head its own rows: training, where each head
    tells its own pair of waymarks apart). Gradients flow as through the heads themselves.

    Shared rows run in chunks of ``chunk`` rows (on the CPU 512 by default, where a chunk's
    hidden layers, 1 MB for eight heads of 64, stay in the core's cache; on a GPU the whole
    batch), and the first layer's bias rides in the product as a column of ones: over a
    4,096-row batch the hidden layers went through memory four times between the products
    (the bias copies, the GELUs), about as long as the products themselves. Rows are
    independent, so the result is the same whatever the chunk.

    Example:
        >>> heads = [mlp([3, 8, 8, 1]) for _ in range(4)]
        >>> x = torch.randn(5, 3)
        >>> with torch.no_grad():
        ...     one_by_one = torch.stack([h(x).squeeze(1) for h in heads])
        ...     bool(torch.allclose(grouped_heads(heads, x), one_by_one, atol=1e-6))
        True
    """
    layers = [[m for m in head if isinstance(m, nn.Linear)] for head in heads]
    first = [lin[0] for lin in layers]
    later = [
        (
            torch.stack([lin[depth].weight for lin in layers]).transpose(1, 2),  # [heads, in, out]
            torch.stack([lin[depth].bias for lin in layers]).unsqueeze(1),  # [heads, 1, out]
        )
        for depth in range(1, len(layers[0]))
    ]

    def rest(h: torch.Tensor) -> torch.Tensor:  # the later layers of [heads, rows, width]
        for depth, (w, b) in enumerate(later):
            h = torch.baddbmm(b, h, w)
            if depth < len(later) - 1:
                h = F.gelu(h)
        return h.squeeze(2)

    if x.dim() == 3:
        w = torch.stack([f.weight for f in first]).transpose(1, 2)  # [heads, d, width]
        return rest(F.gelu(torch.baddbmm(torch.stack([f.bias for f in first]).unsqueeze(1), x, w)))
    if chunk is None:
        chunk = HEAD_CHUNK_ROWS if x.device.type == "cpu" else max(1, x.shape[0])
    w1 = torch.cat(
        [torch.cat([f.weight for f in first]).T, torch.cat([f.bias for f in first])[None]]
    )  # [d + 1, heads * width]
    x1 = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
    outs = [
        rest(F.gelu(x1[i : i + chunk] @ w1).view(-1, len(heads), w1.shape[1] // len(heads)).transpose(0, 1))
        for i in range(0, max(1, x.shape[0]), chunk)  # an empty batch: one empty chunk
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


# rows per chunk of the heads on the CPU (eight heads of 64: two 1 MB hidden layers in cache)
HEAD_CHUNK_ROWS = 512


def network_defaults(cls: type[AutoencoderNet]) -> dict[str, Any]:
    """The variant-specific keyword defaults of a network class (written into every manifest,
    so an artifact keeps meaning the same network when a default changes later)."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is AutoencoderNet or not (isinstance(klass, type) and issubclass(klass, AutoencoderNet)):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if param.kind is param.KEYWORD_ONLY and param.default is not param.empty:
                out[name] = list(param.default) if isinstance(param.default, tuple) else param.default
    return out


NETWORKS: dict[str, type[AutoencoderNet]] = {
    "ae": AutoencoderNet,
    "dae": DenoisingNet,
    "sparse": SparseNet,
    "contractive": ContractiveNet,
    "vae": VariationalNet,
    "ncae": NoiseContrastiveNet,
}
