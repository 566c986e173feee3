"""The NCAE's score kernels compared in one process, so that a slow or uneven machine moves
both sides of each comparison alike.

    python -m bench.score_kernels                 # the card stream and the 30-field event
    python -m bench.score_kernels --turns 10

For each model (the card stream's 18 declared features; ``bench.model_speed``'s 30-field event,
183 features, most of them one-hot), one torch thread, a batch of 4,096 rows, turns that
alternate the two sides of each comparison, medians printed:

* **heads**: ``grouped_heads`` in one chunk of the whole batch against its CPU default
  (chunks of ``HEAD_CHUNK_ROWS``);
* **tail**: ``MarginalTails._general`` on every feature against ``log_tail`` (features whose
  table holds at most two values take ``_two_valued``);
* **scorer**: ``DeviceScorer.score`` (scale, every part, flagged rows explained) with the tail
  table forced onto the general path against as it is;
* each score part alone as a gauge of the machine's state.

Both sides of each comparison are asserted to give the same values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.model_speed import bench_encode, thirty_field_events
from stream_ae.models import AutoencoderDetector
from stream_ae.models.networks import NoiseContrastiveNet, grouped_heads
from stream_ae.models.tails import MarginalTails
from stream_ae.scoring.scorer import DeviceScorer
from stream_ae.tools.synthetic import CARD_SCHEMA_STATELESS, transactions
from trainer.train import fit_events

BATCH = 4096


def card_model() -> tuple[AutoencoderDetector, np.ndarray]:
    fitted = fit_events(
        transactions(20_000, seed=1)[0], schema=CARD_SCHEMA_STATELESS, max_steps=300, min_steps=300, device="cpu"
    )
    assert fitted.encoder is not None
    return fitted.detector, fitted.encoder.encode(transactions(BATCH, seed=3, anomaly_rate=0.005)[0]).X


def wide_model() -> tuple[AutoencoderDetector, np.ndarray]:
    _, X = bench_encode(thirty_field_events(30_000), BATCH)
    det = AutoencoderDetector("ncae", device="cpu", seed=0, min_steps=100, max_steps=100, early_stopping=False)
    return det.fit(X), X[:BATCH]


def per_call_ms(f: Callable[[], object], calls: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(calls):
        f()
    return (time.perf_counter() - t0) / calls * 1000


def general_only(self: MarginalTails, x: torch.Tensor) -> torch.Tensor:
    return self._general(x.T.contiguous(), self.knots, self.tie_start).T


def compare(name: str, det: AutoencoderDetector, X: np.ndarray, turns: int, calls: int) -> None:
    net = det.net_
    assert isinstance(net, NoiseContrastiveNet) and net.tails is not None and net.neighbours is not None
    tails, heads = net.tails, net.heads
    z = det.scale_tensor(torch.from_numpy(X))
    scorer = DeviceScorer(det)
    two = int(((tails.knots[:, 1:] != tails.knots[:, :-1]).sum(1) <= 1).sum())
    sides: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "heads, one chunk -> chunked": (
            lambda: grouped_heads(heads, z, chunk=z.shape[0]),
            lambda: grouped_heads(heads, z),
        ),
        "tail, general -> two-valued path": (lambda: general_only(tails, z), lambda: tails.log_tail(z)),
    }
    took: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in [*sides, "scorer"]}
    gauges: dict[str, list[float]] = {"neighbour": [], "reference densities": []}
    log_tail = MarginalTails.log_tail
    with torch.inference_mode():
        for key, (before, after) in sides.items():
            assert torch.equal(before(), after()), key  # type: ignore[arg-type]
        for _ in range(turns):
            for key, (before, after) in sides.items():
                took[key][0].append(per_call_ms(before, calls))
                took[key][1].append(per_call_ms(after, calls))
            try:
                MarginalTails.log_tail = general_only  # type: ignore[method-assign]
                took["scorer"][0].append(per_call_ms(lambda: scorer.score(X), calls))
            finally:
                MarginalTails.log_tail = log_tail  # type: ignore[method-assign]
            took["scorer"][1].append(per_call_ms(lambda: scorer.score(X), calls))
            gauges["neighbour"].append(per_call_ms(lambda: net.neighbours.score(z), calls))  # type: ignore[union-attr]
            gauges["reference densities"].append(per_call_ms(lambda: net._log_q(z), calls))
    print(f"{name}: {z.shape[1]} features ({two} with a two-valued tail table), batch {z.shape[0]}, "
          f"medians of {turns} alternating turns of {calls} calls")  # fmt: skip
    for key, (before, after) in took.items():
        b, a = statistics.median(before), statistics.median(after)
        label = "scorer, tail general -> as is" if key == "scorer" else key
        print(f"  {label:36s} {b:7.2f} -> {a:7.2f} ms  ({b / a:.2f}x; {BATCH / a * 1000:,.0f} events/s after)"
              if key == "scorer" else f"  {label:36s} {b:7.2f} -> {a:7.2f} ms  ({b / a:.2f}x)")  # fmt: skip
    print("  gauges, unchanged code: " + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in gauges.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--calls", type=int, default=5, help="calls timed per side and turn")
    args = ap.parse_args()
    torch.set_num_threads(1)
    compare("card stream", *card_model(), args.turns, args.calls)
    compare("30-field event", *wide_model(), args.turns, args.calls)


if __name__ == "__main__":
    main()
