"""The worker's entity state over its lifetime: restored from the changelog when partitions
are assigned (they stay paused until then), kept across a rebalance that gives them back,
dropped when they move away, rewound when a batch is, and reported as metrics.

Every change to the store runs on the hot executor, the thread that processes batches, so
the state is never read and written at once. Under ``exactly_once`` (or a commit interval of
0) the changelog records are built with each batch
(:meth:`stream_ae.output.route.Router.changelog`) and published with its outputs. Under
``at_least_once`` the acknowledged batches' changes are held here and written coalesced, one
record per entity (:func:`stream_ae.entities.changelog.coalesce`), when the batch loop commits
the offsets they cover (``commit_interval_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_ae.entities.changelog import coalesce
from stream_ae.entities.restore import restore_partition
from stream_ae.entities.store import EntityStore, PartitionDelta
from stream_ae.operation.metrics import WorkerMetrics
from stream_ae.output.route import OutputRecords, Routed, changelog_records

log = logging.getLogger("stream_ae.worker")


class EntityState:
    """Owns the :class:`EntityStore` of a worker and the consumer that restores it."""

    def __init__(
        self,
        store: EntityStore,
        changelog_topic: str,
        consumer: AIOKafkaConsumer,
        restorer: AIOKafkaConsumer,
        executor: ThreadPoolExecutor,
        metrics: WorkerMetrics,
    ) -> None:
        self.store = store
        self.changelog_topic = changelog_topic
        self.consumer = consumer  # the worker's group consumer: pause, resume, committed offsets
        self.restorer = restorer  # no group, read_committed: reads the changelog
        self._hot = executor
        self.metrics = metrics
        self.restoring: set[TopicPartition] = set()
        self._revoked: set[TopicPartition] = set()
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        self._held: list[PartitionDelta] = []  # acknowledged, not yet in the changelog

    async def _on_hot(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._hot, fn, *args)

    # -- rebalances ------------------------------------------------------------------------
    def revoked(self, parts: Iterable[TopicPartition]) -> None:
        """Partitions may move: keep their state until the new assignment says where."""
        self._revoked = set(parts)
        if self._task is not None:
            self._task.cancel()  # a restore in progress: the next assignment decides again

    async def assigned(self, parts: Iterable[TopicPartition]) -> None:
        """Keep the state of partitions given back; drop the others'; restore the new ones
        (paused until restored)."""
        parts = set(parts)
        held = set(self.store.tables)
        keep = {tp for tp in parts if tp in self._revoked and tp.partition in held and tp not in self.restoring}
        todo = sorted(parts - keep)
        if todo:
            self.consumer.pause(*todo)  # first: no record of theirs is returned before they are restored
        self.restoring = set(todo)
        self._revoked = set()
        self._generation += 1
        kept = {tp.partition for tp in keep}
        await self._on_hot(self.store.drop, [p for p in held if p not in kept])
        # changes of partitions gone that were never written: their offsets were never committed
        # either, so the next owner reads those events again from its restored state
        self._held = [d for d in self._held if d.partition in kept]
        if todo:
            self._task = asyncio.ensure_future(self._restore(todo, self._generation))
        log.info("entity state: kept %d partition(s), restoring %d", len(keep), len(todo))

    async def _restore(self, todo: list[TopicPartition], generation: int) -> None:
        for tp in todo:
            try:
                committed = await self.consumer.committed(tp)
                if committed is None:  # nothing committed yet: the group starts from the beginning
                    committed = (await self.consumer.beginning_offsets([tp]))[tp]
                restored = await restore_partition(
                    self.restorer, self.changelog_topic, tp.partition, self.store.spec, self.store.dtype, committed
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("restoring partition %d failed; retrying", tp.partition)
                await asyncio.sleep(1.0)
                if generation == self._generation:
                    self._task = asyncio.ensure_future(self._restore(todo[todo.index(tp) :], generation))
                return
            if generation != self._generation:
                return
            await self._on_hot(self.store.load, tp.partition, restored.keys, restored.rows)
            self.metrics.restore_seconds.observe(restored.seconds)
            self.metrics.entities_restored.inc(len(restored.keys))
            self.restoring.discard(tp)
            with contextlib.suppress(Exception):  # revoked meanwhile: nothing to resume
                self.consumer.resume(tp)
            log.info(
                "restored partition %d: %d entities from %d changelog records in %.2f s (committed offset %d)",
                tp.partition,
                len(restored.keys),
                restored.records,
                restored.seconds,
                committed,
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    # -- batches ---------------------------------------------------------------------------
    async def undo(self, deltas: list[PartitionDelta]) -> None:
        """Put the state back as it was before ``deltas`` (newest first)."""
        if deltas:
            await self._on_hot(self.store.undo, deltas)

    def hold(self, deltas: list[PartitionDelta]) -> None:
        """An acknowledged batch's changes, for the changelog at the next commit."""
        self._held += [d for d in deltas if len(d)]

    async def held_records(self) -> OutputRecords:
        """The held changes as changelog records, one per entity (merged and encoded on the hot
        thread; the merge replaces what is held, so a retry writes the same records)."""
        self._held = await self._on_hot(coalesce, self._held)
        records: OutputRecords = await self._on_hot(changelog_records, self.store, self._held)
        return records

    def written(self, records: int) -> None:
        """The held changes are in the changelog and their offsets committed."""
        self._held = []
        self.metrics.changelog_records.inc(records)

    def committed(self, routed: Routed) -> None:
        """A batch is acknowledged: count its changelog records, when it carried them, and the
        state's figures (taken on the hot thread)."""
        m = self.metrics
        m.changelog_records.inc(len(routed.outputs.get(self.changelog_topic, ())))
        counts = routed.entity_counts
        if counts is not None:
            for reason, n in counts.evicted.items():
                m.entity_evictions.labels(reason=reason).inc(n)
            if counts.replayed:
                m.entity_replays.inc(counts.replayed)
        for p, n in routed.entities_held.items():
            m.entities.labels(partition=str(p)).set(n)
