"""The contamination sweep: how a detector's ranking holds when its training rows hold some of
the anomalies it must find, unlabelled (``stream-ae evaluate --contamination``).

Protocol, per set and seed (one split for every level, so the curves compare like with like):

* the set's normal rows are shuffled and halved: one half trains (at most ``max_train`` rows),
  the other is the test set's normal part (at most ``max_test`` rows);
* the anomalies are shuffled and halved: the second half is the test set's anomalous part,
  the same at every level; the first half is the pool the training rows are contaminated from;
* at level ``c`` the training rows are the normal half plus ``round(c / (1 - c) * n_normal)``
  rows of the pool (all of it when the pool is smaller: the level actually reached is reported);
* every method is fitted on the training rows without labels and scored on the test rows:
  PR-AUC (average precision) and ROC-AUC.

Our detector is reported whole and per score part (``ncae:neighbour``, ``ncae:tail``,
``ncae:density``: each part's raw score from :meth:`AutoencoderDetector.component_scores`),
beside IsolationForest and ECOD, so that the part that breaks can be named.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(size=(600, 3)), rng.normal(4.0, 0.1, size=(40, 3))]).astype("float32")
    >>> y = np.r_[np.zeros(600), np.ones(40)].astype(int)
    >>> split = contamination_split(y, 0.05, seed=0)
    >>> len(split.test), round(split.level, 3), int(y[split.train].sum())
    (320, 0.051, 16)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.features.encoder import FeatureEncoder
from stream_ae.features.featurize import RecordMeta, featurize_file, fit_encoder
from stream_ae.models import AutoencoderDetector
from stream_ae.tools.synthetic import CARD_SCHEMA, CardStream
from trainer.evaluate import ADBENCH_SETS, ECODScorer, Factory, IForestScorer, load_adbench, roc_pr

LEVELS = (0.0, 0.002, 0.005, 0.02, 0.05)
SETS = [*ADBENCH_SETS, "card"]


@dataclass(frozen=True)
class LabelledSet:
    """A set's rows ``X``, labels ``y`` (1 = anomaly) and, where its columns come from a feature
    schema, the encoder's ``scale_floor`` (the trainer fits the detector with it)."""

    X: NDArray[np.float32]
    y: NDArray[np.int64]
    scale_floor: NDArray[np.float64] | None = None


def card_matrix(n: int = 30_000, anomaly_rate: float = 0.03, seed: int = 0) -> LabelledSet:
    """The synthetic card stream as a labelled matrix: ``n`` payments with their frauds, the
    features of ``CARD_SCHEMA`` (the demo's, entity features included) computed by replaying the
    payments through the entity state in order, as the worker would; the encoder is fitted on
    the normal payments. The frauds of every kind are in it, bursts too."""
    events, labels = CardStream(seed=seed, anomaly_rate=anomaly_rate).next(n)
    encoder = FeatureEncoder(CARD_SCHEMA)
    normal = [e for e, lab in zip(events, labels, strict=True) if lab == 0]
    fit_encoder(encoder, normal, RecordMeta.for_file(normal, None))
    batch = featurize_file(encoder, events).batch
    y = np.asarray(labels)[batch.ok].astype(np.int64)
    return LabelledSet(batch.X.astype(np.float32), y, encoder.scale_floor())


def load_set(data_dir: Path, name: str) -> LabelledSet:
    """An ADBench set from ``data_dir``, or ``card``: :func:`card_matrix` (needs no data)."""
    return card_matrix() if name == "card" else LabelledSet(*load_adbench(data_dir, name))


@dataclass(frozen=True)
class ContaminationSplit:
    """Row indices of one set at one level: ``train`` (unlabelled), ``test``; ``level`` is the
    share of anomalies in ``train`` actually reached (below the asked one when the pool ran out)."""

    train: NDArray[np.int64]
    test: NDArray[np.int64]
    level: float


