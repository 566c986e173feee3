"""The model registry: versioned artifact directories with an atomic ``LATEST`` pointer.

Layout under the registry root::

    versions/<version>/manifest.json, weights.safetensors
    LATEST                       the current champion's version (one line)

Publishing writes the artifact into a temporary directory inside the root and renames it
into place (atomic on one filesystem), then replaces ``LATEST`` atomically. Readers never
see half-written models. The worker reads it; the trainer and ``stream-ae models`` write it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_ae.lifecycle.artifacts import ArtifactError, LoadedModel, load_artifact, read_manifest

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    created: float
    manifest_sha256: str
    metrics: dict[str, Any]


class Registry:
    """A registry rooted at ``root`` (a directory or a mounted volume)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def path_of(self, version: str) -> Path:
        """The directory of ``version``; refuses names that could leave the registry."""
        if not _VERSION_RE.match(version):
            raise ArtifactError(f"invalid version name {version!r}")
        return self.versions_dir / version

    def latest(self) -> str | None:
        pointer = self.root / "LATEST"
        if not pointer.exists():
            return None
        version = pointer.read_text().strip()
        return version or None

    def versions(self) -> list[VersionInfo]:
        """Every readable version, oldest first."""
        out: list[VersionInfo] = []
        if not self.versions_dir.exists():
            return out
        for path in self.versions_dir.iterdir():
            if not path.is_dir() or not _VERSION_RE.match(path.name):
                continue
            try:
                manifest, sha = read_manifest(path)
            except ArtifactError:
                continue
            out.append(
                VersionInfo(path.name, path, float(manifest.get("created", 0)), sha, manifest.get("metrics", {}))
            )
        return sorted(out, key=lambda v: (v.created, v.version))

    def load(self, version: str | None = None, device: str = "auto", expected_sha256: str | None = None) -> LoadedModel:
        """Load and verify ``version`` (default: ``LATEST``)."""
        version = version or self.latest()
        if version is None:
            raise ArtifactError(f"the registry at {self.root} holds no model yet")
        return load_artifact(self.path_of(version), device=device, expected_sha256=expected_sha256)

    def publish(self, write: Callable[[Path], Any], version: str, keep: int = 5) -> VersionInfo:
        """Write a new version with ``write(tmp_dir)``, move it into place, point LATEST at it."""
        target = self.path_of(version)
        if target.exists():
            raise ArtifactError(f"version {version} already exists")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.versions_dir))
        try:
            write(tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.promote(version)
        self.prune(keep)
        manifest, sha = read_manifest(target)
        return VersionInfo(version, target, float(manifest.get("created", 0)), sha, manifest.get("metrics", {}))

    def promote(self, version: str) -> None:
        """Point ``LATEST`` at an existing version (also how a rollback is done)."""
        if not self.path_of(version).is_dir():
            raise ArtifactError(f"no version {version} in the registry")
        fd, tmp = tempfile.mkstemp(prefix=".LATEST-", dir=self.root)
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
        os.replace(tmp, self.root / "LATEST")

    def rollback(self) -> str:
        """Promote the version before the current one; returns it."""
        versions = [v.version for v in self.versions()]
        current = self.latest()
        if current not in versions or versions.index(current) == 0:
            raise ArtifactError("there is no earlier version to roll back to")
        previous = versions[versions.index(current) - 1]
        self.promote(previous)
        return previous

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions (never the one LATEST points at)."""
        current = self.latest()
        versions = self.versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v.version != current]
        for v in doomed:
            shutil.rmtree(v.path, ignore_errors=True)
        return [v.version for v in doomed]


def announcement(info: VersionInfo, registry_root: Path) -> dict[str, Any]:
    """The control-topic message for a published version (path relative to the registry)."""
    return {
        "type": "model",
        "version": info.version,
        "path": str(info.path.relative_to(registry_root)),
        "manifest_sha256": info.manifest_sha256,
        "created": info.created,
        "metrics": info.metrics,
    }


def announcement_bytes(info: VersionInfo, registry_root: Path) -> bytes:
    return json.dumps(announcement(info, registry_root)).encode()
