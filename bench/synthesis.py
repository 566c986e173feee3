"""How realistic a VAE's generated traffic is (``stream-ae synthesize``).

    python -m bench.synthesis                         # card stream, and a real set when ../shared is there
    python -m bench.synthesis --dataset pendigits --data-dir ../shared/data

For each source: a VAE and an NCAE are trained on the same normal rows; the VAE generates as
many rows as a held-out real slice has, and three figures compare the two:

* **classifier two-sample test**: ROC-AUC of a gradient-boosted classifier telling real from
  generated rows (5-fold cross-validated, on the encoded features); 0.5 = indistinguishable;
* **per-feature Kolmogorov-Smirnov statistics** (numeric fields, in their units; for the
  card stream the total-variation distance of each categorical and boolean field too);
* **the NCAE's false-alarm rate** on the generated rows against its calibrated rate (and
  its realised rate on the held-out real rows): realistic rows are flagged about as often.

Each with the decoder's noise (the default of ``stream-ae synthesize``) and without it.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import cross_val_score

from stream_ae.features.featurize import featurize_file
from stream_ae.tools.synthetic import CARD_SCHEMA_STATELESS, transactions
from trainer.train import fit_events, fit_matrix

RATE = 0.01
STEPS = 3000


def c2st(real: NDArray[Any], fake: NDArray[Any], seed: int = 0) -> float:
    X = np.vstack([real, fake])
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
    return float(cross_val_score(clf, X, y, cv=5, scoring="roc_auc").mean())


def card_stream(noise: bool) -> None:
    train, _ = transactions(20_000, seed=1)
    real, _ = transactions(5_000, seed=2)
    vae = fit_events(train, schema=CARD_SCHEMA_STATELESS, variant="vae", max_steps=STEPS, device="cpu", seed=0)
    ncae = fit_events(train, schema=CARD_SCHEMA_STATELESS, target_rate=RATE, device="cpu", seed=0)
    assert vae.encoder is not None and ncae.encoder is not None
    fake = vae.encoder.events_from_rows(vae.detector.sample(len(real), seed=3, noise=noise), seed=3)
    Xr = featurize_file(vae.encoder, real).batch.X
    Xf = featurize_file(vae.encoder, fake).batch.X
    print(f"card stream (stateless schema), decoder noise {noise}: {len(train):,} training events, "
          f"{len(real):,} real and generated")  # fmt: skip
    print(f"  classifier two-sample ROC-AUC {c2st(Xr, Xf):.3f} (0.5: indistinguishable)")
    for f in vae.encoder.schema.fields:
        a, b = [e.get(f.name) for e in real], [e.get(f.name) for e in fake]
        if f.kind.value in ("numeric", "timestamp"):
            if f.kind.value == "timestamp":  # compare hours of day
                a = [(v % 86400) / 3600 for v in a]
                b = [(v % 86400) / 3600 if v is not None else np.nan for v in b]
            print(f"  {f.name:18s} KS {ks_2samp(a, b).statistic:.3f}")
        else:
            ca, cb = Counter(map(str, a)), Counter(map(str, b))
            tv = 0.5 * sum(abs(ca[k] / len(a) - cb[k] / len(b)) for k in set(ca) | set(cb))
            print(f"  {f.name:18s} total variation {tv:.3f}")
    det = ncae.detector
    fa_fake = float(det.predict(featurize_file(ncae.encoder, fake).batch.X).mean())
    fa_real = float(det.predict(featurize_file(ncae.encoder, real).batch.X).mean())
    print(f"  NCAE false-alarm rate: generated {fa_fake:.4f}, real held-out {fa_real:.4f}, calibrated {RATE}")


def adbench(name: str, data_dir: Path, noise: bool) -> None:
    from trainer.evaluate import load_adbench

    X, y = load_adbench(data_dir, name)
    normal = np.random.default_rng(0).permutation(X[y == 0])
    cut = int(0.6 * len(normal))
    train, real = normal[:cut], normal[cut:]
    vae = fit_matrix(train, variant="vae", max_steps=STEPS, device="cpu", seed=0)
    ncae = fit_matrix(train, target_rate=RATE, device="cpu", seed=0)
    fake = vae.detector.sample(len(real), seed=3, noise=noise)
    ks = np.array([ks_2samp(real[:, j], fake[:, j]).statistic for j in range(X.shape[1])])
    print(f"ADBench {name}, decoder noise {noise}: {len(train):,} normal training rows, "
          f"{len(real):,} real and generated, {X.shape[1]} features")  # fmt: skip
    print(f"  classifier two-sample ROC-AUC {c2st(real, fake):.3f} (0.5: indistinguishable)")
    print(f"  KS per feature: median {np.median(ks):.3f}, max {ks.max():.3f}")
    fa_fake = float(ncae.detector.predict(fake.astype(np.float32)).mean())
    fa_real = float(ncae.detector.predict(real).mean())
    print(f"  NCAE false-alarm rate: generated {fa_fake:.4f}, real held-out {fa_real:.4f}, calibrated {RATE}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="pendigits", help="an ADBench set of ../shared/data")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()
    real_set = (args.data_dir / "adbench").is_dir()
    if not real_set:
        print(f"({args.data_dir}/adbench not found: the real set is skipped)")
    for noise in (True, False):
        card_stream(noise)
        if real_set:
            adbench(args.dataset, args.data_dir, noise)


if __name__ == "__main__":
    main()
