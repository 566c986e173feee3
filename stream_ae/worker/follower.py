"""Which model scores: the initial load, model announcements on the control topic, the
registry's ``LATEST`` pointer as a fallback, and the swap between two batches.

Loading, verifying and warming a candidate run on a loader thread, never on the hot path; a
candidate that fails any check is refused (``stream_ae_model_swaps_total{result="rejected"}``)
and the model in use keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from stream_ae.lifecycle.artifacts import ArtifactError, LoadedModel
from stream_ae.lifecycle.registry import Registry
from stream_ae.operation.metrics import WorkerMetrics
from stream_ae.pipeline import ActiveModel
from stream_ae.settings import Settings

log = logging.getLogger("stream_ae.worker")


def compatible(running: ActiveModel, candidate: LoadedModel) -> str | None:
    """None when ``candidate`` reads the same event fields as ``running``, else why not."""
    if candidate.encoder is None:
        return "artifact has no feature encoder"
    old = {(f.name, f.kind) for f in running.encoder.schema.fields}
    new = {(f.name, f.kind) for f in candidate.encoder.schema.fields}
    if old != new:
        return f"feature schema differs: {sorted(old ^ new)}"
    if running.encoder.schema.entity != candidate.encoder.schema.entity:
        return "entity declaration differs: the state it needs is not the one held (restart the workers to change it)"
    return None


class ModelFollower:
    """Holds the model in use and a staged successor; swaps only when told (between batches)."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, loader: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = Registry(settings.model_dir)
        self.model: ActiveModel | None = None
        self._pending: ActiveModel | None = None
        self._refused: str | None = None
        self._loader = loader

    async def _in_loader(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._loader, fn, *args)

    async def load_initial(self, stopping: Callable[[], bool], retry_s: float = 2.0) -> None:
        """Wait until the registry holds a usable model (or the worker stops)."""
        while not stopping():
            try:
                loaded = await self._in_loader(self.registry.load, self.settings.model_version, self.settings.device)
            except ArtifactError as exc:
                log.warning("no usable model yet (%s); retrying in %.0f s", exc, retry_s)
                await asyncio.sleep(retry_s)
                continue
            self._activate(ActiveModel(loaded, self.settings.top_k_features, self.settings.scores_include_code))
            return

    def _activate(self, model: ActiveModel) -> None:
        self.model = model
        self.metrics.set_model(
            model.version,
            str(model.loaded.manifest.get("variant")),
            model.threshold,
            float(model.loaded.manifest.get("created", 0)),
            model.loaded.detector.threshold.rate if model.loaded.detector.threshold is not None else 0.0,
        )
        log.info("scoring with model %s (threshold %.4f)", model.version, model.threshold)

    def _prepare(self, version: str, expected_sha: str | None) -> ActiveModel:
        """Load, verify and warm a candidate (runs on the loader thread)."""
        loaded = self.registry.load(version, self.settings.device, expected_sha256=expected_sha)
        candidate = ActiveModel(loaded, self.settings.top_k_features, self.settings.scores_include_code)
        assert self.model is not None
        reason = compatible(self.model, loaded)
        if reason:
            raise ArtifactError(reason)
        if not candidate.scorer.probe():
            raise ArtifactError("non-finite scores on the probe batch")
        return candidate

    async def offer(self, version: str, expected_sha: str | None = None) -> bool:
        """Try to stage ``version`` for a swap; False (and the old model kept) on failure."""
        if self.model is not None and version == self.model.version:
            return True
        try:
            candidate = await self._in_loader(self._prepare, version, expected_sha)
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            log.error("refused model %s: %s", version, exc)
            self.metrics.model_swaps.labels(result="rejected").inc()
            return False
        self._pending = candidate
        return True

    async def on_announcement(self, msg: ConsumerRecord[bytes, bytes]) -> None:
        """A control-topic record: a model announcement is verified and staged; drift reports
        and other notes are ignored."""
        try:
            note = orjson.loads(msg.value or b"")
            if not isinstance(note, dict) or note.get("type") != "model":
                return
            version = str(note["version"])
            if Path(str(note.get("path", ""))) != Path("versions") / version:
                raise ArtifactError(f"announced path {note.get('path')!r} is not inside the registry")
        except (orjson.JSONDecodeError, KeyError, ArtifactError) as exc:
            log.error("ignored malformed announcement at offset %s: %s", msg.offset, exc)
            self.metrics.model_swaps.labels(result="rejected").inc()
            return
        await self.offer(version, note.get("manifest_sha256"))

    async def poll_registry(self) -> None:
        """Fallback to announcements: follow the registry's LATEST pointer."""
        if self.model is None or self.settings.model_version:
            return
        try:
            latest = self.registry.latest()
        except OSError as exc:  # a shared volume's hiccup: keep scoring with the model in use
            log.warning("could not read the registry's LATEST pointer (%s); trying again later", exc)
            return
        pending = self._pending.version if self._pending else None
        if latest and latest not in (self.model.version, pending, self._refused) and not await self.offer(latest):
            self._refused = latest  # do not retry the same broken version every few seconds

    def swap_if_pending(self) -> None:
        """Make the staged candidate the model in use (the loop calls this between batches)."""
        if self._pending is not None:
            old = self.model.version if self.model else None
            self._activate(self._pending)
            self._pending = None
            self.metrics.model_swaps.labels(result="swapped").inc()
            log.info("hot-swapped model %s -> %s", old, self.model.version if self.model else None)
