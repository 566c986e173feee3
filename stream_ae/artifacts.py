"""Model artifacts: a directory with safetensors weights and a JSON manifest. Never a pickle.

Layout::

    <dir>/weights.safetensors   tensors only (safetensors cannot carry code)
    <dir>/manifest.json         format, version, variant, hyper-parameters, scaler and score
                                statistics, threshold, feature schema + encoder statistics,
                                training metrics, data fingerprint, created, SHA-256 per file

:func:`load_artifact` verifies every listed file's SHA-256 (and, when given, the manifest's
own) before reading a byte of the weights, refuses file names that leave the directory, and
checks that the encoder's width matches the network's.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from stream_ae.models import AutoencoderDetector
    >>> det = AutoencoderDetector("ae", max_steps=50, min_steps=50).fit(np.random.rand(300, 4))
    >>> path = det.save(pathlib.Path(tempfile.mkdtemp()) / "m")
    >>> load_artifact(path).manifest["variant"]
    'ae'
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file

from stream_ae.features import FeatureEncoder
from stream_ae.models.detector import AutoencoderDetector

FORMAT = "stream-ae-model/1"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 8 * 1024 * 1024


class ArtifactError(ValueError):
    """An artifact is missing, tampered with, unsafe or incompatible."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(X: NDArray[Any]) -> str:
    """SHA-256 of a training matrix (shape and float32 bytes): which data made a model."""
    a = np.ascontiguousarray(X, dtype=np.float32)
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


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
    path.mkdir(parents=True, exist_ok=True)
    save_file(detector.state_dict(), str(path / WEIGHTS), metadata={"format": FORMAT})
    if encoder is not None and encoder.n_features != detector.n_features_in_:
        raise ArtifactError(f"encoder makes {encoder.n_features} features, the model takes {detector.n_features_in_}")
    manifest = {
        "format": FORMAT,
        "version": version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        "created": time.time(),
        "variant": detector.hyper.variant,
        "detector": detector.config(),
        "encoder": encoder.to_dict() if encoder is not None else None,
        "feature_names": feature_names or (encoder.feature_names if encoder is not None else None),
        "metrics": metrics or {},
        "data_fingerprint": data_fingerprint,
        "files": {WEIGHTS: sha256_file(path / WEIGHTS)},
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return path


def read_manifest(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed manifest and its SHA-256, with size and format checks."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{path} has no {MANIFEST}")
    raw = mpath.read_bytes()
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError("manifest is implausibly large")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"unknown artifact format {manifest.get('format') if isinstance(manifest, dict) else None!r}"
        )
    return manifest, hashlib.sha256(raw).hexdigest()


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Every listed file stays inside ``path`` and matches its SHA-256; weights are listed."""
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise ArtifactError("manifest lists no weights file")
    root = path.resolve()
    for name, digest in files.items():
        target = (root / str(name)).resolve()
        if Path(str(name)).name != name or target.parent != root:
            raise ArtifactError(f"file name {name!r} leaves the artifact directory")
        if not target.is_file():
            raise ArtifactError(f"{name} is missing")
        if sha256_file(target) != digest:
            raise ArtifactError(f"checksum mismatch for {name}: the artifact was modified")


def load_artifact(path: Path, device: str = "auto", expected_sha256: str | None = None) -> LoadedModel:
    """Verify, then load. ``expected_sha256`` pins the manifest (from the registry/announcement)."""
    path = Path(path)
    manifest, msha = read_manifest(path)
    if expected_sha256 is not None and msha != expected_sha256:
        raise ArtifactError("manifest checksum differs from the announced one")
    verify_files(path, manifest)
    try:
        state = load_file(str(path / WEIGHTS), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ArtifactError(f"weights are not a valid safetensors file: {exc}") from exc
    try:
        detector = AutoencoderDetector.from_config(manifest["detector"], state, device=device)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ArtifactError(f"weights do not fit the manifest's model: {exc}") from exc
    encoder = FeatureEncoder.from_dict(manifest["encoder"]) if manifest.get("encoder") else None
    if encoder is not None and encoder.n_features != detector.n_features_in_:
        raise ArtifactError("feature schema does not match the model's input width")
    return LoadedModel(detector, encoder, manifest, path, msha)
