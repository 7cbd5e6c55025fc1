"""Which requests a challenger answers in split mode: a stable assignment by a hash of the request_id, the same in
plain Python (a REST front end, a test, an offline check) and in a Spark column expression (the scorer).

CRC-32 of the request_id's UTF-8 bytes, modulo BUCKETS, below share * BUCKETS. CRC-32 because both sides have
it built in and agree bit for bit: Python's `zlib.crc32` and Spark's `crc32` (java.util.zip.CRC32) both return
the unsigned 32-bit value. Spark's `hash`/`xxhash64` are seeded Murmur3/xxHash variants with no stdlib twin in
Python. The same request_id always lands on the same side, so a retried request and its actual stay together.
No pyspark import here; `in_challenger_column` imports it when called.
"""

from __future__ import annotations

import zlib

BUCKETS = 10_000  # the share's resolution: 0.01 %


def threshold(share: float) -> int:
    """Buckets [0, threshold) go to the challenger."""
    if not 0 <= share <= 1:
        raise ValueError(f"challenger share must be in [0, 1], got {share!r}")
    return round(share * BUCKETS)


def bucket(request_id: str) -> int:
    return zlib.crc32(request_id.encode("utf-8")) % BUCKETS


def in_challenger(request_id: str, share: float) -> bool:
    """True when the challenger answers this request in split mode."""
    return bucket(request_id) < threshold(share)


def in_challenger_column(request_id, share: float):
    """The same decision as a Spark Column over a string column (a Column or its name); null for a null id."""
    from pyspark.sql import functions as F

    rid = F.col(request_id) if isinstance(request_id, str) else request_id
    # a string cast to binary is its UTF-8 bytes; crc32 is a bigint in [0, 2^32)
    return (F.crc32(rid.cast("binary")) % BUCKETS) < threshold(share)
