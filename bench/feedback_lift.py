"""The feedback head's lift weight on a shared ADBench set (needs ``../shared/data``).

    python -m bench.feedback_lift smtp 0.01
    python -m bench.feedback_lift pendigits 0.05

Seed 0's split of the weakly supervised protocol (``trainer.evaluate.labelled_subset``): the
NCAE fitted with that fraction of its training anomalies labelled (``feedback_lift_weight`` 1,
the default), then only the deviation head retrained at lower weights on the same frozen
detector. Prints PR-AUC on the test rows without the head, and with it at each weight, and
the share of normal test rows the head lifts by more than half its margin.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from stream_ae.models import AutoencoderDetector
from stream_ae.models.feedback import train_head
from trainer.evaluate import HTTP_TRAIN_CAP, _stratified_split, labelled_subset, load_adbench, roc_pr


def main(name: str, fraction: float, data_dir: Path = Path("../shared/data")) -> None:
    X, y = load_adbench(data_dir, name)
    tr, te = _stratified_split(y, 0)
    if name == "http" and len(tr) > HTTP_TRAIN_CAP:
        tr = np.random.default_rng(0).choice(tr, HTTP_TRAIN_CAP, replace=False)
    known = labelled_subset(y[tr], fraction, 0)
    det = AutoencoderDetector("ncae", device="cpu", seed=0).fit(X[tr], known)
    assert det.labels_ is not None and det.feedback_ is not None
    normal, margin = y[te] == 0, float(det.labels_["margin"])
    head_te = det.component_scores(X[te])["feedback"]
    base_te = det.score_samples(X[te]) - head_te
    print(
        f"{name}, {fraction:g} labelled ({int((known == 1).sum())} labels): "
        f"without the head PR {roc_pr(y[te], base_te)[1]:.3f}"
    )

    def report(weight: float, f: np.ndarray) -> None:
        lifted = float((f[normal] > margin / 2).mean())
        print(f"  lift weight {weight:<5g} PR {roc_pr(y[te], base_te + f)[1]:.3f}, normal rows lifted {lifted:.4f}")

    report(1.0, head_te)
    det.feedback_ = None  # the unsupervised score alone, for retraining the head
    x_tr = det._to_tensor(X[tr])
    base_tr = torch.from_numpy(det.score_samples(X[tr]))
    unl, anomaly = known != 1, known == 1
    for weight in (0.1, 0.01):
        head, _, _ = train_head(
            x_tr[unl], base_tr[unl], x_tr[anomaly], x_tr[:0], base_tr[:0], seed=0, lift_weight=weight
        )
        with torch.no_grad():
            report(weight, head(det._to_tensor(X[te])).double().numpy())


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
