"""Entity state on the real broker: the worker computes what the offline tools compute, and its
state survives crashes, rebalances and a broker restart without loss or double counting.

The yardstick is the offline replay: ``stream-ae score``'s path (``featurize_file``) over the
events in the order they were sent. A worker's score for an event, however often it was
re-delivered, must equal that event's offline score.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream_ae.alarms.stage import judge_rows
from stream_ae.entities.store import EntityStore
from stream_ae.features.featurize import RecordMeta, entity_features, featurize_file
from stream_ae.kafka.admin import ensure_topics
from stream_ae.lifecycle.registry import Registry
from stream_ae.output.records import INCIDENT_SCHEMA
from stream_ae.tools.audit import read_all
from stream_ae.tools.produce import send_events
from stream_ae.tools.synthetic import CardStream
from stream_ae.tools.worker_process import WorkerProcess, worker_env
from tests.streaming import card_model, run, wait_for, with_alarm
from trainer.train import FittedModel, fit_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def offline_scores(fitted: FittedModel, events: list[dict[str, Any]]) -> dict[str, float]:
    """Each event's score by the offline path, in send order from an empty state."""
    assert fitted.encoder is not None
    feats = featurize_file(fitted.encoder, events)
    scores = fitted.detector.score_samples(feats.batch.X)
    return {events[i]["id"]: float(s) for i, s in zip(feats.batch.ok.tolist(), scores.tolist(), strict=True)}


def offline_alarms(
    fitted: FittedModel, events: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, tuple[str, int, float]], EntityStore]:
    """The post-score stage offline (``stream-ae score``'s path): each event's published score,
    each incident's final state (closed or not, alarms, peak: what the compacted incidents
    topic holds), and the entity store after the replay."""
    assert fitted.encoder is not None and fitted.encoder.schema.entity is not None
    feats = featurize_file(fitted.encoder, events)
    alarms = judge_rows(
        feats,
        fitted.detector.score_samples(feats.batch.X),
        fitted.detector,
    )
    ids = [events[i]["id"] for i in feats.batch.ok.tolist()]
    published = dict(zip(ids, alarms.judged.published.tolist(), strict=True))
    final = {c.incident_id: _final(c.status, c.alarms, c.peak_score) for c in alarms.changes()}
    assert feats.store is not None
    return published, final, feats.store


def _final(status: str, alarms: int, peak: float) -> tuple[str, int, float]:
    return ("closed" if status == "closed" else "open", alarms, peak)


def worker_scores(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 90.0, field: str = "score"
) -> list[tuple[str, float]]:
    """(event id, score) for every all-scores record, duplicates included, once every one of
    the ``expected`` input records has a score (or after ``timeout_s``); ``field`` "published"
    reads the post-score stage's published score instead."""
    inputs = run(read_all(bootstrap, [topic], until=expected))
    ids = {(r.partition, r.offset): orjson.loads(r.value)["id"] for r in inputs}
    deadline = time.monotonic() + timeout_s
    while True:
        out = run(read_all(bootstrap, [f"{topic}.scores"], until=expected, idle_s=1.0))
        records = [orjson.loads(r.value) for r in out]
        got = [(ids[(s["source"]["partition"], s["source"]["offset"])], s[field]) for s in records]
        if len({i for i, _ in got}) >= expected or time.monotonic() > deadline:
            return got
        time.sleep(2.0)


def assert_same_scores(got: list[tuple[str, float]], want: dict[str, float]) -> None:
    assert {i for i, _ in got} == set(want), "every event scored"
    diffs = np.asarray([abs(s - want[i]) / max(1.0, abs(want[i])) for i, s in got])
    assert diffs.max() < 1e-3, f"{(diffs >= 1e-3).sum()} scores differ from the offline replay (max {diffs.max():.2e})"


def card_events(n: int, seed: int) -> list[dict[str, Any]]:
    return CardStream(seed=seed, anomaly_rate=0.01).next(n)[0]


def test_worker_scores_equal_the_offline_replay(
    bootstrap: str, topic_name: str, registry: Path, tmp_path: Path
) -> None:
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 4}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    events = card_events(8_000, seed=21)
    try:
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, events))
        assert wait_for(lambda: worker.scored() >= len(events), timeout_s=90)
        cards = len({e["card"] for e in events})
        # the changelog is written once per commit interval (1 s): every card's change lands
        assert wait_for(lambda: worker.metrics().get("stream_ae_changelog_records_total", 0) >= cards, 15)
        m = worker.metrics()
    finally:
        worker.stop()
    assert_same_scores(worker_scores(bootstrap, topic_name, len(events)), offline_scores(card_model(1, 0.0), events))
    held = sum(v for k, v in m.items() if k.startswith("stream_ae_entities{"))
    assert held == cards, "every card is held, once"
    assert m["stream_ae_changelog_records_total"] < len(events), "at most one record per card and commit"


