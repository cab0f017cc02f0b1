"""Pure checksum arithmetic every room may use: the digests S3 headers carry, and the object
digests S3 derives from its parts. No I/O; the big hashes run where the bytes are read."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

import crc32c as _crc32c


def crc32c_of(body: bytes | memoryview) -> bytes:
    """CRC32C as S3 sends it: 4 bytes, big-endian (hardware-accelerated, releases the GIL)."""
    return _crc32c.crc32c(body).to_bytes(4, "big")


def crc32c_update(value: int, body: bytes | memoryview) -> int:
    """CRC32C continued over `body` from `value` (0 to begin), as an integer."""
    return int(_crc32c.crc32c(body, value))


def md5_of(body: bytes | memoryview) -> bytes:
    return hashlib.md5(body, usedforsecurity=False).digest()


def b64(digest: bytes) -> str:
    """A raw digest as S3 headers carry it."""
    return base64.b64encode(digest).decode("ascii")


def etag_hex(etag: str) -> str:
    """An ETag without its quotes, lower-case."""
    return etag.strip().strip('"').lower()


def multipart_etag(md5_digests: Iterable[bytes]) -> str:
    """The ETag S3 gives a completed multipart object: MD5 of the parts' MD5s, dash, count.

    Used after a crash during completion: an object with this ETag is the one we completed.
    """
    digests = list(md5_digests)
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f'"{combined}-{len(digests)}"'


def composite_crc32c(part_digests: Iterable[bytes]) -> str | None:
    """A COMPOSITE CRC32C (base64, without S3's `-N`): the CRC32C of the parts' CRC32Cs."""
    digests = list(part_digests)
    return b64(crc32c_of(b"".join(digests))) if digests else None
