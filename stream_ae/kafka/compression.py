"""LZ4 record batches compressed the way Kafka's own client compresses them.

aiokafka 0.14 compresses LZ4 with cramjam at level 9, which is LZ4HC, the slow high-ratio
compressor. Kafka's Java producer at its default LZ4 level uses the fast compressor
(``Lz4BlockOutputStream``: "for backward compatibility ... fastCompressor with default
compression level"), and so did aiokafka before 0.11 (python-lz4 at level 0). The change is
aio-libs/aiokafka#1028 (open; PR #1121 would restore the fast level). aiokafka has no option
for the level, so :func:`use_fast_lz4` replaces the encoder its record builders call with the
fast one. The frames are the same standard LZ4 frames (independent blocks, no content
checksum), read by every consumer as before.

Measured on a batch of 2,048 card events as JSON (320 KB), one core: level 9 3.1 ms for a
ratio of 6.2, the fast compressor 0.28 ms for 4.6 (docs/design/speed.md).

It is a process-wide setting of the library, idempotent; the worker sets it when it starts
its producer.

Example:
    >>> use_fast_lz4()
    >>> import aiokafka.codec
    >>> aiokafka.codec.lz4_encode is lz4_encode_fast
    True
    >>> from aiokafka.codec import lz4_decode
    >>> lz4_decode(lz4_encode_fast(b"abc" * 100)) == b"abc" * 100
    True
"""

from __future__ import annotations

import importlib

import cramjam

FAST_LEVEL = 0  # lz4frame: below 3 is the fast compressor (LZ4_compress_fast), 3 and up LZ4HC

# the modules that look the encoder up when they build a batch (the C record builders first)
_USERS = (
    "aiokafka.codec",
    "aiokafka.record._crecords.default_records",
    "aiokafka.record._crecords.legacy_records",
    "aiokafka.record.default_records",
    "aiokafka.record.legacy_records",
)


def lz4_encode_fast(payload: bytes | bytearray | memoryview) -> bytes:
    """An LZ4 frame of ``payload`` (independent blocks, no content checksum, as Kafka wants
    them) made by the fast compressor."""
    compressor = cramjam.lz4.Compressor(level=FAST_LEVEL, content_checksum=False, block_linked=False)
    compressor.compress(payload)
    return bytes(compressor.finish())


def use_fast_lz4() -> None:
    """Make aiokafka's record builders compress LZ4 with :func:`lz4_encode_fast`."""
    for name in _USERS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # aiokafka built without its C extensions
            continue
        if hasattr(module, "lz4_encode"):
            setattr(module, "lz4_encode", lz4_encode_fast)  # noqa: B010 (a module chosen by name)