@pytest.mark.skipif(not (SHARED / "smd").exists(), reason="../shared/data/smd is not in this checkout")
def test_a_metric_stream_scores_equal_the_offline_replay(bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    """SMD machine-1-6 test rows keyed by machine, with the rows-minus-recent-mean features."""
    from trainer.evaluate import load_smd, smd_events, smd_schema

    train_rows, test_rows, _ = load_smd(SHARED, "machine-1-6")
    train = smd_events(train_rows[:5_000], "machine-1-6")
    test = smd_events(test_rows[:4_000], "machine-1-6", first_minute=5_000)
    fitted = fit_events(train, schema=smd_schema(38), max_steps=300, min_steps=300, target_rate=0.01, device="cpu")
    registry = tmp_path / "models"
    Registry(registry).publish(lambda tmp: fitted.save(tmp, version="smd"), "smd")
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    for i, e in enumerate(test):
        e["id"] = f"row-{i}"
    try:
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, test, key_field="machine"))
        assert wait_for(lambda: worker.scored() >= len(test), timeout_s=90)
    finally:
        worker.stop()
    assert_same_scores(worker_scores(bootstrap, topic_name, len(test)), offline_scores(fitted, test))


def replayed_state(fitted: FittedModel, events: list[dict[str, Any]]) -> dict[bytes, np.void]:
    """Every card's row after a clean replay of ``events`` (with the post-score stage when the
    schema declares one)."""
    assert fitted.encoder is not None and fitted.encoder.schema.entity is not None
    if fitted.encoder.schema.entity.alarm is not None:
        store = offline_alarms(fitted, events)[2]
    else:
        store = EntityStore(fitted.encoder.schema.entity)
        batch = fitted.encoder.encode(events)
        entity_features(fitted.encoder, events, RecordMeta.for_file(events), store, batch.ok)
    table = store.tables[0]
    return {k: table.rows[s] for k, s in table.index.items()}


