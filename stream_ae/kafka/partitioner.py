"""Kafka's default partitioner for whole batches: murmur2 of the key, vectorised with numpy.

A keyed record goes to partition ``(murmur2(key) & 0x7fffffff) % partitions``, exactly as the
Java client and aiokafka's ``DefaultPartitioner`` choose (so consumers that rely on keyed
ordering see no change when the worker produces in batches). aiokafka's ``murmur2`` is pure
Python, about 3 µs a key; :func:`murmur2` hashes a whole batch of keys with a handful of
numpy operations per 4-byte block of the longest key. Keys longer than
:data:`VECTOR_KEY_BYTES` (rare; hostile keys can be a megabyte) are hashed one by one with the
scalar reference so that one long key does not pad the whole batch.

Records without a key are *sticky*, as in the Java client since Kafka 2.4: all of a batch's
unkeyed records for a topic go to one partition, drawn at random per batch.

Example:
    >>> from aiokafka.partitioner import murmur2 as reference
    >>> keys = [b"card-1", b"", b"a much longer key of 41 bytes, say......"]
    >>> [int(h) for h in murmur2(keys)] == [reference(k) for k in keys]
    True
    >>> partition_for_keys([b"card-1", b"card-2"], 4).tolist()
    [3, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from aiokafka.partitioner import murmur2 as murmur2_scalar
from numpy.typing import NDArray

SEED = np.uint32(0x9747B28C)
M = np.uint32(0x5BD1E995)
VECTOR_KEY_BYTES = 256  # longer keys are hashed one at a time


def murmur2(keys: Sequence[bytes]) -> NDArray[np.uint32]:
    """Kafka's murmur2 of every key (unsigned 32-bit), in one pass over the batch."""
    n = len(keys)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    out = np.empty(n, dtype=np.uint32)
    long_keys = np.flatnonzero(lengths > VECTOR_KEY_BYTES)
    for i in long_keys.tolist():
        out[i] = murmur2_scalar(keys[i])
    short = np.flatnonzero(lengths <= VECTOR_KEY_BYTES)
    if len(short) == n:
        out[:] = _murmur2_padded(keys, lengths)
    elif len(short):
        out[short] = _murmur2_padded([keys[i] for i in short.tolist()], lengths[short])
    return out


def _murmur2_padded(keys: Sequence[bytes], lengths: NDArray[np.int64]) -> NDArray[np.uint32]:
    n = len(keys)
    width = int(-(-max(int(lengths.max(initial=0)), 1) // 4) * 4)  # the longest key, rounded up to 4 bytes
    flat = np.frombuffer(b"".join(keys), dtype=np.uint8)
    padded = np.zeros((n, width), dtype=np.uint8)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    padded[rows, np.arange(len(flat)) - np.repeat(starts, lengths)] = flat
    words = padded.view("<u4")  # little-endian 4-byte blocks, as the reference combines them
    blocks = lengths // 4
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as Java's int does
        h = SEED ^ lengths.astype(np.uint32)
        for j in range(int(blocks.max(initial=0))):
            k = words[:, j] * M
            k ^= k >> np.uint32(24)
            k *= M
            h = np.where(j < blocks, (h * M) ^ k, h)
        extra = lengths % 4
        base = lengths & ~3
        rows_all = np.arange(n)
        for offset in (2, 1, 0):  # the last 1-3 bytes, highest first
            has = extra > offset
            byte = padded[rows_all, np.minimum(base + offset, width - 1)].astype(np.uint32)
            h = np.where(has, h ^ (byte << np.uint32(8 * offset)), h)
        h = np.where(extra > 0, h * M, h)
        h ^= h >> np.uint32(13)
        h *= M
        h ^= h >> np.uint32(15)
    return h


def partition_for_keys(keys: Sequence[bytes], partitions: int) -> NDArray[np.int64]:
    """The default partitioner's choice for each (non-null) key among ``partitions``."""
    return (murmur2(keys) & np.uint32(0x7FFFFFFF)).astype(np.int64) % partitions
