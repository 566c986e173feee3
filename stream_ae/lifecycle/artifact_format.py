"""The on-disk format of a model artifact: a directory of safetensors weights and a JSON
manifest with the SHA-256 of every file. Never a pickle.

This is the bottom layer: it knows files, checksums and tensors, not what a detector or an
encoder is. :mod:`stream_ae.models.detector` writes and reads its own artifact through it,
and :mod:`stream_ae.lifecycle.artifacts` adds the feature encoder and the registry's view on top.

Layout::

    <dir>/weights.safetensors   tensors only (safetensors cannot carry code)
    <dir>/manifest.json         format, then whatever the writer adds, then SHA-256 per file

Example:
    >>> import tempfile, pathlib, torch
    >>> path = write_artifact(pathlib.Path(tempfile.mkdtemp()) / "a", {"w": torch.ones(2)}, {"variant": "x"})
    >>> manifest, weights, sha = read_artifact(path)
    >>> manifest["variant"], weights["w"].tolist(), len(sha)
    ('x', [1.0, 1.0], 64)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file

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


def write_artifact(path: Path, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> Path:
    """Write ``tensors`` and a manifest of ``fields`` (plus format and checksums) to ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS), metadata={"format": FORMAT})
    manifest = {"format": FORMAT, **fields, "files": {WEIGHTS: sha256_file(path / WEIGHTS)}}
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


def read_artifact(
    path: Path, expected_sha256: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """Verify every checksum (and the manifest's own against ``expected_sha256``), then read
    the weights: ``(manifest, tensors on the CPU, manifest SHA-256)``."""
    path = Path(path)
    manifest, msha = read_manifest(path)
    if expected_sha256 is not None and msha != expected_sha256:
        raise ArtifactError("manifest checksum differs from the announced one")
    verify_files(path, manifest)
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ArtifactError(f"weights are not a valid safetensors file: {exc}") from exc
    return manifest, tensors, msha
