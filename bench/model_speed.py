"""Model-side speed: feature encoding, training and inference throughput, per variant.

    python -m bench.model_speed                      # CPU (or CUDA when present), all variants
    python -m bench.model_speed --device cpu --threads 1 --variants ncae,ae

* **encode**: a 30-field event (20 numeric of which 5 heavy-tailed, 4 vocabulary and 2 hashed
  categoricals, 3 booleans, 1 timestamp), JSON bytes -> orjson -> ``FeatureEncoder.encode``
  in batches of ``--batch``; events/s with ``--threads`` torch/BLAS threads (1 = one core).
* **train**: ``AutoencoderDetector(variant).fit`` on the encoded rows; rows/s is
  optimisation steps x batch size / training seconds (the calibration pass excluded).
* **score**: ``DeviceScorer.score`` (scale, score, explain flagged rows) in batches of
  ``--batch``; events/s after a warm-up batch.
* **pipeline**: the worker's whole in-process hot path, ``pipeline.process_batch`` (decode,
  validate, encode, score, build anomaly and all-scores records) on batches of 4,096 synthetic
  card transactions, with the time of its encode and score steps beside it, and of each
  score part the model uses, computed alone (and of the deviation head a model fitted with
  analysts' labels adds), and of the flagged rows' expected values
  (``stream-ae.anomaly/2``). No Kafka: what is
  left of the end-to-end budget goes to the client.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from bench.environment import InputRecord
from stream_ae.features.encoder import FeatureEncoder, FeatureSchema
from stream_ae.lifecycle.artifacts import load_artifact
from stream_ae.models import AutoencoderDetector, variants
from stream_ae.models.detector import neighbour_options
from stream_ae.models.feedback import DeviationHead
from stream_ae.output.route import Topics
from stream_ae.pipeline import ActiveModel, process_batch
from stream_ae.scoring.scorer import DeviceScorer
from stream_ae.tools.synthetic import CARD_SCHEMA_STATELESS, transactions
from trainer.train import fit_events

COUNTRIES = ["US", "DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE", "JP"]
CHANNELS = ["web", "pos", "atm", "app"]


def thirty_field_events(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic events with 30 feature fields plus an id."""
    rng = np.random.default_rng(seed)
    num = rng.normal(size=(n, 15))
    heavy = rng.lognormal(3.0, 1.2, size=(n, 5))
    cats = rng.integers(0, 10, size=(n, 4))
    ids = rng.integers(0, 100_000, size=(n, 2))
    flags = rng.random(size=(n, 3)) < 0.3
    ts = 1.79e9 + np.cumsum(rng.exponential(0.01, size=n))
    events = []
    for i in range(n):
        e: dict[str, Any] = {"id": f"e-{i}", "ts": float(ts[i])}
        e.update({f"n{j}": float(num[i, j]) for j in range(15)})
        e.update({f"h{j}": float(heavy[i, j]) for j in range(5)})
        e.update({f"c{j}": COUNTRIES[cats[i, j]] if j % 2 else CHANNELS[cats[i, j] % 4] for j in range(4)})
        e.update({f"k{j}": f"merchant-{ids[i, j]}" for j in range(2)})
        e.update({f"b{j}": bool(flags[i, j]) for j in range(3)})
        events.append(e)
    return events


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:12,.0f} /s"


