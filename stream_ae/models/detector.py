"""The estimator every variant shares: ``fit``, ``score_samples``, ``predict``, ``save``, ``load``.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(2000, 6)).astype("float32")
    >>> det = AutoencoderDetector(variant="ae", max_steps=200, seed=0).fit(X)
    >>> det.score_samples(X[:3]).shape, det.predict(np.full((1, 6), 9.0, "float32")).tolist()
    ((3,), [1])
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from stream_ae.lifecycle.artifact_format import ArtifactError, read_artifact, write_artifact
from stream_ae.models.feedback import DeviationHead, FeedbackFit, label_fingerprint, label_masks, train_head
from stream_ae.models.networks import (
    NETWORKS,
    AutoencoderNet,
    NoiseContrastiveNet,
    VariationalNet,
    network_defaults,
)
from stream_ae.models.optim import AdamW, OneCycle
from stream_ae.scoring.threshold import Method, Threshold

FloatArray = NDArray[np.float32]
ProgressFn = Callable[[int, int, float], None]

# How each variant turns its raw parts into one score: weights of the robust-standardised parts.
DEFAULT_SCORE_WEIGHTS: dict[str, dict[str, float]] = {
    "ae": {"recon": 1.0},
    "dae": {"recon": 1.0},
    "sparse": {"recon": 1.0},
    "contractive": {"recon": 1.0},
    "vae": {"recon": 1.0, "kl": 1.0},
    # The NCAE scores by how isolated a row is in small training samples (``neighbour``: sees
    # through tight clusters of anomalies in contaminated training data), plus half its tail
    # score (how extreme each value is) and a quarter of its noise-contrastive density estimate
    # (the joint view). On the ADBench sets each part adds to the other two; the references' own
    # -log q and the reconstruction error do not (docs/benchmarks/evaluation.md, "Ablations", and
    # docs/concepts/model.md). ``score_weights`` changes the mix.
    "ncae": {"neighbour": 1.0, "density": 0.25, "tail": 0.5},
}

# A score part that exists only when a network option turns it on (a false or zero option: off).
OPTIONAL_PARTS: dict[str, str] = {"tail": "tails", "neighbour": "neighbour_sets"}

# Network options a variant starts from, over the network class's own defaults (which stay those
# of older artifacts, whose manifests do not name the options added since).
DEFAULT_NET_OPTIONS: dict[str, dict[str, Any]] = {
    # two telescoping chains of four steps: feature-swap waymarks to the product of the marginals
    # and interpolations to a fitted Gaussian; 32 neighbour samples of 64 rows (k = 2); no
    # trimming, which taught the heads that rare legitimate behaviour (travel abroad in the
    # synthetic card stream) is anomalous (docs/concepts/model.md)
    "ncae": {
        "reference": "marginal+gaussian",
        "bridges": 4,
        "trim": 0.0,
        "head_hidden": [64, 64],
        "tails": True,
        "neighbour_sets": 32,
        "neighbour_size": 64,
        "neighbour_k": 2,
    },
}


def neighbour_options(variant: str, sets: int) -> dict[str, Any]:
    """Detector keywords that give the NCAE ``sets`` neighbour samples (its scoring cost on
    the CPU grows with them; docs/concepts/model.md measures 8, 16 and the default 32); none
    for the variants without a neighbour part.

    Example:
        >>> neighbour_options("ncae", 16)
        {'net_options': {'neighbour_sets': 16}}
        >>> neighbour_options("ae", 16)
        {}
    """
    return {"net_options": {"neighbour_sets": sets}} if "neighbour_sets" in DEFAULT_NET_OPTIONS.get(variant, {}) else {}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# a quartile range under this share of the standard deviation, with half the rows at the median,
# is a point mass with stragglers, not a spread (the robust scaler)
POINT_MASS_SPREAD = 0.01


@dataclass
class Hyper:
    """Hyper-parameters: everything needed to rebuild the network (stored in the manifest)."""

    variant: str = "ncae"
    hidden: tuple[int, ...] = (128, 64)
    latent_dim: int = 8
    epochs: int = 30
    # the step budget: ``epochs`` passes over the training rows, at least ``min_steps`` (small
    # sets) and at most ``max_steps``; 200 left the ADBench figures where 1,500 had them
    # (docs/design/speed.md) at a seventh of the training time on small data
    min_steps: int = 200
    max_steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    calibration_fraction: float = 0.2
    target_rate: float = 0.01
    threshold_method: str = "auto"
    scaler: str = "robust"  # robust | standard | quantile
    clip: float = 1000.0  # scaled inputs are clipped to +-clip (keeps hostile values finite)
    seed: int = 0
    early_stopping: bool = True  # keep the weights with the best objective on the calibration slice
    # stop when the last two check intervals (each a twentieth of the budget, 25 steps at
    # least) improved the best held-out objective by less than this share of it each, on
    # average, once the learning rate has peaked; 0 runs the whole budget
    plateau_tol: float = 0.002
    bf16: bool = False  # bf16 autocast for the networks' layers (meant for CUDA); exact densities stay float32
    # the weight of a known anomaly's lift against the pull of unlabelled rows (fit with labels):
    # 1 is DevNet's balance; lower keeps a lone verdict in dense traffic from lifting its region
    feedback_lift_weight: float = 1.0
    # the NCAE's self-cleaning: training rows whose neighbour part (isolation in small samples,
    # which a few contaminating rows cannot mask) lies more than this many robust standard
    # deviations above the rows' median train neither the networks nor the tail table and the
    # references; 0 turns it off (the neighbour samples are always drawn from every row)
    clean_fence: float = 0.0
    score_weights: dict[str, float] = field(default_factory=dict)
    net_options: dict[str, Any] = field(default_factory=dict)  # variant-specific knobs

    def __post_init__(self) -> None:
        if self.variant not in NETWORKS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {sorted(NETWORKS)}")
        self.hidden = tuple(self.hidden)
        self.net_options = {
            **network_defaults(NETWORKS[self.variant]),
            **DEFAULT_NET_OPTIONS.get(self.variant, {}),
            **self.net_options,
        }
        if not self.score_weights:
            self.score_weights = dict(DEFAULT_SCORE_WEIGHTS[self.variant])
            for part, option in OPTIONAL_PARTS.items():  # e.g. no tail table, no tail part
                if not self.net_options.get(option):
                    self.score_weights.pop(part, None)


class NotFittedError(RuntimeError):
    """The detector was used before ``fit`` (or ``load``)."""


# Below these a training set cannot be told apart from a list of memorised rows: the held-out
# calibration scores take a handful of values, so no false-alarm rate can be calibrated.
MIN_ROWS = 20
MIN_DISTINCT_ROWS = 10


class NotGenerativeError(ValueError):
    """:meth:`AutoencoderDetector.sample` on a model without a generator (any variant but the
    VAE: their codes have no prior to draw from)."""


class DegenerateDataError(ValueError):
    """The training data cannot make a detector: too few rows, or too few distinct rows (a
    stuck sensor, one replayed event). The message names the reason and the minimum.

    Example:
        >>> AutoencoderDetector("ae").fit(np.ones((2000, 5)))
        Traceback (most recent call last):
        ...
        stream_ae.models.detector.DegenerateDataError: training data has 1 distinct row; at least 10 are needed
    """


def check_not_degenerate(X: NDArray[Any]) -> None:
    """Raise :class:`DegenerateDataError` when ``X`` has fewer than :data:`MIN_ROWS` rows or
    fewer than :data:`MIN_DISTINCT_ROWS` distinct rows. Constant columns alone are fine."""
    if len(X) < MIN_ROWS:
        plural = "s" * (len(X) != 1)
        raise DegenerateDataError(f"training data has {len(X)} row{plural}; at least {MIN_ROWS} are needed")
    rows = np.ascontiguousarray(X) + np.float32(0.0)  # -0.0 and 0.0 are one value
    distinct = len(np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()))
    if distinct < MIN_DISTINCT_ROWS:
        raise DegenerateDataError(
            f"training data has {distinct} distinct row{'s' * (distinct != 1)}; at least {MIN_DISTINCT_ROWS} are needed"
        )


class AutoencoderDetector:
    """An autoencoder-family anomaly detector with a calibrated threshold.

    Higher scores are more anomalous. ``predict`` flags scores above ``threshold_``, which was
    set on a held-out slice of the training data for the false-alarm rate ``target_rate``.
    """

    def __init__(self, variant: str = "ncae", device: str = "auto", **hyper: Any) -> None:
        self.hyper = Hyper(variant=variant, **hyper)
        self.device = resolve_device(device)
        self.net_: AutoencoderNet | None = None
        self.center_: FloatArray | None = None
        self.scale_: FloatArray | None = None
        self.part_stats_: dict[str, tuple[float, float]] = {}
        self.threshold: Threshold | None = None
        self.history_: list[dict[str, float]] = []
        self.train_seconds_: float = 0.0
        self.n_features_in_: int = 0
        self.best_step_: int = 0
        self.steps_: int = 0  # optimiser steps the last fit ran (the budget, or fewer on a plateau)
        self.calibration_scores_: NDArray[np.float64] | None = None
        self.knots_: FloatArray | None = None
        self.residual_scale_: FloatArray | None = None  # the VAE decoder's noise, network space
        self.feedback_: DeviationHead | None = None  # trained from labels (fit's y)
        self.cleaned_rows_ = 0  # training rows clean_fence left out of the networks' training
        self.labels_: dict[str, Any] | None = None  # what the labels were: counts and fingerprint
        self._center_t: torch.Tensor | None = None
        self._scale_t: torch.Tensor | None = None
        self._knots_t: torch.Tensor | None = None

    # -- fitting -------------------------------------------------------------------------
    @property
    def threshold_(self) -> float:
        if self.threshold is None:
            raise NotFittedError("fit or load the detector first")
        return self.threshold.value

    def _check_x(self, X: NDArray[Any]) -> FloatArray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {X.shape}")
        if self.n_features_in_ and X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features, got {X.shape[1]}")
        if not np.isfinite(X).all():
            raise ValueError("input contains NaN or infinite values")
        return X

    def _fit_scaler(self, X32: FloatArray, floor: NDArray[Any] | None = None) -> None:
        X = X32.astype(np.float64)  # float32 squares overflow at magnitudes near 1e20
        if self.hyper.scaler == "standard":
            center, scale = X.mean(0), X.std(0)
        else:
            center, scale = robust_center_scale(X)
        if floor is not None:
            if np.shape(floor) != scale.shape:
                raise ValueError(f"scale_floor has {np.size(floor)} entries for {scale.size} columns")
            scale = np.maximum(scale, np.asarray(floor, dtype=np.float64))
        self.center_ = center.astype(np.float32)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0).astype(np.float32)
        if self.hyper.scaler == "quantile":
            self.knots_ = np.ascontiguousarray(np.quantile(X32, QUANTILE_LEVELS, axis=0).T, dtype=np.float32)  # [d, K]

    def scale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Raw rows (on the model's device) to the network's input space, clipped."""
        if self.center_ is None or self.scale_ is None:
            raise NotFittedError("fit or load the detector first")
        if self._center_t is None or self._center_t.device != x.device:
            self._center_t = torch.from_numpy(self.center_).to(x.device)
            self._scale_t = torch.from_numpy(self.scale_).to(x.device)
            self._knots_t = torch.from_numpy(self.knots_).to(x.device) if self.knots_ is not None else None
        assert self._scale_t is not None
        if self._knots_t is None:
            z = (x - self._center_t) / self._scale_t
        else:
            z = _gaussianize(x, self._knots_t, self._scale_t)
        return z.clamp(-self.hyper.clip, self.hyper.clip)

    def autocast(self, device: torch.device | None = None) -> torch.autocast:
        """The context the networks run in: bf16 autocast when ``hyper.bf16``, else a no-op.

        Linear layers (encoder, decoder, heads) then compute in bfloat16; the exact parts
        (reference log-densities, tail table, neighbour distances) switch autocast off and stay
        float32, as does the score arithmetic. Meant for CUDA; on the CPU it works but is rarely
        faster.
        """
        dev = device or self.device
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=self.hyper.bf16)

    def _to_tensor(self, X: FloatArray) -> torch.Tensor:
        return self.scale_tensor(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(self.device))

    def _build_net(self, n_features: int) -> AutoencoderNet:
        h = self.hyper
        net = NETWORKS[h.variant](n_features, h.hidden, h.latent_dim, **h.net_options)
        return net.to(self.device)

    def fit(
        self,
        X: NDArray[Any],
        y: Any = None,
        progress: ProgressFn | None = None,
        init_from: AutoencoderDetector | None = None,
        scale_floor: NDArray[Any] | None = None,
    ) -> AutoencoderDetector:
        """Fit on rows of (mostly) normal traffic, with optional labels ``y``.

        ``y`` follows PyOD and scikit-learn: 1 a known anomaly, 0 a known normal, -1 or NaN
        unlabelled; without it (or with no row labelled) fitting is unsupervised. Known
        anomalies are kept out of the autoencoder's training rows; known normals stay in
        them. Both then train a deviation head that lifts rows like the anomalies and lowers
        rows like the normals (:mod:`stream_ae.models.feedback`). The calibration slice is
        drawn from the unlabelled rows only: the threshold stays a false-alarm-rate quantile
        of unlabelled traffic. When fewer than twice a slice's rows are unlabelled (a file
        labelled throughout), it is drawn from every row not known to be an anomaly: known
        anomalies never set the threshold, which is how labels make the calibration hold on
        contaminated training data.

        ``init_from`` warm-starts from another fitted detector (the trainer's champion) when
        it has the same network (:meth:`same_network`), else training starts from scratch; the
        buffers (reference noises, tail table, neighbour samples) are always refitted, not copied.

        ``scale_floor`` (one per column, or none) is the smallest scale each column is divided
        by on the way into the network: a column that counts something has a unit
        (:meth:`~stream_ae.features.encoder.FeatureEncoder.scale_floor`), and a count that was 0
        in all but a few training rows is then not divided by a spread of a few thousandths.

        Example:
            >>> rng = np.random.default_rng(0)
            >>> X = rng.normal(size=(3000, 4)).astype("float32")
            >>> X[:40, :2] += (2.5, -2.5)  # a fraud pattern; ten of its rows confirmed
            >>> y = np.full(3000, -1); y[:10] = 1
            >>> det = AutoencoderDetector("ae", max_steps=300, seed=0).fit(X, y)
            >>> det.labels_["anomalies"], bool(np.median(det.score_samples(X[10:40])) > det.threshold_)
            (10, True)
        """
        h = self.hyper
        X = self._check_x(X)
        check_not_degenerate(X)
        self.n_features_in_ = X.shape[1]
        is_anomaly, is_normal = label_masks(y, len(X)) if y is not None else (np.zeros(len(X), bool),) * 2
        rng = np.random.default_rng(h.seed)
        torch.manual_seed(h.seed)
        unlabelled = np.flatnonzero(~(is_anomaly | is_normal))
        n_cal = round(len(X) * h.calibration_fraction) if len(X) >= 100 else 0
        # the slice is unlabelled traffic; in a labelled file the known normals are the traffic too
        labelled_file = len(unlabelled) < 2 * n_cal
        order = rng.permutation(np.flatnonzero(~is_anomaly) if labelled_file else unlabelled)
        n_cal = min(n_cal, len(order) // 2)
        cal_idx = order[:n_cal]
        if labelled_file:  # held-out known normals join the unlabelled rows, for the head as well
            is_normal = is_normal.copy()
            is_normal[cal_idx] = False
        # known anomalies never train the autoencoder; known normals outside the slice always do
        rest = order[n_cal:]
        train_idx = rest if labelled_file else np.concatenate([rest, np.flatnonzero(is_normal)])
        if len(train_idx) < MIN_ROWS:
            raise DegenerateDataError(
                f"{len(train_idx)} rows left to train on (known anomalies and the calibration slice are not); "
                f"at least {MIN_ROWS} are needed"
            )
        X_train = X[train_idx]
        if scale_floor is not None and np.any(scale_floor):  # dequantise counts: one unit of uniform noise
            X_train = X_train + (rng.uniform(-0.5, 0.5, X_train.shape) * scale_floor).astype(np.float32)
        self._fit_scaler(X_train, scale_floor)
        xt = self._to_tensor(X_train)
        self.net_ = net = self._build_net(X.shape[1])
        xt_fit = xt
        if isinstance(net, NoiseContrastiveNet):
            net.fit_references(xt, seed=h.seed)
            keep = self._clean_rows(net, xt)
            if keep is not None:
                net.fit_references(xt, seed=h.seed, keep=keep)
                xt_fit = xt[keep]
        if init_from is not None and self.same_network(init_from):
            # learned parameters only: every buffer (reference noises, tail table, neighbour samples) is a statistic
            # of this training set and was fitted above
            learned = {name for name, _ in net.named_parameters()}
            warm = {k: v for k, v in init_from.state_dict().items() if k in learned}
            net.load_state_dict(warm, strict=False)
        self._train(net, xt_fit, progress, self._to_tensor(X[cal_idx]) if n_cal >= 20 else None)
        self.feedback_, self.labels_ = None, None
        train_parts = self._parts(xt)
        self.part_stats_ = {k: _robust_stats(v) for k, v in train_parts.items()}
        train_scores = self._combine(train_parts)
        if is_anomaly.any() or is_normal.any():
            self._fit_feedback(X, is_anomaly, is_normal, train_idx, train_scores)
        if n_cal >= 20:
            cal_scores = self.score_samples(X[cal_idx])
        else:  # the training rows, with the head's part when there is one
            cal_scores = train_scores if self.feedback_ is None else self.score_samples(X[train_idx])
        self.calibration_scores_ = cal_scores  # kept for recalibration at other rates (not saved)
        if h.variant == "vae":  # the Gaussian decoder's spread: the held-out rows' residual RMS per feature
            held = self._to_tensor(X[cal_idx]) if n_cal >= 20 else xt
            with torch.inference_mode():
                res = held - net.reconstruct(held).float()
            self.residual_scale_ = res.pow(2).mean(0).sqrt().cpu().numpy().astype(np.float32)
        self.threshold = Threshold.fit(cal_scores, h.target_rate, method=h.threshold_method)  # type: ignore[arg-type]
        return self

    def _clean_rows(self, net: NoiseContrastiveNet, xt: torch.Tensor) -> torch.Tensor | None:
        """The training rows the networks, tail table and references learn from under
        ``clean_fence`` (a boolean mask), or None: off, no neighbour part, or nothing left out."""
        fence = self.hyper.clean_fence
        if fence <= 0 or net.neighbours is None:
            return None
        with torch.inference_mode():
            iso = net.neighbours.score(xt).double().cpu().numpy()
        med, spread = _robust_stats(iso)  # as the score's parts are standardised
        keep = iso <= med + fence * spread
        self.cleaned_rows_ = int((~keep).sum())
        if not self.cleaned_rows_ or int(keep.sum()) < MIN_ROWS:
            return None
        return torch.from_numpy(keep).to(xt.device)

    def _fit_feedback(
        self,
        X: FloatArray,
        is_anomaly: NDArray[np.bool_],
        is_normal: NDArray[np.bool_],
        train_idx: NDArray[np.int64],
        train_scores: NDArray[np.float64],
    ) -> None:
        """Train the deviation head on the unsupervised score (frozen) of every row: the
        training rows' scores ``train_scores`` as computed for the part statistics, the
        others' (calibration slice, known anomalies) computed here."""
        h = self.hyper
        unlabelled = ~(is_anomaly | is_normal)
        if not unlabelled.any():  # every row labelled (a small file): its known normals are the traffic
            unlabelled = is_normal
        scores = np.empty(len(X), dtype=np.float64)
        scores[train_idx] = train_scores
        rest = np.setdiff1d(np.arange(len(X)), train_idx)
        if len(rest):
            scores[rest] = self._combine(self._parts(self._to_tensor(X[rest])))
        head, margin, median = train_head(
            self._to_tensor(X[unlabelled]),
            torch.from_numpy(np.ascontiguousarray(scores[unlabelled])).to(self.device),
            self._to_tensor(X[is_anomaly]),
            self._to_tensor(X[is_normal]),
            torch.from_numpy(np.ascontiguousarray(scores[is_normal])).to(self.device),
            seed=h.seed,
            lift_weight=h.feedback_lift_weight,
        )
        self.feedback_ = head
        fit = FeedbackFit(
            int(is_anomaly.sum()), int(is_normal.sum()), label_fingerprint(X, is_anomaly, is_normal), margin, median
        )
        self.labels_ = fit.as_dict()

    def same_network(self, other: AutoencoderDetector) -> bool:
        """True when ``other`` has this detector's network: variant, sizes and options."""
        mine, theirs = self.hyper, other.hyper
        return (
            self.n_features_in_ == other.n_features_in_
            and (mine.variant, mine.hidden, mine.latent_dim) == (theirs.variant, theirs.hidden, theirs.latent_dim)
            and json.dumps(mine.net_options, sort_keys=True) == json.dumps(theirs.net_options, sort_keys=True)
        )

    def _validation_loss(self, net: AutoencoderNet, xval: torch.Tensor) -> float:
        """The training objective on held-out rows, with noise from a fixed seed (comparable
        from one check to the next)."""
        gen = torch.Generator(device=self.device).manual_seed(self.hyper.seed + 7919)
        with self.autocast():
            loss, _ = net.training_loss(xval, gen)
        return float(loss.detach())

    def _train(
        self, net: AutoencoderNet, xt: torch.Tensor, progress: ProgressFn | None, xval: torch.Tensor | None = None
    ) -> None:
        """Mini-batch AdamW with a one-cycle schedule. With ``xval`` (and ``early_stopping``)
        the weights with the lowest held-out objective are kept: small data sets stop early.

        On the CPU the steps run on one thread: they are small products (a batch of 256 through
        layers of 64-128 units), where a second thread costs more in synchronisation than it
        gives (400 steps on 1,000 rows: 4.4 s on one thread, 6.2 s on two, on a 2-core host), and
        two trainings side by side do not fight over the cores. The passes over every row
        before and after (part statistics, calibration) use all the threads."""
        if self.device.type != "cpu":
            self._train_steps(net, xt, progress, xval)
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._train_steps(net, xt, progress, xval)
        finally:
            torch.set_num_threads(threads)

    def _train_steps(
        self, net: AutoencoderNet, xt: torch.Tensor, progress: ProgressFn | None, xval: torch.Tensor | None
    ) -> None:
        h = self.hyper
        check_every = max(25, min(h.max_steps, 1000) // 20)
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        bests: list[float] = []  # the best held-out objective after each check
        if xval is not None and len(xval) > 2048:
            xval = xval[:2048]
        gen = torch.Generator(device=self.device).manual_seed(h.seed)
        bs = min(h.batch_size, len(xt))
        steps_per_epoch = max(1, len(xt) // bs)
        total = max(4, min(h.max_steps, max(h.min_steps, h.epochs * steps_per_epoch)))
        # the warm-up needs two steps at least (one-cycle divides by its length minus one)
        warmup = min(0.5, max(0.1, 2.0 / total))
        # torch.optim's AdamW and OneCycleLR, computed without torch.optim (whose import of
        # torch._dynamo cost 1-2 s of every training run): stream_ae.models.optim
        schedule = OneCycle(max_lr=h.lr, total_steps=total, pct_start=warmup)
        opt = AdamW(net.parameters(), lr=h.lr, weight_decay=h.weight_decay, schedule=schedule)
        net.train()
        start, step, running = time.perf_counter(), 0, 0.0
        self.history_ = []
        while step < total:
            perm = torch.randperm(len(xt), generator=gen, device=self.device)
            for i in range(steps_per_epoch):
                batch = xt[perm[i * bs : (i + 1) * bs]]
                with self.autocast():
                    loss, parts = net.training_loss(batch, gen)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0, foreach=True)
                opt.step()
                step += 1
                running += float(loss.detach())
                if h.early_stopping and xval is not None and (step % check_every == 0 or step == total):
                    val = self._validation_loss(net, xval)
                    if best is None or val < best[0]:
                        best = (val, {k: v.detach().clone() for k, v in net.state_dict().items()})
                        self.best_step_ = step
                    bests.append(best[0])
                    # two intervals, not one: a single noisy check while the rate is high
                    # must not end the run
                    if (
                        h.plateau_tol > 0
                        and step > warmup * total
                        and len(bests) > 2
                        and bests[-3] - bests[-1] < 2 * h.plateau_tol * abs(bests[-3])
                    ):
                        total = step  # learned: the held-out objective has stopped moving
                if step % steps_per_epoch == 0 or step == total:
                    n = steps_per_epoch if step % steps_per_epoch == 0 else step % steps_per_epoch
                    self.history_.append({"step": step, "loss": running / n, **{k: float(v) for k, v in parts.items()}})
                    running = 0.0
                    if progress is not None:
                        progress(step, total, self.history_[-1]["loss"])
                if step >= total:
                    break
        if best is not None:
            net.load_state_dict(best[1])
        net.eval()
        self.train_seconds_ = time.perf_counter() - start
        self.steps_ = step

    # -- scoring -------------------------------------------------------------------------
    @torch.inference_mode()
    def _parts(self, xt: torch.Tensor, chunk: int = 65536) -> dict[str, NDArray[np.float64]]:
        if self.net_ is None:
            raise NotFittedError("fit or load the detector first")
        out: dict[str, list[NDArray[np.float64]]] = {}
        for i in range(0, len(xt), chunk):
            with self.autocast(xt.device):
                parts = self.net_.score_parts(xt[i : i + chunk])
            if self.feedback_ is not None:
                parts["feedback"] = self.feedback_(xt[i : i + chunk])
            for k, v in parts.items():
                out.setdefault(k, []).append(v.double().cpu().numpy())
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}

    def _combine(self, parts: dict[str, NDArray[np.float64]]) -> NDArray[np.float64]:
        score: NDArray[np.float64] | None = None
        for name, weight in self.hyper.score_weights.items():
            med, scale = self.part_stats_[name]
            term = weight * (parts[name] - med) / scale
            score = term if score is None else score + term
        assert score is not None
        if "feedback" in parts:  # already in the score's units
            score = score + parts["feedback"]
        return score

    def score_tensor(self, xt_scaled: torch.Tensor) -> torch.Tensor:
        """Scores of an already scaled device tensor, kept on the device (the worker's path)."""
        if self.net_ is None:
            raise NotFittedError("fit or load the detector first")
        with self.autocast(xt_scaled.device):
            parts = self.net_.score_parts(xt_scaled, need=self.hyper.score_weights.keys())
        score = torch.zeros(xt_scaled.shape[0], device=xt_scaled.device, dtype=torch.float32)
        for name, weight in self.hyper.score_weights.items():
            med, scale = self.part_stats_[name]
            score = score + weight * (parts[name].float() - med) / scale
        if self.feedback_ is not None:
            score = score + self.feedback_(xt_scaled)
        return score

    def score_samples(self, X: NDArray[Any]) -> NDArray[np.float64]:
        """Anomaly scores, higher = more anomalous."""
        X = self._check_x(X)
        if len(X) == 0:
            return np.zeros(0)
        return self._combine(self._parts(self._to_tensor(X)))

    def component_scores(self, X: NDArray[Any]) -> dict[str, NDArray[np.float64]]:
        """The raw parts the score is made of (``recon``, ``density``, ``kl``), unstandardised."""
        return self._parts(self._to_tensor(self._check_x(X)))

    def predict(self, X: NDArray[Any]) -> NDArray[np.int8]:
        """1 for rows above the calibrated threshold, else 0."""
        if self.threshold is None:
            raise NotFittedError("fit or load the detector first")
        return self.threshold.flag(self.score_samples(X))

    def recalibrate(self, X_normal: NDArray[Any], rate: float, method: Method = "auto") -> Threshold:
        """Refit only the threshold on new normal rows (no retraining)."""
        self.threshold = Threshold.fit(self.score_samples(X_normal), rate, method)
        return self.threshold

    @torch.inference_mode()
    def explain(self, X: NDArray[Any], k: int = 3) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Top-``k`` features by share of squared reconstruction error: (indices, shares)."""
        index, share = self.explain_tensor(self._to_tensor(self._check_x(X)), k)
        return index.cpu().numpy(), share.cpu().numpy()

    def explain_tensor(self, xt_scaled: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`explain` on an already scaled device tensor, kept on the device (the worker's
        path): ``[n, k]`` feature indices and their float32 shares."""
        if self.net_ is None:
            raise NotFittedError("fit or load the detector first")
        with self.autocast(xt_scaled.device):
            res = self.net_.residual(xt_scaled).float().pow(2)
        share = res / res.sum(1, keepdim=True).clamp_min(1e-12)
        top = torch.topk(share, min(k, share.shape[1]), dim=1)
        return top.indices, top.values

    def explain_fields_tensor(
        self, xt_scaled: torch.Tensor, groups: torch.Tensor, n_groups: int, k: int, iterations: int = 3
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`explain_tensor` by field, with what the model expected of each top field.

        Each column's share of the squared reconstruction error is added to its field's
        (``groups[j]``: column ``j``'s field, of ``n_groups``); the top ``k`` fields come back
        with their shares and, for each, the model's expected row ``[n, k, d]`` (network space;
        :meth:`unscale` maps it to the input's units). The expected value of a field is read
        with the field masked: its columns set to the training median and replaced by their
        reconstruction ``iterations`` times, the rest of the row held (autoencoder imputation).
        A plain reconstruction would not do: an extreme value leaks through the bottleneck and
        drags its own reconstruction with it (an amount of 14,940 where 42 was typical was
        "expected" at 2,400)."""
        if self.net_ is None:
            raise NotFittedError("fit or load the detector first")
        with self.autocast(xt_scaled.device):
            recon = self.net_.reconstruct(xt_scaled).float()
        res = (xt_scaled - recon).pow(2)
        per = torch.zeros((len(res), n_groups), dtype=res.dtype, device=res.device).index_add_(1, groups, res)
        share = per / per.sum(1, keepdim=True).clamp_min(1e-12)
        top = torch.topk(share, min(k, n_groups), dim=1)
        n, kk = top.indices.shape
        held = xt_scaled.float().repeat_interleave(kk, 0)  # one copy of the row per top field
        mask = groups[None, :] == top.indices.reshape(-1, 1)
        guess = torch.where(mask, torch.zeros_like(held), held)
        filled = guess
        with self.autocast(xt_scaled.device):
            for _ in range(max(1, iterations)):
                filled = self.net_.reconstruct(guess).float()
                guess = torch.where(mask, filled, held)
        return top.indices, top.values, filled.reshape(n, kk, -1)

    def unscale(self, Z: NDArray[Any]) -> NDArray[np.float64]:
        """Rows in the network's space (a reconstruction) back to the input's units: the
        inverse of the scaling :meth:`fit` learnt (for the ``quantile`` scaler, of its
        piecewise-linear map through the training quantiles)."""
        if self.center_ is None or self.scale_ is None:
            raise NotFittedError("fit or load the detector first")
        Z = np.asarray(Z, dtype=np.float64)
        if self.knots_ is None:
            return np.asarray(Z * self.scale_ + self.center_, dtype=np.float64)
        levels = _NORMAL_LEVELS.double().numpy()
        out = np.empty_like(Z)
        for j in range(Z.shape[1]):
            knots, tail, z = self.knots_[j].astype(np.float64), float(self.scale_[j]), Z[:, j]
            inside = np.interp(z, levels, knots)
            above = np.where(z > levels[-1], knots[-1] + (z - levels[-1]) * tail, inside)
            out[:, j] = np.where(z < levels[0], knots[0] + (z - levels[0]) * tail, above)
        return out

    @torch.inference_mode()
    def sample(self, n: int, seed: int = 0, noise: bool = True) -> NDArray[np.float64]:
        """``n`` new rows from the VAE's generator, in the training data's units: codes drawn
        from the standard normal prior, decoded, plus the Gaussian decoder's noise (each
        feature's residual spread on the held-out training rows, its maximum-likelihood
        estimate; ``noise=False``, or a model saved before it was kept: the decoder's mean
        alone), unscaled.
        Other variants raise :class:`NotGenerativeError`.

        Example:
            >>> X = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
            >>> det = AutoencoderDetector(variant="vae", max_steps=200, min_steps=200, seed=0).fit(X)
            >>> det.sample(5, seed=1).shape
            (5, 4)
        """
        if self.net_ is None:
            raise NotFittedError("fit or load the detector first")
        if not isinstance(self.net_, VariationalNet):
            raise NotGenerativeError(f"only a VAE has a generator; this model is {self.hyper.variant!r}")
        scale = torch.from_numpy(self.residual_scale_) if noise and self.residual_scale_ is not None else None
        with self.autocast(self.device):
            rows = self.net_.generate(n, torch.Generator().manual_seed(seed), scale)
        return self.unscale(rows.cpu().numpy())

    @torch.inference_mode()
    def embed(self, X: NDArray[Any]) -> NDArray[np.float32]:
        """Each row's latent code: the encoder's output (the VAE's posterior mean), for plots,
        clustering and dimensionality reduction.

        Example:
            >>> X = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
            >>> det = AutoencoderDetector(variant="vae", max_steps=200, min_steps=200, seed=0).fit(X)
            >>> det.embed(X[:2]).shape[0]
            2
        """
        if self.net_ is None:
            raise NotFittedError("fit or load the detector first")
        z = self._to_tensor(self._check_x(X))
        with self.autocast(z.device):
            codes = self.net_.encode(z).float()
        return np.asarray(codes.cpu().numpy(), dtype=np.float32)

    @torch.inference_mode()
    def reconstruct(self, X: NDArray[Any]) -> NDArray[np.float64]:
        """What the model expected each row to be: its reconstruction, in ``X``'s units (the
        VAE's from the posterior mean). An input beyond ``hyper.clip`` scaled units is seen
        clipped.

        Example:
            >>> X = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
            >>> det = AutoencoderDetector(variant="ae", max_steps=200, min_steps=200, seed=0).fit(X)
            >>> det.reconstruct(X[:2]).shape
            (2, 4)
        """
        if self.net_ is None:
            raise NotFittedError("fit or load the detector first")
        z = self._to_tensor(self._check_x(X))
        with self.autocast(z.device):
            recon = self.net_.reconstruct(z).float()
        return self.unscale(recon.cpu().numpy())

    # -- persistence ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything but the weights, JSON-ready (stored in the artifact manifest)."""
        if self.threshold is None or self.center_ is None or self.scale_ is None:
            raise NotFittedError("fit the detector before saving it")
        return {
            "hyper": asdict(self.hyper),
            "n_features": self.n_features_in_,
            "center": self.center_.tolist(),
            "scale": self.scale_.tolist(),
            "knots": self.knots_.tolist() if self.knots_ is not None else None,
            "part_stats": {k: list(v) for k, v in self.part_stats_.items()},
            "threshold": self.threshold.to_dict(),
            "train_seconds": self.train_seconds_,
            "history": self.history_[-5:],
            **({"residual_scale": self.residual_scale_.tolist()} if self.residual_scale_ is not None else {}),
            **({"labels": self.labels_} if self.labels_ is not None else {}),
            **({"feedback_head": list(self.feedback_.hidden)} if self.feedback_ is not None else {}),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.net_ is None:
            raise NotFittedError("fit the detector before saving it")
        state = {k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}
        if self.feedback_ is not None:
            state.update(
                {f"{FEEDBACK_PREFIX}{k}": v.detach().cpu().contiguous() for k, v in self.feedback_.state_dict().items()}
            )
        return state

    @classmethod
    def from_config(
        cls, config: dict[str, Any], state: dict[str, torch.Tensor], device: str = "auto"
    ) -> AutoencoderDetector:
        hyper = dict(config["hyper"])
        # A manifest names every option that existed when it was written; any added since takes
        # the network class's default (the old behaviour), never the variant's current default.
        variant_cls = NETWORKS.get(str(hyper.get("variant")), AutoencoderNet)
        hyper["net_options"] = {**network_defaults(variant_cls), **hyper.get("net_options", {})}
        det = cls(device=device, **hyper)
        det.n_features_in_ = int(config["n_features"])
        det.center_ = np.asarray(config["center"], dtype=np.float32)
        det.scale_ = np.asarray(config["scale"], dtype=np.float32)
        if config.get("knots") is not None:
            det.knots_ = np.ascontiguousarray(config["knots"], dtype=np.float32)
        det.part_stats_ = {k: (float(v[0]), float(v[1])) for k, v in config["part_stats"].items()}
        det.threshold = Threshold.from_dict(config["threshold"])
        det.train_seconds_ = float(config.get("train_seconds", 0.0))
        if config.get("residual_scale") is not None:
            det.residual_scale_ = np.asarray(config["residual_scale"], dtype=np.float32)
        head_state = {k[len(FEEDBACK_PREFIX) :]: v for k, v in state.items() if k.startswith(FEEDBACK_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(FEEDBACK_PREFIX)}
        if config.get("feedback_head") is not None:
            head = DeviationHead(det.n_features_in_, tuple(config["feedback_head"]))
            head.load_state_dict(head_state, strict=True)
            det.feedback_ = head.to(det.device).eval()
            det.labels_ = dict(config.get("labels") or {})
        net = det._build_net(det.n_features_in_)
        net.load_state_dict(state, strict=True)
        net.eval()
        det.net_ = net
        return det

    def save(self, path: str | Path, version: str | None = None, **manifest_extra: Any) -> Path:
        """Write a checksummed artifact directory (:mod:`stream_ae.lifecycle.artifact_format`): the
        weights as safetensors, :meth:`config` and ``manifest_extra`` in the manifest."""
        fields = {
            "version": version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
            "created": time.time(),
            "variant": self.hyper.variant,
            "detector": self.config(),
            **manifest_extra,
        }
        return write_artifact(Path(path), self.state_dict(), fields)

    @classmethod
    def from_artifact(
        cls, manifest: dict[str, Any], state: dict[str, torch.Tensor], device: str = "auto"
    ) -> AutoencoderDetector:
        """The detector of a verified artifact (:func:`~stream_ae.lifecycle.artifact_format.read_artifact`)."""
        try:
            return cls.from_config(manifest["detector"], state, device=device)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ArtifactError(f"weights do not fit the manifest's model: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> AutoencoderDetector:
        """Load an artifact after verifying every checksum."""
        manifest, state, _ = read_artifact(Path(path))
        return cls.from_artifact(manifest, state, device=device)


FEEDBACK_PREFIX = "feedback_head."  # the deviation head's tensors in the artifact's weights
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 65)
_NORMAL_LEVELS = torch.special.ndtri(torch.from_numpy(np.clip(QUANTILE_LEVELS, 0.005, 0.995)).float())


def _gaussianize(x: torch.Tensor, knots: torch.Tensor, tail_scale: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map of each feature through its training quantiles to a standard
    normal score; beyond the training range it continues linearly in robust-scale units, so
    values far outside what training saw stay far out."""
    k = knots.shape[1]
    levels = _NORMAL_LEVELS.to(x.device)
    xt = x.T.contiguous()  # [d, n]
    idx = torch.searchsorted(knots, xt).clamp(1, k - 1)  # right knot index
    lo_k, hi_k = torch.gather(knots, 1, idx - 1), torch.gather(knots, 1, idx)
    frac = ((xt - lo_k) / (hi_k - lo_k).clamp_min(1e-12)).clamp(0, 1)
    inside = levels[idx - 1] + frac * (levels[idx] - levels[idx - 1])
    below = levels[0] + (xt - knots[:, :1]) / tail_scale[:, None]
    above = levels[-1] + (xt - knots[:, -1:]) / tail_scale[:, None]
    z = torch.where(xt < knots[:, :1], below, torch.where(xt > knots[:, -1:], above, inside))
    return z.T


def robust_center_scale(X: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per column of ``X`` ``[n, d]``: the median and the quartile range / 1.349 (a normal's
    standard deviation), or the standard deviation where the column has no central spread.

    A column where half the rows or more take one value (binary-ish, mostly zero) has none.
    That includes a quartile range set by stragglers a hair off the value (decayed counts of
    1e-5 among zeros): under ``POINT_MASS_SPREAD`` of the standard deviation it is no spread
    either. Dividing by it put normal rows hundreds of units out (the card stream at 2 %
    contamination, docs/design/contamination.md, "A point mass with stragglers").

    Example:
        >>> x = np.r_[np.zeros(740), np.full(30, 1e-5), np.linspace(0.05, 1.0, 230)]
        >>> center, scale = robust_center_scale(x[:, None])
        >>> bool(scale[0] > 0.1)  # the standard deviation, not 1e-5 / 1.349
        True
    """
    center = np.median(X, 0)
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = X.std(0)
    at_median = np.equal(X, center).mean(0)
    point_mass = (scale <= 1e-6 * (np.abs(center) + 1)) | ((at_median >= 0.5) & (scale < POINT_MASS_SPREAD * std))
    return center, np.where(point_mass, std, scale)


def _robust_stats(v: NDArray[np.float64]) -> tuple[float, float]:
    """:func:`robust_center_scale` of one score part's training values (1 where they are all equal)."""
    center, scale = robust_center_scale(np.asarray(v, dtype=np.float64)[:, None])
    s = float(scale[0])
    return float(center[0]), s if math.isfinite(s) and s > 1e-12 else 1.0


def variants() -> Sequence[str]:
    return tuple(NETWORKS)
