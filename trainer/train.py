"""Training entry points shared by the CLI and the trainer service.

Example:
    >>> from stream_ae.tools.synthetic import transactions
    >>> events, _ = transactions(2000, seed=0)
    >>> fitted = fit_events(events, variant="ae", max_steps=100, min_steps=100)
    >>> fitted.encoder.n_features == fitted.detector.n_features_in_
    True
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_ae.features.encoder import Event, FeatureEncoder, FeatureSchema
from stream_ae.features.featurize import RecordMeta, fit_encoder
from stream_ae.input.verdicts import LABEL_VALUE
from stream_ae.lifecycle.artifacts import fingerprint, save_artifact
from stream_ae.models import AutoencoderDetector
from stream_ae.models.detector import ProgressFn


@dataclass
class FittedModel:
    detector: AutoencoderDetector
    encoder: FeatureEncoder | None
    X: NDArray[np.float32]

    def save(self, path: Path, version: str | None = None, metrics: dict[str, Any] | None = None) -> Path:
        return save_artifact(
            path,
            self.detector,
            self.encoder,
            version=version,
            metrics=metrics,
            data_fingerprint=fingerprint(self.X),
        )


def fit_events(
    events: Sequence[Event],
    *,
    schema: FeatureSchema | None = None,
    meta: RecordMeta | None = None,
    key_field: str | None = None,
    id_field: str | None = "id",
    time_field: str | None = "ts",
    variant: str = "ncae",
    device: str = "auto",
    progress: ProgressFn | None = None,
    init_from: AutoencoderDetector | None = None,
    labels: NDArray[Any] | None = None,
    **hyper: Any,
) -> FittedModel:
    """Infer (or take) a schema, fit the encoder (replaying the events through the entity
    state when the schema declares entity features), encode, fit the detector. ``meta`` gives
    the events' Kafka coordinates, keys and timestamps (the trainer's window); a file's rows
    are one partition in file order, keyed by ``key_field``. ``labels``, one per event
    (:func:`parse_labels`), go to :meth:`AutoencoderDetector.fit` for the rows that encode."""
    encoder = FeatureEncoder(schema or infer_schema(events, id_field, time_field))
    batch = fit_encoder(encoder, events, meta or RecordMeta.for_file(events, key_field))
    detector = AutoencoderDetector(variant=variant, device=device, **hyper)
    y = None if labels is None else np.asarray(labels)[batch.ok]
    detector.fit(batch.X, y, progress=progress, init_from=init_from, scale_floor=encoder.scale_floor())
    return FittedModel(detector, encoder, batch.X)


def infer_schema(events: Sequence[Event], id_field: str | None = "id", time_field: str | None = "ts") -> FeatureSchema:
    """A schema inferred from the first events (``id_field`` left out, ``time_field`` a timestamp)."""
    present = set().union(*(e.keys() for e in events[:1000]))
    return FeatureSchema.infer(
        events[:5000],
        id_field=id_field if id_field in present else None,
        time_field=time_field if time_field in present else None,
    )


def fit_matrix(
    X: NDArray[Any],
    *,
    variant: str = "ncae",
    device: str = "auto",
    progress: ProgressFn | None = None,
    labels: NDArray[Any] | None = None,
    **hyper: Any,
) -> FittedModel:
    detector = AutoencoderDetector(variant=variant, device=device, **hyper).fit(X, labels, progress=progress)
    return FittedModel(detector, None, np.asarray(X, dtype=np.float32))


# a verdict's words (anomaly/normal) and the usual spellings of 1 and 0
LABEL_WORDS = {"1": 1.0, "true": 1.0, "0": 0.0, "false": 0.0} | {w: float(v) for w, v in LABEL_VALUE.items()}


class LabelError(ValueError):
    """A label column holds a value that is not a label."""


def parse_labels(values: Sequence[Any]) -> NDArray[np.float64]:
    """A file's label column as :meth:`AutoencoderDetector.fit` takes it: 1 a known anomaly,
    0 a known normal, NaN unlabelled. A known anomaly is 1, ``true`` or ``anomaly``; a known
    normal 0, ``false`` or ``normal``; a blank, ``null``, NaN or -1 is no label. Anything else
    is a :class:`LabelError` naming the first such row.

    Example:
        >>> parse_labels(["1", "", "normal", None, -1, True]).tolist()
        [1.0, nan, 0.0, nan, nan, 1.0]
    """
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        word = str(v).strip().lower()
        if word.endswith(".0"):
            word = word[:-2]
        if word in ("", "-1", "nan", "null", "none"):
            continue
        if word not in LABEL_WORDS:
            raise LabelError(f"row {i}: label {v!r} is not 1/0, true/false, anomaly/normal or blank")
        out[i] = LABEL_WORDS[word]
    return out


def split_label_field(events: list[dict[str, Any]], field: str) -> NDArray[np.float64]:
    """Take the label field out of each event (it must not become a feature); its values parsed."""
    return parse_labels([e.pop(field, None) for e in events])


def read_events(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """JSON lines: one event object per line."""
    out: list[dict[str, Any]] = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
                if limit and len(out) >= limit:
                    break
    return out


def read_matrix(path: Path, label_column: str | None = None) -> tuple[NDArray[np.float32], NDArray[Any] | None]:
    """A numeric matrix from ``.npz`` (array ``X``) or a CSV with a header, and with
    ``label_column`` its labels (:func:`parse_labels`): the ``.npz`` array or the CSV column of
    that name, which is then not a feature. A missing label column is a :class:`LabelError`."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            X = data["X"].astype(np.float32)
            if label_column is not None and label_column not in data.files:
                raise LabelError(f"no array {label_column!r}")
            return X, (None if label_column is None else parse_labels(data[label_column].tolist()))
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if label_column is not None and rows and label_column not in rows[0]:
        raise LabelError(f"no column {label_column!r}")
    cols = [c for c in rows[0] if c != label_column]
    X = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
    return X, (None if label_column is None else parse_labels([r[label_column] for r in rows]))