def changelog_state(
    bootstrap: str, changelog_topic: str, fitted: FittedModel, group: str, input_topic: str
) -> dict[bytes, np.void]:
    """Every entity's row as a restore would see it, after the group committed everything."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream_ae.entities.restore import restore_partition

    spec = fitted.encoder.schema.entity  # type: ignore[union-attr]
    assert spec is not None
    store = EntityStore(spec)

    async def read() -> dict[bytes, np.void]:
        member = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        restorer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed")
        await member.start()
        await member._client.force_metadata_update()
        await restorer.start()
        state: dict[bytes, np.void] = {}
        try:
            for p in sorted(member.partitions_for_topic(input_topic) or ()):
                committed = await member.committed(TopicPartition(input_topic, p)) or 0
                restored = await restore_partition(restorer, changelog_topic, p, spec, store.dtype, committed)
                state.update(zip(restored.keys, restored.rows, strict=True))
        finally:
            await member.stop()
            await restorer.stop()
        return state

    return run(read())


def assert_same_state(got: dict[bytes, np.void], want: dict[bytes, np.void]) -> None:
    """Every row the same, but the last applied offset: a partition's offset in the worker, the
    row number in the replayed file. The post-score state (``lk_*`` and an incident's peak
    published score) follows the model's float32 scores, which move in the 7th digit with the
    batch they were computed in; the peak is a published score, whose tail probability
    magnifies that, so it is compared as :func:`assert_same_scores` compares published scores."""
    assert set(got) == set(want), "the same cards"
    for key, row in want.items():
        for name in set(row.dtype.names or ()) - {"last_offset"}:
            tol = 1e-3 if name == "incident_peak" else 1e-5 if name.startswith("lk_") else 1e-9
            np.testing.assert_allclose(got[key][name], row[name], rtol=tol, atol=tol, err_msg=f"{key!r} {name}")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_state_survives_sigkill_without_loss_or_double_counting(
    bootstrap: str, topic_name: str, tmp_path: Path, guarantee: str
) -> None:
    """The card model with its post-score stage (likelihood, warm-up, incidents): raw scores,
    published scores, incidents and every entity's state equal the offline replay."""
    fitted = with_alarm(card_model(1, 0.0))
    registry = tmp_path / "models"
    Registry(registry).publish(lambda tmp: fitted.save(tmp, version="alarm"), "alarm")
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 4}))
    env = worker_env(
        bootstrap, registry, topic_name, STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores",
        STREAM_AE_INCIDENTS_TOPIC=f"{topic_name}.incidents",
        STREAM_AE_PROCESSING_GUARANTEE=guarantee, STREAM_AE_SESSION_TIMEOUT_MS="6000",
        STREAM_AE_INSTANCE_ID="entity-crash", STREAM_AE_BATCH_MAX_SIZE="400",
    )  # fmt: skip
    events = card_events(12_000, seed=22)
    sender = threading.Thread(
        target=run, args=(send_events({"bootstrap_servers": bootstrap}, topic_name, events, rate=2500),)
    )
    sender.start()
    rng = random.Random(5)
    try:
        for _ in range(3):  # kill -9 at a random point, three times
            worker = WorkerProcess(env, tmp_path / "worker.log").start()
            time.sleep(rng.uniform(1.0, 2.5))
            worker.stop(signal.SIGKILL)
        sender.join()
        worker = WorkerProcess(env, tmp_path / "worker.log").start()  # drains what the killed ones left
        got = worker_scores(bootstrap, topic_name, len(events))
        assert wait_for(lambda: worker.metrics().get("stream_ae_entities_restored_total", 0) > 0, timeout_s=30)
        restored = worker.metrics()["stream_ae_entities_restored_total"]
    finally:
        worker.stop()
    duplicated = len(got) - len({i for i, _ in got})
    print(f"\n[fault] sigkill x3 {guarantee}: {len(events)} events, lost {len(events) - len({i for i, _ in got})}, "
          f"duplicated {duplicated}; restored {restored} entities")  # fmt: skip
    assert restored > 0, "the last worker restored state written by the killed ones"
    assert_same_scores(got, offline_scores(fitted, events))  # nothing lost, every score (duplicates too) exact
    published, final, _ = offline_alarms(fitted, events)
    assert_same_scores(worker_scores(bootstrap, topic_name, len(events), field="published"), published)
    records = run(read_all(bootstrap, [f"{topic_name}.incidents"], idle_s=2.0))
    incidents = [orjson.loads(r.value) for r in records]
    for record, raw in zip(incidents, records, strict=True):
        jsonschema.validate(record, INCIDENT_SCHEMA)
        assert raw.key == record["incident_id"].encode(), "keyed by the incident: compaction keeps its latest"
    latest = {r["incident_id"]: _final(r["status"], r["alarms"], r["peak_score"]) for r in incidents}
    n_closed = sum(v[0] == "closed" for v in final.values())
    print(f"[fault] {len(final)} incidents offline ({n_closed} closed), {len(incidents)} incident records")
    assert len(final) >= 20 and n_closed >= 5, "the data open and close incidents"

    def same(a: tuple[str, int, float] | None, b: tuple[str, int, float] | None) -> bool:
        # the peak is one of the published scores: compared as assert_same_scores compares them (the
        # worker's batches split where the kills fell, and float32 products round by batch shape)
        return a is not None and b is not None and a[:2] == b[:2] and abs(a[2] - b[2]) < 1e-3 * max(1.0, abs(b[2]))

    differ = {
        k: (latest.get(k), final.get(k)) for k in set(latest) | set(final) if not same(latest.get(k), final.get(k))
    }
    assert not differ, f"each incident's latest record (status, alarms, peak) is the offline replay's: {differ}"
    opened = [r["incident_id"] for r in incidents if r["status"] == "opened"]
    assert all(r["top_fields"] for r in incidents if r["status"] != "closed"), "an alarm's record says what moved"
    assert not any(r["top_fields"] for r in incidents if r["status"] == "closed")
    assert set(opened) == set(final)
    if guarantee == "exactly_once":
        assert duplicated == 0, "read_committed consumers see each record once"
        assert len(opened) == len(final), "each incident opened once"
    changelog_topic = f"{topic_name}-app-entity-changelog"
    state = changelog_state(bootstrap, changelog_topic, fitted, f"{topic_name}.workers", topic_name)
    assert_same_state(state, replayed_state(fitted, events))


