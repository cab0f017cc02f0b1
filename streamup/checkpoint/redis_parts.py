"""A part's record in the Redis store: two hash fields, written together by one script.

`stream:{id}:parts` field N: `"{etag}:{size_bytes}:{uploaded_at_iso}"` (the seed's schema).
`stream:{id}:checksums` field N: `"{offset_bytes}:{md5_hex}:{crc32c_hex}:{flag}:{proof}"`:
either checksum may be empty; `flag` is `copied` for a part the server copied from a completed
object, else empty; `proof` is how the server proved the part (s3.integrity). Older records
are shorter: before proofs were kept they end at the flag (`:copied`, or nothing), before CRC32C
at the MD5. Pure: parsing and formatting, no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from streamup.checkpoint.codec import parse_count, parse_proof, quote
from streamup.errors import CheckpointCorrupt
from streamup.models import PartRecord, Proof, iso, parse_iso


def parts_key(stream_id: str) -> str:
    return f"stream:{stream_id}:parts"


def checksums_key(stream_id: str) -> str:
    return f"stream:{stream_id}:checksums"


class _Checksums(NamedTuple):
    offset_bytes: int
    md5_hex: str
    crc32c_hex: str
    copied: bool
    proof: Proof | None


def part_values(part: PartRecord) -> tuple[str, str]:
    """The part's two field values: (parts hash, checksums hash)."""
    value = f"{part.etag}:{part.size_bytes}:{iso(part.uploaded_at)}"
    flag = "copied" if part.copied else ""
    checksum = f"{part.offset_bytes}:{part.md5_hex}:{part.crc32c_hex}:{flag}:{part.proof or ''}"
    return value, checksum


def parse_part_value(stream_id: str, number: str, value: str) -> tuple[str, int, datetime]:
    """`"{etag}:{size_bytes}:{uploaded_at_iso}"` -> (etag, size, uploaded_at).

    Split at most twice from the left: ETags hold no colon, ISO timestamps do.
    """
    where = f"{parts_key(stream_id)} field {number}"
    pieces = value.split(":", 2)
    if len(pieces) != 3:
        raise _corrupt(where, "expected 'etag:size_bytes:uploaded_at'", value)
    etag, size_text, stamp = pieces
    if not etag:
        raise _corrupt(where, "empty ETag", value)
    try:
        size_bytes = parse_count(size_text)
    except ValueError:
        raise _corrupt(where, "size is not a non-negative integer", value) from None
    try:
        uploaded_at = parse_iso(stamp)
    except ValueError:
        raise _corrupt(where, "unreadable upload time", value) from None
    return etag, size_bytes, uploaded_at


def parse_checksum_value(stream_id: str, number: str, value: str) -> _Checksums:
    """`"{offset_bytes}:{md5_hex}[:{crc32c_hex}[:{flag}[:{proof}]]]"` -> its fields."""
    where = f"{checksums_key(stream_id)} field {number}"
    fields = value.split(":")
    if not 2 <= len(fields) <= 5:
        raise _corrupt(where, "expected 'offset_bytes:md5_hex:crc32c_hex:flag:proof'", value)
    offset_text, md5_hex, crc32c_hex, flag, proof_text = fields + [""] * (5 - len(fields))
    if flag not in ("", "copied"):
        raise _corrupt(where, "unknown part flag", value)
    try:
        offset_bytes = parse_count(offset_text)
    except ValueError:
        raise _corrupt(where, "offset is not a non-negative integer", value) from None
    if not (md5_hex or crc32c_hex):
        raise _corrupt(where, "no checksum", value)
    try:
        proof = parse_proof(proof_text)
    except ValueError:
        raise _corrupt(where, "unknown proof", value) from None
    return _Checksums(offset_bytes, md5_hex, crc32c_hex, flag == "copied", proof)


def build_parts(
    stream_id: str, parts: dict[str, str], checksums: dict[str, str]
) -> dict[int, PartRecord]:
    """Join a stream's parts and checksums hashes; both are written together, so a part without
    a checksum (or the reverse) means the store was damaged."""
    orphans = sorted(set(checksums) - set(parts))
    if orphans:
        raise CheckpointCorrupt(f"{checksums_key(stream_id)}: checksums of unknown parts {orphans}")
    records = {}
    for field, value in parts.items():
        try:
            number = parse_count(field)
        except ValueError:
            raise _corrupt(parts_key(stream_id), "part number is not an integer", field) from None
        etag, size_bytes, uploaded_at = parse_part_value(stream_id, field, value)
        if field not in checksums:
            raise CheckpointCorrupt(f"{checksums_key(stream_id)}: no checksum of part {field}")
        sums = parse_checksum_value(stream_id, field, checksums[field])
        records[number] = PartRecord(
            number, sums.offset_bytes, size_bytes, etag, sums.md5_hex, uploaded_at,
            crc32c_hex=sums.crc32c_hex, copied=sums.copied, proof=sums.proof,
        )  # fmt: skip
    return dict(sorted(records.items()))


def _corrupt(where: str, problem: str, value: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"{where}: {problem}: {quote(value)}")
