"""Model artifacts as the worker, the trainer and the registry see them: a detector, its
feature encoder and the manifest, in one checksummed directory (:mod:`stream_ae.lifecycle.artifact_format`).

The manifest holds the format, version, variant, hyper-parameters, scaler and score
statistics, threshold, feature schema and encoder statistics, training metrics, data
fingerprint, creation time and the SHA-256 of every file. :func:`load_artifact` verifies every
listed file's SHA-256 (and, when given, the manifest's own) before reading a byte of the
weights, refuses file names that leave the directory, and checks that the encoder's width
matches the network's.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from stream_ae.models import AutoencoderDetector
    >>> det = AutoencoderDetector("ae", max_steps=50, min_steps=50).fit(np.random.rand(300, 4))
    >>> path = save_artifact(pathlib.Path(tempfile.mkdtemp()) / "m", det)
    >>> load_artifact(path).manifest["variant"]
    'ae'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_ae.features.encoder import FeatureEncoder
from stream_ae.lifecycle.artifact_format import ArtifactError, fingerprint, read_artifact, read_manifest
from stream_ae.models.detector import AutoencoderDetector

__all__ = ["ArtifactError", "LoadedModel", "fingerprint", "load_artifact", "read_manifest", "save_artifact"]


@dataclass
class LoadedModel:
    """A verified artifact: the detector, its optional feature encoder and its manifest."""

    detector: AutoencoderDetector
    encoder: FeatureEncoder | None
    manifest: dict[str, Any]
    path: Path
    manifest_sha256: str

    @property
    def version(self) -> str:
        return str(self.manifest["version"])


def save_artifact(
    path: Path,
    detector: AutoencoderDetector,
    encoder: FeatureEncoder | None = None,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    data_fingerprint: str | None = None,
    feature_names: list[str] | None = None,
) -> Path:
    """Write ``detector`` (and ``encoder``) to the directory ``path``; returns ``path``."""
    if encoder is not None and encoder.n_features != detector.n_features_in_:
        raise ArtifactError(f"encoder makes {encoder.n_features} features, the model takes {detector.n_features_in_}")
    return detector.save(
        path,
        version=version,
        encoder=encoder.to_dict() if encoder is not None else None,
        feature_names=feature_names or (encoder.feature_names if encoder is not None else None),
        metrics=metrics or {},
        data_fingerprint=data_fingerprint,
    )


def load_artifact(path: Path, device: str = "auto", expected_sha256: str | None = None) -> LoadedModel:
    """Verify, then load. ``expected_sha256`` pins the manifest (from the registry/announcement)."""
    path = Path(path)
    manifest, state, msha = read_artifact(path, expected_sha256)
    detector = AutoencoderDetector.from_artifact(manifest, state, device=device)
    encoder = FeatureEncoder.from_dict(manifest["encoder"]) if manifest.get("encoder") else None
    if encoder is not None and encoder.n_features != detector.n_features_in_:
        raise ArtifactError("feature schema does not match the model's input width")
    return LoadedModel(detector, encoder, manifest, path, msha)