def test_a_rebalance_moves_state_with_its_partitions(
    bootstrap: str, topic_name: str, registry: Path, tmp_path: Path
) -> None:
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 4}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores")
    first = WorkerProcess(env, tmp_path / "w1.log").start()
    second = WorkerProcess(env, tmp_path / "w2.log").start()
    events = card_events(10_000, seed=23)
    try:
        assert wait_for(lambda: first.metrics().get("stream_ae_assigned_partitions") == 2, timeout_s=60)
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, events[:5_000]))
        assert wait_for(lambda: first.scored() + second.scored() >= 5_000, timeout_s=60)
        second.stop()  # its two partitions move to the first worker, which restores them
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, events[5_000:]))
        assert wait_for(lambda: first.metrics().get("stream_ae_assigned_partitions") == 4, timeout_s=60)
        got = worker_scores(bootstrap, topic_name, len(events))
        m = first.metrics()
    finally:
        first.stop()
        second.stop()
    assert m.get("stream_ae_entities_restored_total", 0) > 0
    assert m.get("stream_ae_entity_restore_seconds_count", 0) >= 2
    assert_same_scores(got, offline_scores(card_model(1, 0.0), events))


def test_hostile_entities_are_dead_lettered_and_the_stream_goes_on(
    bootstrap: str, topic_name: str, registry: Path, tmp_path: Path
) -> None:
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_MAX_MESSAGE_BYTES=str(3 * 1024 * 1024))
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    good = card_events(2_000, seed=24)
    base = dict(good[0])
    huge = "c" * 1_000_000
    hostile: list[tuple[bytes | None, bytes, str]] = [
        (b"card-x", orjson.dumps({k: v for k, v in base.items() if k != "card"}), "entity_missing"),
        (None, orjson.dumps({**base, "card": None}), "entity_missing"),
        (b"card-x", orjson.dumps({**base, "card": {"nested": 1}}), "entity_not_scalar"),
        (b"card-x", orjson.dumps({**base, "card": ["a"]}), "entity_not_scalar"),
        (huge.encode(), orjson.dumps({**base, "card": huge}), "entity_key_too_long"),
        (b"another-card", orjson.dumps(base), "entity_key_mismatch"),
    ]

    async def send_hostile() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            for key, value, _ in hostile:
                await producer.send_and_wait(topic_name, value, key=key)
        finally:
            await producer.stop()

    try:
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, good[:1000]))
        run(send_hostile())
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, good[1000:]))
        assert wait_for(lambda: worker.scored() >= len(good), timeout_s=90)
        m = worker.metrics()
        alive = worker.alive
    finally:
        worker.stop()
    dead = [orjson.loads(r.value) for r in run(read_all(bootstrap, [f"{topic_name}.dlq"], until=len(hostile)))]
    assert alive and m["stream_ae_events_scored_total"] == len(good)
    assert sorted(d["reason"] for d in dead) == sorted(reason for _, _, reason in hostile)
    huge_letter = next(d for d in dead if d["reason"] == "entity_key_too_long")
    assert len(huge_letter["key"]) < 300, "a megabyte key is shown by its first 256 bytes"
    assert huge_letter["original_size"] == len(hostile[4][1])


def test_a_million_entities_stay_within_the_bound() -> None:
    """1M distinct cards through one partition's state with a bound of 50,000: the table never
    holds more, evictions are counted, and memory stays where the bound puts it."""
    import tracemalloc

    from stream_ae.entities.spec import EntitySpec
    from stream_ae.entities.step import EntityBatch

    spec = EntitySpec.from_dict(
        {"max_entities": 50_000, "ttl": "1d", "features": [{"count": ["10m"]}, "since_last", {"novelty": "country"}]}
    )
    store = EntityStore(spec)
    n, batch = 1_000_000, 4096
    tracemalloc.start()
    held, evicted, tombstones = 0, 0, 0
    for start in range(0, n, batch):
        ids = np.arange(start, min(n, start + batch))
        keys = [b"card-%d" % i for i in ids.tolist()]
        eb = EntityBatch(keys, 1_790_000_000_000 + ids * 10, ids, {}, {"country": np.full(len(ids), 3, np.uint32)})
        _, delta = store.process(0, eb)
        tombstones += int((~delta.post_held).sum())
        held = max(held, len(store.tables[0]))
        evicted += sum(store.take_counts().evicted.values())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\n[entity] 1M entities, bound 50k: held at most {held}, evicted {evicted}, peak {peak / 2**20:.0f} MiB")
    assert held <= 50_000 + batch, "the bound holds (a batch may pass it before its eviction)"
    assert evicted == tombstones == n - len(store.tables[0]), "every eviction counted and tombstoned"
    assert peak < 120 * 2**20, "memory follows the bound, not the stream"
