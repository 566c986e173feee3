"""Small admin helpers over aiokafka: create topics, wait until they are usable, read the
record size limits the producer must respect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from stream_ae.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES


async def ensure_topics(
    client_kwargs: dict[str, Any],
    topics: dict[str, int],
    *,
    compacted: set[str] | None = None,
    configs: dict[str, str] | None = None,
) -> None:
    """Create each ``topic -> partitions`` that does not exist yet (existing ones are kept);
    ``configs`` are topic configs for the new ones."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name,
                num_partitions=parts,
                replication_factor=1,
                topic_configs={
                    **(configs or {}),
                    **({"cleanup.policy": "compact"} if name in (compacted or set()) else {}),
                },
            )
            for name, parts in topics.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently: fine
                await admin.create_topics(new)
            await _wait_for_leaders(admin, [t.name for t in new])
    finally:
        await admin.close()


log = logging.getLogger("stream_ae.kafka")


async def topic_max_message_bytes(client_kwargs: dict[str, Any], topics: list[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes``: the largest record batch the broker accepts on it
    (Kafka's default when the topic does not say, or the configs cannot be read)."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    limits = dict.fromkeys(topics, DEFAULT_MAX_MESSAGE_BYTES)
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t, configs={"max.message.bytes": None}) for t in topics]
        for response in await admin.describe_configs(resources):
            for error_code, _msg, _type, name, entries in response.resources:
                for entry in entries if error_code == 0 else ():
                    if entry[0] == "max.message.bytes" and entry[1] is not None:
                        limits[name] = int(entry[1])
    except Exception as exc:  # no DescribeConfigs permission: Kafka's default is the safe guess
        log.warning("cannot read max.message.bytes of %s (%s); assuming %d", topics, exc, DEFAULT_MAX_MESSAGE_BYTES)
    finally:
        await admin.close()
    return limits


async def partition_counts(client_kwargs: dict[str, Any], topics: list[str]) -> dict[str, int]:
    """Partitions of each existing topic among ``topics`` (missing ones are left out)."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code", 0) == 0 and t.get("partitions")}


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 15.0) -> None:
    """A new topic takes a moment to get partition leaders; producing before that stalls."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        described = await admin.describe_topics(names)
        ready = all(
            t.get("error_code", 0) == 0
            and t.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
            for t in described
        )
        if ready:
            return
        await asyncio.sleep(0.1)
