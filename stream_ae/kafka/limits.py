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


def fits(key: bytes | None, value: bytes, batch_bytes: int) -> bool:
    """Whether a record fits in a record batch of ``batch_bytes`` on its own."""
    return len(value) + (len(key) if key else 0) + RECORD_OVERHEAD + BATCH_OVERHEAD <= batch_bytes
