"""The foundation's contract with Kafka: a consumer group resumes exactly at its commit."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_ae.kafka.admin import ensure_topics
from stream_ae.kafka.local import LocalKafka

pytestmark = pytest.mark.kafka

N_EVENTS = 20_000


async def _consume(bootstrap: str, topic: str, group: str, limit: int | None) -> list[int]:
    """Read values in a group with manual commits; stop after ``limit`` (committed) or at the end."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: list[int] = []
    try:
        idle = 0
        while limit is None or len(seen) < limit:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            if not batches:
                idle += 1
                if idle > 6:
                    break
                continue
            idle = 0
            offsets: dict[TopicPartition, int] = {}
            for tp, msgs in batches.items():
                seen.extend(int(m.value) for m in msgs)
                offsets[tp] = msgs[-1].offset + 1
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
    return seen


async def test_group_resumes_from_committed_offsets(bootstrap: str, topic_name: str) -> None:
    await ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 4})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic_name, str(i).encode(), key=str(i % 97).encode()) for i in range(N_EVENTS)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

    first = await _consume(bootstrap, topic_name, "g1", limit=N_EVENTS // 2)
    second = await _consume(bootstrap, topic_name, "g1", limit=None)

    assert len(first) >= N_EVENTS // 2
    assert sorted(first + second) == list(range(N_EVENTS)), "every event exactly once across the handover"


def test_broker_restart_keeps_data_and_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker = LocalKafka(tmp_path / "k", die_with_parent=True)
    broker.start()
    port = broker.port
    broker.stop()
    assert broker.running_pid() is None
    again = LocalKafka(tmp_path / "k", die_with_parent=True)
    assert again.port == port
    again.start()
    try:
        assert (tmp_path / "k" / "kraft-logs" / "meta.properties").exists()
    finally:
        again.stop()


def test_stale_pid_file_is_not_trusted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker = LocalKafka(tmp_path / "k")
    broker.data_dir.mkdir(parents=True)
    broker.pid_file.write_text("1")  # pid 1 is alive but is no Kafka broker
    assert broker.running_pid() is None
    assert not broker.pid_file.exists()


def test_a_fresh_cluster_id_never_reads_as_an_option() -> None:
    """The storage tool parses ``-t <id>``; an id starting with ``-`` (one in 64 of plain random
    ids) made it refuse to format, so a fresh broker failed to start once in 64 runs."""
    from stream_ae.kafka.local import _cluster_id

    ids = [_cluster_id() for _ in range(5_000)]
    assert not any(cid.startswith("-") for cid in ids)
    assert all(len(cid) == 22 for cid in ids) and len(set(ids)) == len(ids)


def test_produce_from_a_file_replays_every_line_unchanged(bootstrap: str, topic_name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``stream-ae produce --from FILE``: each line becomes one record, bytes unchanged (a bad
    line too: a replay of what a topic held), keyed by the key field where a line has it."""
    import orjson
    from typer.testing import CliRunner

    from stream_ae.tools.audit import read_all
    from stream_ae.tools.cli import app

    lines = [orjson.dumps({"card": f"c{i}", "amount": i + 0.5}) for i in range(50)] + [b"{not json", b'{"amount": 1}']
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    asyncio.run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 3}))
    result = CliRunner().invoke(
        app, ["produce", "--topic", topic_name, "--from", str(path), "--count", "0", "--rate", "0"],
        env={"STREAM_AE_BOOTSTRAP_SERVERS": bootstrap},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = asyncio.run(read_all(bootstrap, [topic_name], until=len(lines)))
    assert sorted(r.value for r in got) == sorted(lines)
    keys = {r.value: r.key for r in got}
    assert keys[lines[7]] == b"c7" and keys[b"{not json"] is None and keys[b'{"amount": 1}'] is None
    # without --topic: the topic the worker reads (STREAM_AE_INPUT_TOPICS), said before sending
    other = f"{topic_name}-in"
    result = CliRunner().invoke(
        app, ["produce", "--from", str(path), "--count", "5", "--rate", "0"],
        env={"STREAM_AE_BOOTSTRAP_SERVERS": bootstrap, "STREAM_AE_INPUT_TOPICS": other},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.index(f"sending to topic '{other}'") < result.output.index("sent 5 records")
    assert sorted(r.value for r in asyncio.run(read_all(bootstrap, [other], until=5))) == sorted(lines[:5])


def test_the_trainer_on_an_empty_topic_says_what_to_check(bootstrap: str, topic_name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``stream-ae trainer --once`` on an empty or misspelt topic: no traceback, a message that
    names the topic and what to check, exit status 2; and no error logged for the models topic."""
    from typer.testing import CliRunner

    from stream_ae.tools.cli import app

    asyncio.run(ensure_topics({"bootstrap_servers": bootstrap}, {topic_name: 1}))
    env = {
        "STREAM_AE_BOOTSTRAP_SERVERS": bootstrap,
        "STREAM_AE_INPUT_TOPICS": topic_name,
        "STREAM_AE_MODEL_DIR": str(tmp_path / "models"),
        "STREAM_AE_CONTROL_TOPIC": f"{topic_name}.models",
        "STREAM_AE_FEEDBACK_TOPIC": f"{topic_name}.feedback",
    }
    result = CliRunner().invoke(app, ["trainer", "--once"], env=env)
    assert result.exit_code == 2, result.output
    assert "too_few_events" in result.output and topic_name in result.output and "Traceback" not in result.output
