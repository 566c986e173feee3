"""Device-resident scoring of encoded batches: one host-to-device copy, scores and explanations.

The model stays on its device; on CUDA the host side of the copy is a pinned buffer reused
across batches (grown when a larger batch arrives). Explanations (top features by share of
squared reconstruction error) are computed only for rows above the threshold; given the
column-to-field ``groups``, they name fields and come with the reconstruction of those rows
(the model's expected values, in the encoded units: :mod:`stream_ae.scoring.explain` reads them).

Example:
    >>> import numpy as np
    >>> from stream_ae.models import AutoencoderDetector
    >>> det = AutoencoderDetector("ae", device="cpu", max_steps=50, min_steps=50).fit(np.random.rand(500, 4))
    >>> res = DeviceScorer(det, top_k=2).score(np.random.rand(8, 4).astype("float32"))
    >>> res.scores.shape, res.top_index.shape
    ((8,), (8, 2))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from stream_ae.models import AutoencoderDetector

Judge = Callable[[NDArray[np.float64]], NDArray[np.bool_]]


@dataclass
class ScoreResult:
    scores: NDArray[np.float64]
    flagged: NDArray[np.bool_]
    top_index: NDArray[np.int64]  # [n, k] columns, or fields with ``groups``; rows not flagged hold -1
    top_share: NDArray[np.float32]
    # with ``groups``: the explained rows (ascending) and, for each of their top fields, the
    # row the model expected ([rows, k, d], encoded units)
    explained_rows: NDArray[np.int64] | None = None
    expected: NDArray[np.float32] | None = None
    codes: NDArray[np.float32] | None = None  # [n, latent] with ``with_codes``


class DeviceScorer:
    """Scores float32 matrices with a fitted detector on the detector's device."""

    def __init__(
        self,
        detector: AutoencoderDetector,
        top_k: int = 3,
        groups: NDArray[np.int64] | None = None,
        with_codes: bool = False,
    ) -> None:
        if detector.center_ is None or detector.scale_ is None or detector.net_ is None:
            raise ValueError("the detector is not fitted")
        self.detector = detector
        self.device = detector.device
        self.n_groups = int(groups.max()) + 1 if groups is not None and len(groups) else 0
        self.top_k = min(top_k, self.n_groups if groups is not None else detector.n_features_in_)
        self._groups = torch.from_numpy(groups).to(self.device) if groups is not None else None
        self.with_codes = with_codes
        self.threshold = detector.threshold_
        self._pinned: torch.Tensor | None = None

    def _to_device(self, X: NDArray[np.float32]) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        if self.device.type != "cuda":
            return host
        if self._pinned is None or self._pinned.shape[0] < len(X) or self._pinned.shape[1] != X.shape[1]:
            self._pinned = torch.empty((max(len(X), 1024), X.shape[1]), dtype=torch.float32).pin_memory()
        buf = self._pinned[: len(X)]
        buf.copy_(host)
        return buf.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def score(self, X: NDArray[np.float32], judge: Judge | None = None) -> ScoreResult:
        """Scores for every row; explanations for the rows above the threshold, or, with
        ``judge`` (the post-score stage: raw scores in, the rows that alarm out), for the rows
        it flags."""
        n = len(X)
        if n == 0:
            empty = np.zeros(0)
            return ScoreResult(
                empty, empty.astype(bool), np.zeros((0, self.top_k), np.int64), np.zeros((0, self.top_k), np.float32)
            )
        z = self.detector.scale_tensor(self._to_device(X))
        scores_t = self.detector.score_tensor(z)
        scores: NDArray[np.float64] | None = None
        flagged: NDArray[np.bool_] | None = None
        if judge is None:
            flagged_t = scores_t > self.threshold
        else:
            scores = scores_t.double().cpu().numpy()
            flagged = np.asarray(judge(scores), dtype=bool)
            flagged_t = torch.from_numpy(flagged).to(scores_t.device)
        top_index = np.full((n, self.top_k), -1, dtype=np.int64)
        top_share = np.zeros((n, self.top_k), dtype=np.float32)
        rows = torch.nonzero(flagged_t).squeeze(1)
        explained, expected = None, None
        if self.top_k and rows.numel():
            if self._groups is not None:
                index, share, recon = self.detector.explain_fields_tensor(
                    z[rows], self._groups, self.n_groups, self.top_k
                )
                flat = recon.reshape(-1, recon.shape[-1]).cpu().numpy()
                expected = self.detector.unscale(flat).astype(np.float32).reshape(recon.shape)
            else:
                index, share = self.detector.explain_tensor(z[rows], self.top_k)
            r = rows.cpu().numpy()
            top_index[r, : index.shape[1]] = index.cpu().numpy()
            top_share[r, : share.shape[1]] = share.cpu().numpy()
            explained = r.astype(np.int64) if expected is not None else None
        codes = None
        if self.with_codes:
            assert self.detector.net_ is not None
            with self.detector.autocast(z.device):
                codes = self.detector.net_.encode(z).float().cpu().numpy()
        if scores is None or flagged is None:
            scores = scores_t.double().cpu().numpy()
            flagged = scores > self.threshold
        return ScoreResult(scores, flagged, top_index, top_share, explained, expected, codes)

    def probe(self, n: int = 256, seed: int = 0) -> bool:
        """Finite scores on a synthetic batch around the training centre (hot-swap check)."""
        assert self.detector.center_ is not None and self.detector.scale_ is not None
        rng = np.random.default_rng(seed)
        X = self.detector.center_ + rng.normal(size=(n, len(self.detector.center_))) * self.detector.scale_
        return bool(np.isfinite(self.score(X.astype(np.float32)).scores).all())
