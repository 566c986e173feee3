"""Batch production: Kafka's own partitioning, record size limits, and a batch that fails mid-way."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import murmur2 as murmur2_reference

from stream_ae.kafka.admin import ensure_topics, topic_max_message_bytes
from stream_ae.kafka.limits import fits
from stream_ae.kafka.partitioner import murmur2
from stream_ae.kafka.publisher import BatchPublisher, RecordTooLarge
from stream_ae.output.route import Router, Topics
from stream_ae.tools.audit import audit_delivery, read_all
from stream_ae.tools.produce import send_events
from stream_ae.tools.synthetic import FRAUD_KINDS, CardStream, transactions
from stream_ae.tools.worker_process import WorkerProcess, worker_env
from tests.streaming import run, wait_for


def test_vectorised_murmur2_matches_the_reference_on_every_key_shape() -> None:
    rng = random.Random(0)
    keys = [rng.randbytes(rng.randint(0, 300)) for _ in range(3000)]
    keys += [b"", b"a", b"ab", b"abc", b"abcd", "kártya-7".encode(), b"\xff" * 5, rng.randbytes(1_000_000)]
    assert [int(h) for h in murmur2(keys)] == [murmur2_reference(k) for k in keys]


@pytest.mark.kafka
def test_batch_partitions_are_those_send_picks(bootstrap: str, topic_name: str) -> None:
    """The same keys, once through ``send()`` (aiokafka's default partitioner) and once through
    the batch publisher, land in the same partitions of a 7-partition topic."""
    keys = [f"card-{i}".encode() for i in range(500)] + [random.Random(1).randbytes(n) for n in range(1, 400, 7)]

    async def scenario() -> tuple[dict[bytes, int], dict[bytes, int]]:
        kw = {"bootstrap_servers": bootstrap}
        await ensure_topics(kw, {f"{topic_name}.send": 7, f"{topic_name}.batch": 7})
        producer = AIOKafkaProducer(**kw, acks="all")
        await producer.start()
        try:
            sent = await asyncio.gather(*[await producer.send(f"{topic_name}.send", b"v", key=k) for k in keys])
            futures = await BatchPublisher(producer, 1_000_000).publish(f"{topic_name}.batch", keys, [b"v"] * len(keys))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        records = await read_all(bootstrap, [f"{topic_name}.batch"], until=len(keys))
        return {k: md.partition for k, md in zip(keys, sent, strict=True)}, {r.key: r.partition for r in records}

    by_send, by_batch = run(scenario())
    assert by_batch == by_send
    assert len(set(by_send.values())) == 7, "the keys spread over every partition"


@pytest.mark.kafka
def test_unkeyed_records_stick_to_one_partition_per_call(bootstrap: str, topic_name: str) -> None:
    async def scenario() -> list[int]:
        kw = {"bootstrap_servers": bootstrap}
        await ensure_topics(kw, {topic_name: 4})
        producer = AIOKafkaProducer(**kw, acks="all")
        await producer.start()
        try:
            publisher = BatchPublisher(producer, 1_000_000, rng=random.Random(3))
            for _ in range(6):
                await asyncio.gather(*await publisher.publish(topic_name, [None] * 50, [b"v"] * 50))
        finally:
            await producer.stop()
        return [r.partition for r in await read_all(bootstrap, [topic_name], until=300)]

    partitions = run(scenario())
    assert len(partitions) == 300
    per_call = Counter(partitions)
    assert all(n % 50 == 0 for n in per_call.values()), "each call's unkeyed records share a partition"
    assert len(per_call) >= 2, "calls do not all pick the same partition"


@pytest.mark.kafka
def test_fast_lz4_batches_reach_a_consumer_intact(
    bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the worker's LZ4 (Kafka's own client's fast compressor, not aiokafka's LZ4HC) the
    record batches are built by aiokafka's own builder, larger than LZ4HC makes them, and every
    record comes back from the broker as it was sent."""
    import importlib

    from aiokafka.record.default_records import DefaultRecordBatchBuilder as PythonBuilder

    from stream_ae.kafka import compression

    for name in compression._USERS:  # put aiokafka's encoder back after the test
        module = importlib.import_module(name)
        if hasattr(module, "lz4_encode"):
            monkeypatch.setattr(module, "lz4_encode", module.lz4_encode)
    events, _ = transactions(2000, seed=3)
    values = [orjson.dumps(e) for e in events]

    def built_size(builder_cls: type) -> int:
        builder = builder_cls(2, 3, 0, -1, -1, -1, 10_000_000)  # magic 2, LZ4
        for i, v in enumerate(values):
            builder.append(i, timestamp=0, key=None, value=v, headers=[])
        return len(builder.build())

    from aiokafka.record._crecords.default_records import DefaultRecordBatchBuilder as CBuilder

    high = built_size(CBuilder)
    compression.use_fast_lz4()
    assert built_size(CBuilder) > 1.15 * high and built_size(PythonBuilder) > 1.15 * high, "the fast compressor"

    async def scenario() -> list[bytes]:
        kw = {"bootstrap_servers": bootstrap}
        await ensure_topics(kw, {topic_name: 2})
        producer = AIOKafkaProducer(**kw, acks="all", compression_type="lz4", max_batch_size=1_000_000)
        await producer.start()
        try:
            keys = [str(e["card"]).encode() for e in events]
            await asyncio.gather(*await BatchPublisher(producer, 1_000_000).publish(topic_name, keys, values))
        finally:
            await producer.stop()
        return [r.value for r in await read_all(bootstrap, [topic_name], until=len(values))]

    assert sorted(run(scenario())) == sorted(values)


def test_a_record_too_large_for_any_batch_is_refused_not_dropped() -> None:
    publisher = BatchPublisher(producer=None, batch_bytes=4096)  # type: ignore[arg-type]
    with pytest.raises(RecordTooLarge, match="5000 bytes"):
        asyncio.run(publisher.publish("t", [b"k"], [b"x" * 5000], partitions=[0]))


class _Rec:
    def __init__(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "in", 0, offset, key, value
        self.timestamp = 1_790_000_000_000


def test_the_router_keeps_every_record_within_the_topic_limit() -> None:
    topics = Topics("out", "dlq", "scores", batch_bytes=8_000)
    router = Router(topics, 3)
    event = {"id": "e1", "note": "x" * 20_000}
    assert not router.anomaly(_Rec(1, b"e1", orjson.dumps(event)), event, event_id="e1", event_time=0.0,
                              score=9.0, threshold=3.0, model_version="v1", top_features=[])  # fmt: skip
    router.dead_letter(_Rec(2, b"k" * 100_000, b"\xff" * 60_000), "invalid_utf8", "not UTF-8")
    routed = router.routed
    assert "out" not in routed.outputs, "the anomaly record could not travel"
    dead = routed.outputs["dlq"]
    assert routed.dead_reasons == Counter({"oversized": 1, "invalid_utf8": 1})
    for key, value in zip(dead.keys, dead.values, strict=True):
        assert fits(key, value, topics.batch_bytes), "every dead letter fits the topic"
    first, second = (orjson.loads(v) for v in dead.values)
    assert "score 9.0000 > threshold 3.0000" in first["detail"] and first["original_truncated"]
    assert first["original_size"] == len(orjson.dumps(event))
    assert second["original_truncated"] and second["original_size"] == 60_000
    assert base64.b64decode(second["original_b64"]) == b"\xff" * len(base64.b64decode(second["original_b64"]))
    assert dead.keys[1] == b"in:0:2", "a 100 kB key is not repeated as the dead letter's key"


async def _lower_limit(bootstrap: str, topic: str, limit: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(limit)})
        await admin.alter_configs([resource])
    finally:
        await admin.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_a_batch_refused_mid_way_is_rewound_and_nothing_is_lost(
    bootstrap: str, topic_name: str, registry: Path, tmp_path: Path
) -> None:
    """An operator lowers the anomaly topic's max.message.bytes under a running worker. The
    next record batch with large anomaly records fails at the broker; the worker rewinds,
    re-reads the limit, and routes again: nothing is lost, and anomaly records that no
    longer fit are dead-lettered as ``oversized``."""
    run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 2}))
    env = worker_env(bootstrap, registry, topic_name, STREAM_AE_SCORES_TOPIC=f"{topic_name}.scores")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    rng = np.random.default_rng(0)
    normal, _ = transactions(6_000, seed=31)
    stream = CardStream(seed=32, anomaly_rate=1.0, id_prefix="fraud")
    all_frauds, _ = stream.next(2_000)
    single = [e for e, k in zip(all_frauds, stream.kinds, strict=True) if FRAUD_KINDS[k] != "burst"]
    frauds = single[:400]  # frauds a payment shows on its own (bursts need the card's history)
    for e in frauds:  # incompressible padding: each anomaly record is about 15 kB on the wire
        e["note"] = base64.b64encode(rng.bytes(15_000)).decode()
    first, second = normal[:3000] + frauds[:200], normal[3000:] + frauds[200:]
    try:
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, first))
        assert wait_for(lambda: worker.scored() >= len(first), timeout_s=60)
        run(_lower_limit(bootstrap, f"{topic_name}.anomalies", 8_000))
        assert run(topic_max_message_bytes({"bootstrap_servers": bootstrap}, [f"{topic_name}.anomalies"])) == {
            f"{topic_name}.anomalies": 8_000
        }
        run(send_events({"bootstrap_servers": bootstrap}, topic_name, second))
        total = len(first) + len(second)
        assert wait_for(lambda: worker.scored() >= total, timeout_s=120)
        m = worker.metrics()
        alive = worker.alive
    finally:
        worker.stop()
    audit = run(audit_delivery(bootstrap, [f"{topic_name}.scores"], total))
    assert alive and audit.lost == 0, "every event is scored"
    assert m.get('stream_ae_batch_errors_total{stage="publish"}', 0) >= 1, "a record batch was refused"
    out = run(read_all(bootstrap, [f"{topic_name}.anomalies", f"{topic_name}.dlq"], until=1))
    anomalies = {orjson.loads(r.value)["event_id"] for r in out if r.topic.endswith(".anomalies")}
    oversized = [orjson.loads(r.value) for r in out if r.topic.endswith(".dlq")]
    late_frauds = {e["id"] for e in frauds[200:]}
    assert oversized and all(d["reason"] == "oversized" for d in oversized)
    assert not anomalies & late_frauds, "no 15 kB anomaly record reached the 8 kB topic after the change"
    dead_late = {(d["source"]["partition"], d["source"]["offset"]) for d in oversized}
    assert len(dead_late) >= 0.9 * len(late_frauds), "the late frauds are dead-lettered, not dropped"
