"""How large a Kafka record may be: the sizes the router and the publisher share.

The broker refuses a record batch larger than the topic's ``max.message.bytes`` (Kafka's
default: 1 MiB + 12 bytes), so every record stream-ae writes must fit one batch on its own.

Example:
    >>> fits(b"key", b"x" * 1000, batch_bytes=2000), fits(None, b"x" * 2000, batch_bytes=2000)
    (True, False)
"""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # Kafka's default message.max.bytes (1 MiB + 12)
# What a record costs in a v2 record batch beyond its key and value (attributes, varint
# lengths, offset and timestamp deltas), and the batch header, both rounded up.
RECORD_OVERHEAD = 32
BATCH_OVERHEAD = 96

FETCH_MAX_BYTES = 64 * 1024 * 1024  # one fetch response, over all of its partitions
# A consumer fetches a partition again only once the records fetched for it are consumed, with
# one fetch in flight per broker (aiokafka's fetcher). Each partition's share must therefore
# hold many micro-batches: at 2 MiB (about four batches of 2,048 card events) the worker
# drained its partitions before the next response came and waited for it; at 8 MiB it did
# not at batches of 2,048 (0.38 -> 0.61 of the batched passthrough) but still did at 4,096,
# which 16 MiB mended (docs/design/speed.md). So the share grows with the batch size.
PARTITION_FETCH_BYTES = 8 * 1024 * 1024  # the least share of a partition
FETCH_BYTES_PER_BATCH_RECORD = 4096  # and at least this much per record of a micro-batch


def event_fetch_options(max_message_bytes: int, batch_max_size: int) -> dict[str, int]:
    """The fetch sizes of a consumer of events (the worker's, and the benchmarks' passthroughs,
    so that they compare like with like): at most ``FETCH_MAX_BYTES`` a response; a
    partition's share at least ``PARTITION_FETCH_BYTES``, ``FETCH_BYTES_PER_BATCH_RECORD`` per
    record of a micro-batch, and two of the largest records. A worker holds at most that much
    per assigned partition that it has not yet processed.

    Example:
        >>> [event_fetch_options(DEFAULT_MAX_MESSAGE_BYTES, n)["max_partition_fetch_bytes"] >> 20 for n in (2048, 4096)]
        [8, 16]
    """
    share = max(PARTITION_FETCH_BYTES, FETCH_BYTES_PER_BATCH_RECORD * batch_max_size, 2 * max_message_bytes)
    return {"fetch_max_bytes": FETCH_MAX_BYTES, "max_partition_fetch_bytes": share}


RESTORE_PARTITION_FETCH_BYTES = 16 * 1024 * 1024  # a changelog is read through once, in big chunks


def restore_fetch_options() -> dict[str, int]:
    """The fetch sizes of the consumer that restores entity state from the changelog (the
    worker's, and the restore benchmark's)."""
    return {"fetch_max_bytes": FETCH_MAX_BYTES, "max_partition_fetch_bytes": RESTORE_PARTITION_FETCH_BYTES}


def fits(key: bytes | None, value: bytes, batch_bytes: int) -> bool:
    """Whether a record fits in a record batch of ``batch_bytes`` on its own."""
    return len(value) + (len(key) if key else 0) + RECORD_OVERHEAD + BATCH_OVERHEAD <= batch_bytes
