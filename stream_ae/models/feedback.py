"""What analysts' verdicts teach a detector: a deviation head in the style of DevNet.

Labels follow the PyOD and scikit-learn convention: ``1`` a known anomaly (a confirmed fraud),
``0`` a known normal (a confirmed false alarm), ``-1`` or NaN unlabelled (:func:`label_masks`).

The unsupervised score ``s(x)`` (the detector's combined score, in its own units) is kept, and
a small head ``f(x)`` is added to it: ``score = s(x) + f(x)``. The head is trained after the
detector, with its score frozen, on a deviation loss (Pang et al., 2019, "Deep anomaly
detection with deviation networks"):

* unlabelled rows: ``|f(x)|``, pulled to zero (an L1 pull: the few unlabelled anomalies among
  them do not bend it, and the score of unlabelled traffic stays the unsupervised one);
* known anomalies: ``max(0, a - f(x))``, lifted by at least the margin ``a``: twice the
  distance from the median to the 99th percentile of the unlabelled scores, so that a row
  like a confirmed fraud ranks above nearly all normal traffic whatever its own score;
* known normals: ``max(0, f(x) - (m - s(x)))``, lowered until the row scores no higher than
  the unlabelled median ``m``: the false-alarm pattern stops firing.

Each step draws as many labelled rows (with replacement, lightly jittered in the scaled space)
as unlabelled ones: a handful of verdicts weighs as much as the traffic. ``f`` is bounded:
above by ``2a``, below by 1.25 times the largest drop a known normal needs (0 without known
normals), so the head can never hide an extreme row by more than what the verdicts asked for.

**Unmarked anomalies in the calibration slice.** The head lifts unlabelled rows that look like
the confirmed anomalies as well, which is the point; but the calibration slice is unlabelled
traffic, and where it holds such rows they take the top of the slice and carry the threshold
above them (the demo's verdict loop once set it at 10,679 and kept 18 % of the frauds).
:class:`LabelFrequency` is Elkan and Noto's positive-unlabelled estimate ("Learning
classifiers from only positive and unlabeled data", KDD 2008): a classifier ``g`` of labelled
against unlabelled rows (a logistic function of the head's output) and the label frequency
``c = E[g | labelled anomaly]`` give each unlabelled row's probability of being an unmarked
anomaly, ``min(1, g / c)``. The threshold is then the weighted quantile of the slice, each row
weighted by its probability of being normal: the false-alarm rate it promises is one on the
normal part of the traffic.

``AutoencoderDetector.fit(X, y)`` uses it (its docstring has an example).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

ANOMALY, NORMAL, UNLABELLED = 1, 0, -1


def label_masks(y: Any, n: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """``(known anomaly, known normal)`` masks of labels ``y`` (1, 0, -1 or NaN) for ``n`` rows.

    Example:
        >>> a, nn_ = label_masks([1, 0, -1, float("nan")], 4)
        >>> a.tolist(), nn_.tolist()
        ([True, False, False, False], [False, True, False, False])
    """
    lab = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(lab) != n:
        raise ValueError(f"y has {len(lab)} labels for {n} rows")
    known = ~np.isnan(lab)
    bad = known & ~np.isin(lab, (ANOMALY, NORMAL, UNLABELLED))
    if bad.any():
        raise ValueError(f"labels are 1 (anomaly), 0 (normal) or -1/NaN (unlabelled); got {lab[bad][0]:g}")
    return lab == ANOMALY, lab == NORMAL


def label_fingerprint(X: NDArray[np.float32], anomaly: NDArray[np.bool_], normal: NDArray[np.bool_]) -> str:
    """SHA-256 of the labelled rows and their labels, in order: which verdicts a model saw."""
    h = hashlib.sha256()
    for mask, tag in ((anomaly, b"anomaly"), (normal, b"normal")):
        h.update(tag)
        h.update(np.ascontiguousarray(X[mask], dtype=np.float32).tobytes())
    return h.hexdigest()


class DeviationHead(nn.Module):
    """``f(x)``: a small MLP whose output is bounded to ``[-low, high]`` (smoothly: ``tanh``
    on each side of zero, slope one at zero)."""

    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        sizes = (n_features, *hidden, 1)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.hidden = hidden
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.net(x.float()).squeeze(1)
        up = self.high * torch.tanh(g / self.high)
        down = self.low * torch.tanh(g / self.low.clamp_min(1e-6))
        return torch.where(g >= 0, up, down)


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(np.exp(-np.logaddexp(0.0, -x)), dtype=np.float64)


@dataclass(frozen=True)
class LabelFrequency:
    """Elkan and Noto's estimate, on the head's output ``f``: ``g(f) = sigmoid(slope * f /
    scale + intercept)`` is the probability that a row with head output ``f`` is a labelled
    anomaly, and ``c`` its mean over the labelled anomalies (the share of anomalies that get
    labelled, under the estimate's assumption that they are labelled at random).

    Example: rows the head lifts like the confirmed ones are unmarked anomalies, the rest not
        >>> rng = np.random.default_rng(0)
        >>> unlabelled = np.concatenate([rng.normal(0, 0.1, 5000), rng.normal(1, 0.1, 30)])
        >>> lf = LabelFrequency.fit(rng.normal(1, 0.1, 20), unlabelled, scale=1.0)
        >>> p = lf.probability(np.array([0.0, 0.3, 1.0]))
        >>> bool(p[0] < 0.01 and p[2] > 0.5)
        True
    """

    slope: float
    intercept: float
    c: float
    scale: float

    @classmethod
    def fit(
        cls, f_labelled: NDArray[Any], f_unlabelled: NDArray[Any], scale: float, l2: float = 1e-2
    ) -> LabelFrequency:
        """Logistic regression of labelled (1) against unlabelled (0) on ``f / scale``: Newton's
        method with step halving on the penalised log-likelihood (a Gaussian prior ``l2`` on the
        slope keeps it finite when the two separate)."""
        z = np.concatenate([f_labelled, f_unlabelled]).astype(np.float64) / scale
        t = np.concatenate([np.ones(len(f_labelled)), np.zeros(len(f_unlabelled))])
        design = np.stack([z, np.ones_like(z)], axis=1)
        penalty = np.diag([l2, 0.0])

        def objective(w: NDArray[np.float64]) -> float:
            eta = design @ w
            return float(np.logaddexp(0.0, eta).sum() - (t * eta).sum() + 0.5 * w @ penalty @ w)

        w = np.array([0.0, float(np.log(max(len(f_labelled), 1) / max(len(f_unlabelled), 1)))])
        value = objective(w)
        for _ in range(200):
            g = _sigmoid(design @ w)
            grad = design.T @ (g - t) + penalty @ w
            hess = design.T @ (design * (g * (1 - g))[:, None]) + penalty + 1e-9 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            for _ in range(40):  # halve until the objective does not grow
                candidate = w - step
                new_value = objective(candidate)
                if new_value <= value + 1e-12:
                    break
                step = step / 2
            converged = value - new_value < 1e-10
            w, value = candidate, min(value, new_value)
            if converged:
                break
        slope, intercept = float(w[0]), float(w[1])
        g_labelled = _sigmoid(slope * np.asarray(f_labelled, np.float64) / scale + intercept)
        return cls(slope, intercept, max(float(g_labelled.mean()), 1e-12), scale)

    def probability(self, f: NDArray[Any]) -> NDArray[np.float64]:
        """Each unlabelled row's probability of being an anomaly, ``min(1, g(f) / c)``."""
        g = _sigmoid(self.slope * np.asarray(f, np.float64) / self.scale + self.intercept)
        return np.asarray(np.minimum(1.0, g / self.c), dtype=np.float64)

    def as_dict(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept, "c": self.c, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelFrequency:
        return cls(float(d["slope"]), float(d["intercept"]), float(d["c"]), float(d["scale"]))


@dataclass
class FeedbackFit:
    """What the head was trained on (stored in the manifest)."""

    anomalies: int
    normals: int
    fingerprint: str
    margin: float
    median: float
    label_frequency: LabelFrequency | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "anomalies": self.anomalies,
            "normals": self.normals,
            "fingerprint": self.fingerprint,
            "margin": self.margin,
            "median": self.median,
            **({"label_frequency": self.label_frequency.as_dict()} if self.label_frequency is not None else {}),
        }


def train_head(
    x_unlabelled: torch.Tensor,
    s_unlabelled: torch.Tensor,
    x_anomaly: torch.Tensor,
    x_normal: torch.Tensor,
    s_normal: torch.Tensor,
    seed: int = 0,
    lift_weight: float = 1.0,
    steps: int = 800,
    batch: int = 256,
    jitter: float = 0.05,
) -> tuple[DeviationHead, float, float]:
    """Train a :class:`DeviationHead` on scaled rows; returns it with its margin and median."""
    device = x_unlabelled.device
    s_all = s_unlabelled.double()
    median = float(s_all.median())
    margin = max(2.0 * (float(torch.quantile(s_all, 0.99)) - median), 1e-3)
    head = DeviationHead(x_unlabelled.shape[1]).to(device)
    head.high.fill_(2.0 * margin)
    need = (s_normal.double() - median).clamp_min(0)
    head.low.fill_(max(1.25 * float(need.max()) if len(need) else 0.0, 0.1 * margin))
    x_lab = torch.cat([x_anomaly, x_normal]).float()
    # per labelled row: the lowest f an anomaly may have, the highest f a normal may have
    is_anomaly = torch.cat([torch.ones(len(x_anomaly)), torch.zeros(len(x_normal))]).bool().to(device)
    ceiling = torch.cat([torch.zeros(len(x_anomaly), device=device), -need.float().to(device)])
    gen = torch.Generator(device=device).manual_seed(seed + 104729)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    head.train()
    for _ in range(steps):
        u = x_unlabelled[torch.randint(len(x_unlabelled), (batch,), generator=gen, device=device)]
        pick = torch.randint(len(x_lab), (batch,), generator=gen, device=device)
        lab = x_lab[pick] + jitter * torch.randn((batch, x_lab.shape[1]), generator=gen, device=device)
        f_u, f_l = head(u), head(lab)
        hinge = torch.where(
            is_anomaly[pick], lift_weight * (margin - f_l).clamp_min(0), (f_l - ceiling[pick]).clamp_min(0)
        )
        loss = f_u.abs().mean() + hinge.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    return head, margin, median
