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
The ceiling is then lowered, if need be, until the head lifts at most 1 % of the unlabelled
traffic per confirmed anomaly into the top 1 % of its scores (:func:`limit_lift`): one verdict
on a row amid normal traffic does not lift that traffic.

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

from stream_ae.models.optim import AdamW

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


def lift_under(g: torch.Tensor, ceiling: torch.Tensor | float) -> torch.Tensor:
    """The head's upward output for its raw output ``g``: smoothly bounded by ``ceiling``."""
    return ceiling * torch.tanh(g / ceiling)


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
        up = lift_under(g, self.high)
        down = self.low * torch.tanh(g / self.low.clamp_min(1e-6))
        return torch.where(g >= 0, up, down)


@dataclass
class FeedbackFit:
    """What the head was trained on (stored in the manifest)."""

    anomalies: int
    normals: int
    fingerprint: str
    margin: float
    median: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "anomalies": self.anomalies,
            "normals": self.normals,
            "fingerprint": self.fingerprint,
            "margin": self.margin,
            "median": self.median,
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
    opt = AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
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
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    limit_lift(head, x_unlabelled, s_all, budget=LIFT_BUDGET_PER_LABEL * len(x_anomaly))
    return head, margin, median


# the share of unlabelled traffic each confirmed anomaly licenses the head to lift into the top
# 1 % of the unlabelled scores
LIFT_BUDGET_PER_LABEL = 0.01


@torch.no_grad()
def limit_lift(head: DeviationHead, x_unlabelled: torch.Tensor, s_unlabelled: torch.Tensor, budget: float) -> float:
    """Lower the head's ceiling until it lifts at most a share ``budget`` of the unlabelled
    rows from below the unlabelled scores' 99th percentile to above it; returns the factor
    applied to ``head.high`` (1: untouched). :func:`train_head` gives each confirmed anomaly
    :data:`LIFT_BUDGET_PER_LABEL` of the traffic.

    One verdict on a row amid normal traffic would otherwise lift that traffic (a single
    label on ``smtp`` lifted 2.4 % of the normal rows into the alarm zone): the threshold,
    calibrated on unlabelled rows, then rises above other anomalies, and the verdict makes the
    ranking worse than none. A pattern that several verdicts confirm may lift more: the
    unlabelled anomalies like them.

    Example: a head that lifts everything is capped; a budget of all traffic leaves it be
        >>> head = DeviationHead(2); _ = head.high.fill_(10.0)
        >>> _ = torch.nn.init.constant_(head.net[-1].bias, 5.0)
        >>> x, s = torch.randn(1000, 2), torch.randn(1000)
        >>> limit_lift(head, x, s, budget=1.0), limit_lift(head, x, s, budget=0.01) < 0.5
        (1.0, True)
    """
    s = s_unlabelled.double()
    top = float(torch.quantile(s, 0.99))
    below = s <= top
    f = torch.cat(
        [head.net(x_unlabelled[i : i + 65536].float()).squeeze(1) for i in range(0, len(x_unlabelled), 65536)]
    )
    high = float(head.high)

    def lifted(factor: float) -> float:
        up = lift_under(f.clamp_min(0), max(factor * high, 1e-12))
        return float(((s + up.double()) > top)[below].double().sum() / len(s))

    if budget >= 1.0 or lifted(1.0) <= budget:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if lifted(mid) <= budget else (lo, mid)
    head.high.fill_(max(lo * high, 1e-6))
    return lo
