"""The training optimiser (stream_ae.models.optim) is torch's AdamW under OneCycleLR, step for
step: swapping it in (to skip torch.optim's import of torch._dynamo) changes no trained model."""

from __future__ import annotations

import torch

from stream_ae.models.optim import AdamW, OneCycle


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 6))


def _train(net: torch.nn.Module, opt: object, step: object, zero: object, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 6, generator=gen)
        loss = ((net(x) - x) ** 2).mean()
        zero()  # type: ignore[operator]
        loss.backward()
        step()  # type: ignore[operator]


def test_one_cycle_adamw_matches_torch_step_for_step() -> None:
    steps = 120
    ours, theirs = _net(0), _net(0)
    opt = AdamW(ours.parameters(), lr=3e-3, weight_decay=1e-5, schedule=OneCycle(3e-3, steps, pct_start=0.1))
    _train(ours, opt, opt.step, opt.zero_grad, steps)

    ref = torch.optim.AdamW(theirs.parameters(), lr=3e-3, weight_decay=1e-5, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=3e-3, total_steps=steps, pct_start=0.1)

    def ref_step() -> None:
        ref.step()
        sched.step()

    _train(theirs, ref, ref_step, lambda: ref.zero_grad(set_to_none=True), steps)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(next(ours.parameters()), next(_net(0).parameters())), "training moved the weights"


def test_constant_rate_adamw_matches_torch() -> None:
    ours, theirs = _net(3), _net(3)
    opt = AdamW(ours.parameters(), lr=1e-3, weight_decay=1e-4)
    _train(ours, opt, opt.step, opt.zero_grad, 50)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=1e-4)
    _train(theirs, ref, ref.step, lambda: ref.zero_grad(set_to_none=True), 50)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