def contamination_split(
    y: NDArray[Any], level: float, seed: int, max_train: int = 20_000, max_test: int = 50_000
) -> ContaminationSplit:
    """The split of the module's protocol for labels ``y`` (1 = anomaly)."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    anomalous = rng.permutation(np.flatnonzero(y == 1))
    half = len(normal) // 2
    train_normal, test_normal = normal[:half][:max_train], normal[half:][:max_test]
    pool, test_anomalous = anomalous[: len(anomalous) // 2], anomalous[len(anomalous) // 2 :]
    k = min(len(pool), round(level / (1.0 - level) * len(train_normal))) if level > 0 else 0
    train = np.concatenate([train_normal, pool[:k]])
    return ContaminationSplit(
        train=rng.permutation(train), test=np.concatenate([test_normal, test_anomalous]), level=k / len(train)
    )


@dataclass
class SweepResult:
    dataset: str
    seed: int
    level: float  # asked
    reached: float  # the share of anomalies the training rows held
    method: str
    roc_auc: float
    pr_auc: float
    fit_seconds: float


def _methods(options: dict[str, Any]) -> dict[str, Factory]:
    return {
        "ncae": lambda seed: AutoencoderDetector("ncae", seed=seed, device="cpu", **options),
        "iforest": IForestScorer,
        "ecod": ECODScorer,
    }


def sweep(
    data_dir: Path,
    datasets: Iterable[str] = SETS,
    levels: Sequence[float] = LEVELS,
    seeds: Iterable[int] = (0,),
    options: dict[str, Any] | None = None,
    on_result: Callable[[SweepResult], None] | None = None,
    max_train: int = 20_000,
) -> list[SweepResult]:
    """Every set, seed, level and method of the protocol; ``options`` are our detector's
    hyper-parameters. The NCAE's parts are scored from the same fitted model as its whole."""
    results: list[SweepResult] = []
    methods = _methods(options or {})
    for name in datasets:
        data = load_set(data_dir, name)
        X, y = data.X, data.y
        for seed in seeds:
            previous: tuple[int, list[SweepResult]] = (-1, [])
            for level in levels:
                split = contamination_split(y, level, seed, max_train=max_train)
                y_test = y[split.test]
                if len(split.train) == previous[0]:  # the pool ran out: the same rows as the last level
                    for r in previous[1]:
                        results.append(replace(r, level=level))
                        if on_result is not None:
                            on_result(results[-1])
                    continue
                previous = (len(split.train), [])
                for method, make in methods.items():
                    t0 = time.perf_counter()
                    model = make(seed)
                    if isinstance(model, AutoencoderDetector):  # as the trainer fits it
                        model.fit(X[split.train], scale_floor=data.scale_floor)
                    else:
                        model.fit(X[split.train])
                    seconds = time.perf_counter() - t0
                    scored: dict[str, NDArray[Any]] = {method: np.asarray(model.score_samples(X[split.test]))}
                    if isinstance(model, AutoencoderDetector):
                        parts = model.component_scores(X[split.test])
                        scored.update({f"{method}:{p}": parts[p] for p in model.hyper.score_weights if p in parts})
                    for label, s in scored.items():
                        roc, pr = roc_pr(y_test, s)
                        r = SweepResult(name, seed, level, split.level, label, roc, pr, seconds)
                        results.append(r)
                        previous[1].append(r)
                        if on_result is not None:
                            on_result(r)
    return results


def summarise_sweep(results: list[SweepResult]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> level -> mean PR-AUC and ROC-AUC over sets and seeds, plus ``drop``: the mean
    PR-AUC at that level minus the clean one."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r.method for r in results):
        rows = [r for r in results if r.method == method]
        per: dict[str, dict[str, float]] = {}
        for level in sorted({r.level for r in rows}):
            sel = [r for r in rows if r.level == level]
            per[f"{level:g}"] = {
                "pr_auc": float(np.mean([r.pr_auc for r in sel])),
                "roc_auc": float(np.mean([r.roc_auc for r in sel])),
                "reached": float(np.mean([r.reached for r in sel])),
            }
        clean = per.get("0", {}).get("pr_auc")
        for row in per.values():
            row["drop"] = row["pr_auc"] - clean if clean is not None else float("nan")
        table[method] = per
    return table


def write_sweep_report(
    out_dir: Path, results: list[SweepResult], options: dict[str, Any], max_train: int = 20_000
) -> dict[str, Any]:
    """``contamination.json`` (every result and the summary), ``contamination.md`` and
    ``contamination.png`` (mean PR-AUC against the level, per method; one panel per set)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summarise_sweep(results)
    summary = {
        "options": options, "max_train": max_train, "summary": table, "results": [asdict(r) for r in results]
    }  # fmt: skip
    (out_dir / "contamination.json").write_text(json.dumps(summary, indent=2))
    levels = list(next(iter(table.values()))) if table else []
    lines = [
        "# Contamination sweep",
        "",
        "Mean PR-AUC over sets and seeds (ROC-AUC in brackets) by the share of anomalies in the training rows "
        f"(at most {max_train:,} normal training rows per set).",
        "",
        "| method | " + " | ".join(levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for method, per in table.items():
        lines.append(
            f"| {method} | "
            + " | ".join(f"{per[lv]['pr_auc']:.3f} ({per[lv]['roc_auc']:.3f})" if lv in per else "" for lv in levels)
            + " |"
        )
    sets = list(dict.fromkeys(r.dataset for r in results))
    lines += ["", "Per set, PR-AUC clean → at the highest level (share reached):", ""]
    for ds in sets:
        cells = []
        for method in table:
            sel = [r for r in results if r.dataset == ds and r.method == method]
            lo, hi = min(r.level for r in sel), max(r.level for r in sel)
            clean = np.mean([r.pr_auc for r in sel if r.level == lo])
            dirty = np.mean([r.pr_auc for r in sel if r.level == hi])
            reached = np.mean([r.reached for r in sel if r.level == hi])
            cells.append(f"{method} {clean:.3f} → {dirty:.3f}")
        lines.append(f"- {ds} ({reached:.2%} reached): " + ", ".join(cells))
    (out_dir / "contamination.md").write_text("\n".join(lines) + "\n")
    _plot(out_dir / "contamination.png", results, sets)
    return summary


def _plot(path: Path, results: list[SweepResult], sets: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in results))
    panels = ["mean of sets", *sets]
    cols = min(5, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        for method in methods:
            sel = [r for r in results if r.method == method and (panel == "mean of sets" or r.dataset == panel)]
            levels = sorted({r.level for r in sel})
            pr = [np.mean([r.pr_auc for r in sel if r.level == lv]) for lv in levels]
            style = "--" if ":" in method else "-"
            ax.plot([100 * lv for lv in levels], pr, style, marker="o", ms=3, label=method)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("anomalies in training, %", fontsize=8)
        ax.set_ylabel("PR-AUC", fontsize=8)
        ax.set_ylim(0, 1.02)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
