"""Offline evaluation with the protocols of ``../shared/README.md`` against real baselines.

* **tabular** (ADBench ``.npz``): stratified 70/30 split per seed, unsupervised fit on the 70 %
  (contamination included, labels unused), ROC-AUC and PR-AUC on the 30 %.
* **smd** (server machine time series): fit on ``*_train``, score ``*_test`` row by row; each
  row with its difference to the mean of the machine's 10 previous rows, computed by the
  declared ``delta_mean`` entity feature: the worker's own code (:func:`smd_matrices`).
  Point-wise PR-AUC and F1 at a threshold from training scores only (their 99th percentile);
  the best F1 over test thresholds is reported as an oracle only.

Baselines come from scikit-learn (IsolationForest, PCA) and PyOD (ECOD); they are never
re-implemented here. Results are plain dicts; :func:`write_report` writes JSON, Markdown and
PNG plots.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from stream_ae.entities.spec import EntitySpec
from stream_ae.features.encoder import FeatureEncoder, FeatureSchema, FieldKind, FieldSpec
from stream_ae.features.featurize import RecordMeta, featurize, fit_encoder, store_for
from stream_ae.models import AutoencoderDetector
from stream_ae.scoring.threshold import Threshold

ADBENCH_SETS = ["cardio", "fault", "http", "mammography", "pendigits", "satellite", "shuttle", "smtp", "thyroid"]
SMD_MACHINES = ["machine-1-6", "machine-2-1"]
HTTP_TRAIN_CAP = 200_000
SMD_START = 1_790_000_000.0  # the rows' clock: SMD has none, one row a minute


class Scorer(Protocol):
    def fit(self, X: NDArray[Any]) -> Any: ...
    def score_samples(self, X: NDArray[Any]) -> NDArray[Any]: ...


Factory = Callable[[int], Scorer]


class IForestScorer:
    def __init__(self, seed: int) -> None:
        from sklearn.ensemble import IsolationForest

        self.model = IsolationForest(n_estimators=100, random_state=seed, n_jobs=-1)

    def fit(self, X: NDArray[Any]) -> IForestScorer:
        self.model.fit(X)
        return self

    def score_samples(self, X: NDArray[Any]) -> NDArray[Any]:
        return -self.model.score_samples(X)  # type: ignore[no-any-return]


class ECODScorer:
    def __init__(self, seed: int) -> None:
        from pyod.models.ecod import ECOD

        self.model = ECOD()

    def fit(self, X: NDArray[Any]) -> ECODScorer:
        self.model.fit(X)
        return self

    def score_samples(self, X: NDArray[Any]) -> NDArray[Any]:
        return self.model.decision_function(X)  # type: ignore[no-any-return]


class PCAScorer:
    """Reconstruction error of a PCA keeping 90 % of the variance, after standard scaling."""

    def __init__(self, seed: int) -> None:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        self.scaler, self.pca = StandardScaler(), PCA(n_components=0.9, random_state=seed)

    def fit(self, X: NDArray[Any]) -> PCAScorer:
        self.pca.fit(self.scaler.fit_transform(X))
        return self

    def score_samples(self, X: NDArray[Any]) -> NDArray[Any]:
        Z = self.scaler.transform(X)
        return ((Z - self.pca.inverse_transform(self.pca.transform(Z))) ** 2).sum(1)  # type: ignore[no-any-return]


BASELINES: dict[str, Factory] = {"iforest": IForestScorer, "ecod": ECODScorer, "pca": PCAScorer}


class BoostedIForestScorer:
    """The weakly supervised baseline: scikit-learn's gradient-boosted trees
    (``HistGradientBoostingClassifier``) trained on the labelled anomalies against every other
    training row (unlabelled rows taken as normal), plus IsolationForest on all rows for the
    anomalies no label resembles; the two are joined by the mean of their ranks. PyOD has no
    DevNet or other weakly supervised detector to stand in (its XGBOD needs every row labelled)."""

    uses_labels = True

    def __init__(self, seed: int) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

        self.boost = HistGradientBoostingClassifier(random_state=seed, early_stopping=False)
        self.forest = IsolationForest(n_estimators=100, random_state=seed, n_jobs=-1)
        self.boosted = False

    def fit(self, X: NDArray[Any], y: NDArray[Any] | None = None) -> BoostedIForestScorer:
        """Without a labelled anomaly there is nothing to boost on: IsolationForest alone."""
        known = np.zeros(len(X), dtype=np.int64) if y is None else (np.asarray(y) == 1).astype(np.int64)
        self.boosted = bool(known.any())
        if self.boosted:
            self.boost.fit(X, known)
        self.forest.fit(X)
        return self

    def score_samples(self, X: NDArray[Any]) -> NDArray[Any]:
        """Mean rank of the two scores among the rows scored together (transductive: the
        rows compete with each other, which suits the baseline, whose boosted probabilities
        of unseen rows sit far from those of the training rows they were fitted on)."""
        from scipy.stats import rankdata

        forest = rankdata(-self.forest.score_samples(X))
        if not self.boosted:
            return forest / len(X)  # type: ignore[no-any-return]
        boost = rankdata(self.boost.predict_proba(X)[:, 1])
        return (boost + forest) / (2.0 * len(X))  # type: ignore[no-any-return]


def labelled_subset(y_train: NDArray[Any], fraction: float, seed: int) -> NDArray[np.int64]:
    """ADBench's weakly supervised protocol: ``y`` for the training rows with a random
    ``fraction`` of the anomalies (at least one) labelled 1 and every other row -1."""
    out = np.full(len(y_train), -1, dtype=np.int64)
    if fraction <= 0:
        return out
    anomalies = np.flatnonzero(y_train == 1)
    k = max(1, round(fraction * len(anomalies)))
    out[np.random.default_rng(seed + 7).choice(anomalies, k, replace=False)] = 1
    return out


def detector_factory(variant: str, **hyper: Any) -> Factory:
    def make(seed: int) -> Scorer:
        return AutoencoderDetector(variant=variant, seed=seed, **hyper)

    return make


def load_adbench(data_dir: Path, name: str) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    path = next((data_dir / "adbench").glob(f"*_{name}.npz"))
    data = np.load(path, allow_pickle=False)
    return data["X"].astype(np.float32), data["y"].astype(np.int64)


def _stratified_split(y: NDArray[Any], seed: int, train: float = 0.7) -> tuple[NDArray[Any], NDArray[Any]]:
    rng = np.random.default_rng(seed)
    tr: list[NDArray[Any]] = []
    te: list[NDArray[Any]] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = round(len(idx) * train)
        tr.append(idx[:cut])
        te.append(idx[cut:])
    return np.concatenate(tr), np.concatenate(te)


def roc_pr(y: NDArray[Any], s: NDArray[Any]) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


@dataclass
class TabularResult:
    dataset: str
    method: str
    seed: int
    roc_auc: float
    pr_auc: float
    fit_seconds: float
    score_seconds: float
    n_train: int
    n_test: int
    # per target false-alarm rate ("0.01", "0.001"): the realised rate on the test set's normal
    # rows and the recall of its anomalies, at the threshold calibrated on the held-out slice of
    # the (contaminated) training part; our detectors only
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)


CALIBRATION_RATES = (0.01, 0.001)


def calibration_figures(model: Scorer, y: NDArray[Any], s: NDArray[Any]) -> dict[str, dict[str, float]]:
    """Realised false-alarm rate on the normal rows and recall, per target rate, for a detector
    that kept its calibration scores (others: nothing)."""
    cal = getattr(model, "calibration_scores_", None)
    if cal is None:
        return {}
    method = getattr(getattr(model, "hyper", None), "threshold_method", "auto")
    out = {}
    for rate in CALIBRATION_RATES:
        t = Threshold.fit(cal, rate, method=method).value  # type: ignore[arg-type]
        out[str(rate)] = {
            "false_alarm_rate": float((s[y == 0] > t).mean()),
            "recall": float((s[y == 1] > t).mean()),
            "threshold": float(t),
        }
    return out


def evaluate_tabular(
    data_dir: Path,
    methods: dict[str, Factory],
    datasets: Iterable[str] = ADBENCH_SETS,
    seeds: Iterable[int] = (0, 1, 2),
    on_result: Callable[[TabularResult, NDArray[Any], NDArray[Any]], None] | None = None,
    on_codes: Callable[[TabularResult, NDArray[Any], NDArray[Any]], None] | None = None,
    labelled: float = 0.0,
) -> list[TabularResult]:
    """The ADBench protocol of ``../shared/README.md`` for each method, dataset and seed.
    ``on_result(result, y_test, scores)`` after each; ``on_codes(result, y_test, codes)`` with
    the test rows' latent codes, for a model that has them (ours). With ``labelled`` > 0 the
    weakly supervised protocol: that fraction of the training anomalies is labelled
    (:func:`labelled_subset`) and every method that takes labels (``fit(X, y)``: ours, with
    ``labelled`` in its name, and :class:`BoostedIForestScorer`) gets them."""
    results: list[TabularResult] = []
    for name in datasets:
        X, y = load_adbench(data_dir, name)
        for seed in seeds:
            tr, te = _stratified_split(y, seed)
            if name == "http" and len(tr) > HTTP_TRAIN_CAP:
                tr = np.random.default_rng(seed).choice(tr, HTTP_TRAIN_CAP, replace=False)
            y_known = labelled_subset(y[tr], labelled, seed)
            for method, make in methods.items():
                t0 = time.perf_counter()
                model = make(seed)
                if labelled > 0 and (getattr(model, "uses_labels", False) or isinstance(model, AutoencoderDetector)):
                    model.fit(X[tr], y_known)  # type: ignore[call-arg]
                else:
                    model.fit(X[tr])
                t1 = time.perf_counter()
                s = np.asarray(model.score_samples(X[te]), dtype=np.float64)
                t2 = time.perf_counter()
                roc, pr = roc_pr(y[te], s)
                res = TabularResult(name, method, seed, roc, pr, t1 - t0, t2 - t1, len(tr), len(te))
                res.calibration = calibration_figures(model, y[te], s)
                results.append(res)
                if on_result is not None:
                    on_result(res, y[te], s)
                if on_codes is not None and hasattr(model, "embed"):
                    on_codes(res, y[te], model.embed(X[te]))
    return results


def summarise(results: list[TabularResult]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> dataset -> mean ROC/PR over seeds, plus a ``mean`` row over datasets."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r.method for r in results):
        rows = [r for r in results if r.method == method]
        per: dict[str, dict[str, float]] = {}
        for ds in dict.fromkeys(r.dataset for r in rows):
            sel = [r for r in rows if r.dataset == ds]
            per[ds] = {
                "roc_auc": float(np.mean([r.roc_auc for r in sel])),
                "pr_auc": float(np.mean([r.pr_auc for r in sel])),
                "fit_seconds": float(np.mean([r.fit_seconds for r in sel])),
            }
            for rate in (str(r) for r in CALIBRATION_RATES):
                if all(rate in r.calibration for r in sel):
                    for k in ("false_alarm_rate", "recall"):
                        per[ds][f"{k}@{rate}"] = float(np.mean([r.calibration[rate][k] for r in sel]))
        keys = [k for k in next(iter(per.values())) if all(k in v for v in per.values())]
        per["mean"] = {k: float(np.mean([v[k] for v in per.values()])) for k in keys}
        table[method] = per
    return table


# -- SMD ------------------------------------------------------------------------------------
def load_smd(data_dir: Path, machine: str) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    def read(part: str) -> NDArray[Any]:
        with gzip.open(data_dir / "smd" / f"{machine}_{part}.npy.gz") as fh:
            return np.load(fh, allow_pickle=False)  # type: ignore[no-any-return]

    train, test = read("train").astype(np.float32), read("test").astype(np.float32)
    return train, test, read("test_label").astype(np.int64)


def smd_schema(n_metrics: int, rows: int = 10) -> FeatureSchema:
    """A server's metric rows as events: ``m0..`` numeric, the minute's ``ts``, the machine as
    the entity, and each metric minus the mean of the machine's previous ``rows`` rows (the
    declared ``delta_mean`` aggregate: what the worker computes from its state)."""
    names = [f"m{j}" for j in range(n_metrics)]
    return FeatureSchema(
        tuple(FieldSpec(n, FieldKind.NUMERIC) for n in names),
        time_field="ts",
        entity=EntitySpec.from_dict(
            {"field": "machine", "ttl": "30d", "features": [{"delta_mean": names, "rows": rows}]}
        ),
    )


def smd_events(X: NDArray[np.float32], machine: str, first_minute: int = 0) -> list[dict[str, Any]]:
    """One event per row, a minute apart (SMD's sampling)."""
    return [
        {
            "machine": machine,
            "ts": SMD_START + 60.0 * (first_minute + i),
            **{f"m{j}": float(v) for j, v in enumerate(row)},
        }
        for i, row in enumerate(X.tolist())
    ]


def smd_matrices(
    train: NDArray[np.float32], test: NDArray[np.float32], machine: str, window: int = 10
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Every method's input: the rows through the declared schema, train then test replayed in
    time order through one entity state (the test period starts with the training period's
    last rows as its history, as a worker that ran through both would)."""
    encoder = FeatureEncoder(smd_schema(train.shape[1], window))
    events = smd_events(train, machine) + smd_events(test, machine, first_minute=len(train))
    Xtr = fit_encoder(encoder, events[: len(train)], RecordMeta.for_file(events[: len(train)])).X
    both = featurize(encoder, events, RecordMeta.for_file(events), store_for(encoder)).batch
    assert len(both.ok) == len(events), "SMD rows are all numbers"
    return Xtr, both.X[len(train) :]


def best_f1(y: NDArray[Any], s: NDArray[Any]) -> float:
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(y, s)
    f = 2 * p * r / np.clip(p + r, 1e-12, None)
    return float(f.max())


def f1_at(y: NDArray[Any], s: NDArray[Any], threshold: float) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, (s > threshold).astype(int), zero_division=0))


@dataclass
class SMDScores:
    """One method fitted on one SMD machine's training rows: its scores of them and of the
    test rows, and the test rows' labels."""

    machine: str
    method: str
    train: NDArray[np.float64]
    test: NDArray[np.float64]
    label: NDArray[np.int64]


def smd_scores(
    data_dir: Path, methods: dict[str, Factory], machines: Iterable[str] = SMD_MACHINES, window: int = 10
) -> Iterator[SMDScores]:
    """Every method (seed 0) fitted on each machine's training rows through the worker's
    features (:func:`smd_matrices`), scoring the training and the test rows."""
    for machine in machines:
        train, test, label = load_smd(data_dir, machine)
        Xtr, Xte = smd_matrices(train, test, machine, window)
        for method, make in methods.items():
            model = make(0)
            model.fit(Xtr)
            s_tr = np.asarray(model.score_samples(Xtr), dtype=np.float64)
            yield SMDScores(machine, method, s_tr, np.asarray(model.score_samples(Xte), dtype=np.float64), label)


def evaluate_smd(
    data_dir: Path, methods: dict[str, Factory], machines: Iterable[str] = SMD_MACHINES, window: int = 10
) -> list[dict[str, Any]]:
    """Point-wise PR-AUC, F1 at the training p99 and oracle best-F1, without point adjustment."""
    out: list[dict[str, Any]] = []
    for r in smd_scores(data_dir, methods, machines, window):
        out.append(
            {
                "machine": r.machine,
                "method": r.method,
                "pr_auc": roc_pr(r.label, r.test)[1],
                "f1_p99": f1_at(r.label, r.test, float(np.quantile(r.train, 0.99))),
                "oracle_best_f1": best_f1(r.label, r.test),
            }
        )
    return out


def write_report(
    out_dir: Path,
    summary: dict[str, Any],
    curves: dict[tuple[str, str], tuple[NDArray[Any], NDArray[Any]]] | None = None,
    codes: dict[tuple[str, str], tuple[NDArray[Any], NDArray[Any]]] | None = None,
    thresholds: dict[tuple[str, str], float] | None = None,
) -> None:
    """``report.json``, ``report.md`` and, given curves, ROC/PR and histogram PNGs; given the
    test rows' latent codes, ``<set>-codes.png``: their 2-D PCA projection coloured by label."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2))
    lines = ["# stream-ae offline evaluation", ""]
    tab = summary.get("tabular", {})
    bar = summary.get("bar_best_of_iforest_ecod")
    if bar:
        lines += [
            f"Bar (per-set best of IForest and ECOD): ROC-AUC {bar['roc_auc']:.3f}, PR-AUC {bar['pr_auc']:.3f}",
            "",
        ]
    if tab:
        methods = list(tab)
        sets = list(next(iter(tab.values())))
        lines += ["| set | " + " | ".join(f"{m} ROC / PR" for m in methods) + " |", "|---|" + "---|" * len(methods)]
        for ds in sets:
            cells = [f"{tab[m][ds]['roc_auc']:.3f} / {tab[m][ds]['pr_auc']:.3f}" for m in methods]
            lines.append(f"| {ds} | " + " | ".join(cells) + " |")
        lines.append("")
        calibrated = [m for m in methods if "false_alarm_rate@0.01" in tab[m]["mean"]]
        for m in calibrated:  # the calibration column: realised rate on the normal test rows, recall
            lines += [
                f"{m}: realised false-alarm rate on normal test rows / recall, at the calibrated threshold",
                "",
                "| set | target 0.01 | target 0.001 |",
                "|---|---|---|",
            ]
            for ds in sets:
                row = tab[m][ds]
                cells = [f"{row[f'false_alarm_rate@{r}']:.4f} / {row[f'recall@{r}']:.3f}" for r in ("0.01", "0.001")]
                lines.append(f"| {ds} | " + " | ".join(cells) + " |")
            lines.append("")
    for m, row in summary.get("smd_mean", {}).items():
        lines.append(
            f"- SMD mean of machines, {m}: PR-AUC {row['pr_auc']:.3f}, F1@train-p99 {row['f1_p99']:.3f}, "
            f"oracle best-F1 {row['oracle_best_f1']:.3f}"
        )
    for row in summary.get("smd", []):
        lines.append(
            f"- SMD {row['machine']} {row['method']}: PR-AUC {row['pr_auc']:.3f}, "
            f"F1@train-p99 {row['f1_p99']:.3f}, oracle best-F1 {row['oracle_best_f1']:.3f}"
        )
    weak = summary.get("weakly_supervised", {})
    if weak:
        lines += [
            "Weakly supervised (a fraction of the training anomalies labelled), mean over sets:",
            "",
            "| labelled | ours ROC / PR | baseline ROC / PR | unsupervised ROC / PR |",
            "|---|---|---|---|",
        ]
        for frac, row in weak.items():
            lines.append(
                f"| {frac} | {row['roc_auc']:.3f} / {row['pr_auc']:.3f} | {row['baseline_roc_auc']:.3f} / "
                f"{row['baseline_pr_auc']:.3f} | {row['unsupervised_roc_auc']:.3f} / {row['unsupervised_pr_auc']:.3f} |"
            )
        lines.append("")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    if curves:
        _plot_curves(out_dir, curves, thresholds or {})
    if codes:
        _plot_codes(out_dir, codes)


def pca_2d(codes: NDArray[Any]) -> NDArray[np.float64]:
    """The first two principal components of ``codes`` (rows x latent size)."""
    c = np.asarray(codes, dtype=np.float64)
    c = c - c.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return np.asarray(c @ vt[:2].T, dtype=np.float64)


def _plot_codes(out_dir: Path, codes: dict[tuple[str, str], tuple[NDArray[Any], NDArray[Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for ds in dict.fromkeys(d for d, _ in codes):
        mine = [(m, yc) for (d, m), yc in codes.items() if d == ds]
        fig, axes = plt.subplots(1, len(mine), figsize=(5 * len(mine), 4.2), squeeze=False)
        for ax, (method, (y, c)) in zip(axes[0], mine, strict=True):
            p = pca_2d(c)
            ax.scatter(p[y == 0, 0], p[y == 0, 1], s=3, alpha=0.4, label="normal")
            ax.scatter(p[y == 1, 0], p[y == 1, 1], s=5, alpha=0.7, label="anomaly")
            ax.set(title=f"{ds}: {method} latent codes (PCA)", xlabel="PC 1", ylabel="PC 2")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / f"{ds}-codes.png", dpi=90)
        plt.close(fig)


def _plot_curves(
    out_dir: Path,
    curves: dict[tuple[str, str], tuple[NDArray[Any], NDArray[Any]]],
    thresholds: dict[tuple[str, str], float],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    for ds in dict.fromkeys(d for d, _ in curves):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for (d, method), (y, s) in curves.items():
            if d != ds:
                continue
            fpr, tpr, _ = roc_curve(y, s)
            p, r, _ = precision_recall_curve(y, s)
            axes[0].plot(fpr, tpr, label=method)
            axes[1].plot(r, p, label=method)
            if method.startswith("ncae"):
                axes[2].hist(s[y == 0], bins=60, alpha=0.6, density=True, label="normal")
                axes[2].hist(s[y == 1], bins=60, alpha=0.6, density=True, label="anomaly")
                t = thresholds.get((d, method))
                if t is not None:
                    axes[2].axvline(t, color="k", ls="--", lw=1, label="threshold at 1 % (calibrated in training)")
        axes[0].set(title=f"{ds}: ROC", xlabel="false positive rate", ylabel="true positive rate")
        axes[1].set(title=f"{ds}: precision-recall", xlabel="recall", ylabel="precision")
        axes[2].set(title=f"{ds}: ncae scores", xlabel="score")
        for ax in axes:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / f"{ds}.png", dpi=90)
        plt.close(fig)


def run_evaluation(
    data_dir: Path,
    out_dir: Path,
    datasets: str,
    variants: list[str],
    seeds: list[int],
    smd: bool,
    console: Any = None,
    options: dict[str, Any] | None = None,
    baselines: bool = True,
) -> dict[str, Any]:
    """The whole offline evaluation: ADBench (+ SMD) for our variants and, with ``baselines``,
    IsolationForest, ECOD and PCA. ``options`` are detector hyper-parameters given to every
    variant (e.g. ``{"net_options": {"trim": 0.0}}`` for an ablation)."""
    say = console.print if console is not None else print
    sets = ADBENCH_SETS if datasets == "all" else [] if datasets == "none" else datasets.split(",")
    methods: dict[str, Factory] = {v: detector_factory(v, device="cpu", **(options or {})) for v in variants}
    if baselines:
        methods.update(BASELINES)
    curves: dict[tuple[str, str], tuple[NDArray[Any], NDArray[Any]]] = {}
    thresholds: dict[tuple[str, str], float] = {}

    def on_result(r: TabularResult, y: NDArray[Any], s: NDArray[Any]) -> None:
        say(f"{r.dataset:12s} seed {r.seed} {r.method:8s} ROC {r.roc_auc:.3f} PR {r.pr_auc:.3f} ({r.fit_seconds:.1f}s)")
        if r.seed == seeds[0]:
            curves[(r.dataset, r.method)] = (y, s)
            if "0.01" in r.calibration:
                thresholds[(r.dataset, r.method)] = r.calibration["0.01"]["threshold"]

    codes: dict[tuple[str, str], tuple[NDArray[Any], NDArray[Any]]] = {}

    def on_codes(r: TabularResult, y: NDArray[Any], c: NDArray[Any]) -> None:
        if r.seed == seeds[0]:
            codes[(r.dataset, r.method)] = (y, c)

    results = evaluate_tabular(data_dir, methods, sets, seeds, on_result=on_result, on_codes=on_codes)
    table = summarise(results)
    summary: dict[str, Any] = {"tabular": table, "seeds": seeds, "options": options or {}}
    if baselines and table:
        best = {
            ds: {k: max(table["iforest"][ds][k], table["ecod"][ds][k]) for k in ("roc_auc", "pr_auc")}
            for ds in table["iforest"]
            if ds != "mean"
        }
        summary["bar_best_of_iforest_ecod"] = {
            k: float(np.mean([b[k] for b in best.values()])) for k in ("roc_auc", "pr_auc")
        }
    if smd:
        rows = evaluate_smd(data_dir, methods)
        summary["smd"] = rows
        summary["smd_mean"] = {
            m: {
                k: float(np.mean([r[k] for r in rows if r["method"] == m]))
                for k in ("pr_auc", "f1_p99", "oracle_best_f1")
            }
            for m in methods
        }
    write_report(out_dir, summary, curves, codes, thresholds)
    for m, per in table.items():
        say(f"MEAN {m:8s} ROC {per['mean']['roc_auc']:.3f} PR {per['mean']['pr_auc']:.3f}")
    if "bar_best_of_iforest_ecod" in summary:
        bar = summary["bar_best_of_iforest_ecod"]
        say(f"bar (per-set best of IForest/ECOD): ROC {bar['roc_auc']:.3f} PR {bar['pr_auc']:.3f}")
    return summary


def run_weak_evaluation(
    data_dir: Path,
    out_dir: Path,
    datasets: str,
    variant: str,
    seeds: list[int],
    fractions: list[float],
    console: Any = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """ADBench's weakly supervised protocol (``stream-ae evaluate --labelled-anomalies``): for
    each fraction, our ``variant`` fitted with that fraction of the training anomalies labelled
    against :class:`BoostedIForestScorer` given the same labels, and against our variant
    unsupervised (the same splits and seeds). The summary's ``weakly_supervised`` holds, per
    fraction, the mean ROC-AUC and PR-AUC of the three and the two targets' margins."""
    say = console.print if console is not None else print
    sets = ADBENCH_SETS if datasets == "all" else datasets.split(",")
    make = detector_factory(variant, device="cpu", **(options or {}))

    def on_result(r: TabularResult, y: NDArray[Any], s: NDArray[Any]) -> None:
        say(
            f"{r.dataset:12s} seed {r.seed} {r.method:22s} ROC {r.roc_auc:.3f} PR {r.pr_auc:.3f} ({r.fit_seconds:.1f}s)"
        )

    results = evaluate_tabular(data_dir, {variant: make}, sets, seeds, on_result=on_result)
    for frac in fractions:
        methods: dict[str, Factory] = {f"{variant}@{frac:g}": make, f"gbdt+iforest@{frac:g}": BoostedIForestScorer}
        results += evaluate_tabular(data_dir, methods, sets, seeds, on_result=on_result, labelled=frac)
    table = summarise(results)
    weak: dict[str, dict[str, float]] = {}
    for frac in fractions:
        ours, base, unsup = (
            table[f"{variant}@{frac:g}"]["mean"],
            table[f"gbdt+iforest@{frac:g}"]["mean"],
            table[variant]["mean"],
        )
        weak[f"{frac:g}"] = {
            "roc_auc": ours["roc_auc"],
            "pr_auc": ours["pr_auc"],
            "baseline_roc_auc": base["roc_auc"],
            "baseline_pr_auc": base["pr_auc"],
            "unsupervised_roc_auc": unsup["roc_auc"],
            "unsupervised_pr_auc": unsup["pr_auc"],
            "pr_gain_over_unsupervised": ours["pr_auc"] - unsup["pr_auc"],
            "pr_margin_over_baseline": ours["pr_auc"] - base["pr_auc"],
        }
        row = weak[f"{frac:g}"]
        say(
            f"{frac:g} labelled: {variant} ROC {row['roc_auc']:.3f} PR {row['pr_auc']:.3f} | baseline ROC "
            f"{row['baseline_roc_auc']:.3f} PR {row['baseline_pr_auc']:.3f} | "
            f"unsupervised PR {row['unsupervised_pr_auc']:.3f}"
        )
    summary = {"tabular": table, "seeds": seeds, "options": options or {}, "weakly_supervised": weak}
    write_report(out_dir, summary)
    return summary
