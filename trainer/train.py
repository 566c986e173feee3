"""Training entry points shared by the CLI and the trainer service.

Example:
    >>> from stream_ae.synthetic import transactions
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

from stream_ae.artifacts import fingerprint, save_artifact
from stream_ae.features import Event, FeatureEncoder, FeatureSchema
from stream_ae.featurize import RecordMeta, fit_encoder
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
    **hyper: Any,
) -> FittedModel:
    """Infer (or take) a schema, fit the encoder (replaying the events through the entity
    state when the schema declares entity features), encode, fit the detector. ``meta`` gives
    the events' Kafka coordinates, keys and timestamps (the trainer's window); a file's rows
    are one partition in file order, keyed by ``key_field``."""
    encoder = FeatureEncoder(schema or infer_schema(events, id_field, time_field))
    X = fit_encoder(encoder, events, meta or RecordMeta.for_file(events, key_field)).X
    detector = AutoencoderDetector(variant=variant, device=device, **hyper)
    detector.fit(X, progress=progress, init_from=init_from)
    return FittedModel(detector, encoder, X)


def infer_schema(events: Sequence[Event], id_field: str | None = "id", time_field: str | None = "ts") -> FeatureSchema:
    """A schema inferred from the first events (``id_field`` left out, ``time_field`` a timestamp)."""
    present = set().union(*(e.keys() for e in events[:1000]))
    return FeatureSchema.infer(
        events[:5000],
        id_field=id_field if id_field in present else None,
        time_field=time_field if time_field in present else None,
    )


def fit_matrix(
    X: NDArray[Any], *, variant: str = "ncae", device: str = "auto", progress: ProgressFn | None = None, **hyper: Any
) -> FittedModel:
    detector = AutoencoderDetector(variant=variant, device=device, **hyper).fit(X, progress=progress)
    return FittedModel(detector, None, np.asarray(X, dtype=np.float32))


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
    """A numeric matrix from ``.npz`` (``X`` and optional ``y``) or a CSV with a header."""
    if path.suffix == ".npz":
        data = np.load(path, allow_pickle=False)
        return data["X"].astype(np.float32), (data["y"] if "y" in data.files else None)
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c != label_column]
    X = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
    y = np.array([int(float(r[label_column])) for r in rows]) if label_column else None
    return X, y
