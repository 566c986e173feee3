"""Denoising with the reconstruction (``stream-ae score --reconstruct``) on a real set.

    python -m bench.denoising                      # pendigits of ../shared/data
    python -m bench.denoising --dataset satellite

Normal rows, a 60/40 split; Gaussian noise of 0.25 and 0.5 feature standard deviations is
added to the held-out rows; each variant at its defaults reconstructs them. Printed: the mean
squared error against the clean rows, in units of each feature's standard deviation, of the
noisy rows and of their reconstructions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stream_ae.models import AutoencoderDetector
from trainer.evaluate import load_adbench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="pendigits")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()
    if not (args.data_dir / "adbench").is_dir():
        raise SystemExit(f"{args.data_dir}/adbench not found: this benchmark needs the shared data")
    X, y = load_adbench(args.data_dir, args.dataset)
    normal = np.random.default_rng(0).permutation(X[y == 0])
    cut = int(0.6 * len(normal))
    train, clean = normal[:cut], normal[cut:]
    sd = train.std(0) + 1e-9
    rng = np.random.default_rng(1)
    print(f"{args.dataset}: {len(train):,} training rows, {len(clean):,} held out, {X.shape[1]} features")
    for variant in ("dae", "ae", "ncae", "vae"):
        det = AutoencoderDetector(variant, seed=0, device="cpu").fit(train)
        cells = []
        for level in (0.25, 0.5):
            noisy = (clean + level * sd * rng.normal(size=clean.shape)).astype(np.float32)
            e_noisy = float(np.mean(((noisy - clean) / sd) ** 2))
            e_recon = float(np.mean(((det.reconstruct(noisy) - clean) / sd) ** 2))
            cells.append(f"noise {level} sd: noisy {e_noisy:.3f} reconstruction {e_recon:.3f}")
        print(f"  {variant:5s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
