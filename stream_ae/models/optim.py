"""AdamW and the one-cycle schedule, as plain functions of the step: what training needs of
``torch.optim``, without its start-up cost.

Constructing any ``torch.optim.Optimizer`` imports ``torch._dynamo`` (its methods carry a
``_disable_dynamo`` wrapper that imports it on first use): 1.0-1.9 s on a 2-core host, a fifth
of a small training run, paid by every ``stream-ae train`` and every trainer process. The
update below is the same arithmetic as ``torch.optim.AdamW(foreach=True)`` driven by
``torch.optim.lr_scheduler.OneCycleLR`` with its defaults (cosine annealing, ``div_factor``
25, ``final_div_factor`` 1e4, beta1 cycled between 0.95 and 0.85), operation for operation;
``tests/test_optim.py`` checks it against them step by step.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    >>> opt = AdamW([w], lr=0.1, schedule=OneCycle(max_lr=0.1, total_steps=200))
    >>> for _ in range(200):
    ...     opt.zero_grad()
    ...     (w * w).sum().backward()
    ...     opt.step()
    >>> bool(w.abs().max() < 0.05)
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OneCycle:
    """The 1cycle policy (Smith & Topin, 2017) as ``OneCycleLR`` computes it: the learning rate
    rises from ``max_lr / 25`` to ``max_lr`` over the first ``pct_start`` of the steps and falls
    to ``max_lr / 25 / 1e4``; beta1 moves the other way, 0.95 -> 0.85 -> 0.95 (cosine)."""

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __call__(self, step: int) -> tuple[float, float]:
        """``(lr, beta1)`` for the optimiser step that follows ``step`` earlier ones."""
        initial = self.max_lr / self.div_factor
        rise_end = float(self.pct_start * self.total_steps) - 1
        if step <= rise_end:
            pct = step / rise_end
            return _cos(initial, self.max_lr, pct), _cos(self.max_momentum, self.base_momentum, pct)
        pct = (step - rise_end) / (self.total_steps - 1 - rise_end)
        return (
            _cos(self.max_lr, initial / self.final_div_factor, pct),
            _cos(self.base_momentum, self.max_momentum, pct),
        )


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class AdamW:
    """Adam with decoupled weight decay over one group of parameters, updated with
    ``torch._foreach_*`` kernels (one per operation across all of them). With a ``schedule``
    the learning rate and beta1 of each step come from it; else they are ``lr`` and
    ``betas[0]``."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        schedule: OneCycle | None = None,
    ) -> None:
        self.params: list[torch.Tensor] = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.schedule = schedule
        self.steps = 0
        self._exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr, beta1 = self.schedule(self.steps) if self.schedule is not None else (self.lr, self.betas[0])
        beta2 = self.betas[1]
        self.steps += 1
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params: list[torch.Tensor] = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        exp_avg = [self._exp_avg[i] for i in live]
        exp_avg_sq = [self._exp_avg_sq[i] for i in live]
        if self.weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * self.weight_decay)
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)  # type: ignore[arg-type]
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)  # type: ignore[arg-type]
        step_size = (lr / (1 - beta1**self.steps)) * -1
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, (1 - beta2**self.steps) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, step_size)