def bench_encode(events: list[dict[str, Any]], batch: int) -> tuple[FeatureEncoder, np.ndarray]:
    schema = FeatureSchema.infer(events[:5000], id_field="id", time_field="ts", high_cardinality=1000)
    enc = FeatureEncoder(schema).fit(events[:20_000])
    payloads = [orjson.dumps(e) for e in events]
    enc.encode(events[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(events), batch):
        enc.encode(events[i : i + batch])
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = [enc.encode([orjson.loads(p) for p in payloads[i : i + batch]]).X for i in range(0, len(payloads), batch)]
    t_all = time.perf_counter() - t0
    X = np.concatenate(parts)
    print(f"encode   {len(schema.fields)} fields -> {X.shape[1]} features, batch {batch}")
    print(f"  encode only          {rate(len(events), t_enc)}")
    print(f"  orjson + encode      {rate(len(events), t_all)}")
    return enc, X


def bench_model(variant: str, X: np.ndarray, device: str, batch: int, steps: int, neighbour_sets: int = 32) -> None:
    det = AutoencoderDetector(
        variant, device=device, seed=0, min_steps=steps, max_steps=steps, early_stopping=False,
        **neighbour_options(variant, neighbour_sets),
    )  # fmt: skip
    t0 = time.perf_counter()
    det.fit(X)
    fit_s = time.perf_counter() - t0
    trained_rows = steps * det.hyper.batch_size
    scorer = DeviceScorer(det)
    scorer.score(X[:batch])  # warm-up
    n = min(len(X), 200_000)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        scorer.score(X[i : i + batch])
    if det.device.type == "cuda":
        torch.cuda.synchronize()
    score_s = time.perf_counter() - t0
    print(
        f"  {variant:12s} train {rate(trained_rows, det.train_seconds_)} rows ({steps} steps x {det.hyper.batch_size}, "
        f"fit {fit_s:5.1f} s)   score {rate(n, score_s)} events"
    )


def bench_pipeline(device: str, batch: int = 4096, repeats: int = 10, neighbour_sets: int = 32) -> None:
    # the card stream's declared fields (its schema without the entity features): an inferred schema
    # would take the card id for a field and hash it into 64 columns
    fitted = fit_events(
        transactions(20_000, seed=1)[0], schema=CARD_SCHEMA_STATELESS, max_steps=300, min_steps=300, device=device,
        **neighbour_options("ncae", neighbour_sets),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model = ActiveModel(load_artifact(fitted.save(Path(tmp) / "m", version="bench"), device=device), top_k=3)
    events, _ = transactions(batch, seed=3, anomaly_rate=0.005)
    records = [InputRecord("events", 0, i, e["id"].encode(), orjson.dumps(e)) for i, e in enumerate(events)]
    topics = Topics("anomalies", "events.dlq", "events.scores")
    process_batch(records, model, topics, 1 << 20)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        routed = process_batch(records, model, topics, 1 << 20)
    per_batch = (time.perf_counter() - t0) / repeats
    decoded = [orjson.loads(r.value or b"") for r in records]
    t0 = time.perf_counter()
    X = model.encoder.encode(decoded).X
    t_encode = time.perf_counter() - t0
    print(f"pipeline process_batch, {batch} card transactions, all-scores topic on")
    print(f"  whole batch {per_batch * 1000:8.1f} ms  {rate(batch, per_batch)} events")
    score_ms = routed.score_seconds * 1000
    print(f"  of which encode {t_encode * 1000:.1f} ms, score {score_ms:.1f} ms ({X.shape[1]} features)")
    det = model.loaded.detector
    assert det.net_ is not None
    z = det.scale_tensor(torch.from_numpy(X).to(det.device))
    took = []
    with torch.inference_mode(), det.autocast(z.device):
        for part in det.hyper.score_weights:  # each part the score uses, alone
            det.net_.score_parts(z, need=[part])  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                det.net_.score_parts(z, need=[part])
            if det.device.type == "cuda":
                torch.cuda.synchronize()
            took.append(f"{part} {(time.perf_counter() - t0) / repeats * 1000:.1f} ms")
        head = DeviationHead(z.shape[1]).to(z.device).eval()  # what a model fitted with labels adds
        head(z)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            head(z)
        took.append(f"feedback head (a model fitted with labels) {(time.perf_counter() - t0) / repeats * 1000:.1f} ms")
    print(f"  score parts alone: {', '.join(took)}")
    # what the anomaly records' expected values cost: the worker's scorer (flagged rows explained
    # by field, each top field masked and reconstructed) against one that names encoded columns
    by_column = DeviceScorer(det, top_k=3)
    took_ms = {}
    for name, scorer in (("by field, with expected values", model.scorer), ("by column", by_column)):
        scorer.score(X)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            flagged = int(scorer.score(X).flagged.sum())
        took_ms[name] = (time.perf_counter() - t0) / repeats * 1000
    print(f"  scoring with the {flagged} flagged rows explained: "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in took_ms.items()))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=1000, help="optimisation steps per variant")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (1 = one core)")
    ap.add_argument("--variants", default=",".join(variants()))
    ap.add_argument(
        "--neighbour-sets", type=int, default=32, help="the ncae's neighbour samples (the named speed option)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), {os.cpu_count()} cores")
    events = thirty_field_events(args.events)
    _, X = bench_encode(events, args.batch)
    print(f"models   {X.shape[0]:,} rows x {X.shape[1]} features, score batch {args.batch}")
    for variant in args.variants.split(","):
        bench_model(variant, X, args.device, args.batch, args.steps, args.neighbour_sets)
    bench_pipeline(args.device, neighbour_sets=args.neighbour_sets)


if __name__ == "__main__":
    main()
