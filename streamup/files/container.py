"""Pure: what a recording's first bytes say about how its writer will rewrite it.

Two things matter to the upload. Whether the muxer goes back and patches the file's header when
it stops (an MP4 whose `mdat` comes before `moov` gets its `mdat` size written at the end;
Matroska its segment size, duration and cues pointer): such a file's first part is held back
while it grows (`header_patched`). And whether a finished MP4 had its `moov` moved to the front
(`-movflags +faststart`): then everything after `ftyp` is the old content shifted by the size of
`moov` (`faststart_shift`), which the server can copy instead of the agent sending it again.

Fragmented MP4 (`moov` first, then `moof`/`mdat` pairs) and MPEG-TS are written once and never
patched: they are uploaded as they grow, first part included.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# How much of the file's start the sniffers read: ftyp, free and the box after them.
HEAD_BYTES = 64 * 1024
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska and WebM


def top_level_boxes(head: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset, size) of the MP4 boxes that start within `head`, in order; stops at a
    box that is not well formed. A box of size 0 runs to the end of the file (size -1 here)."""
    offset = 0
    while offset + 8 <= len(head):
        size, kind = struct.unpack_from(">I4s", head, offset)
        if size == 1:
            if offset + 16 > len(head):
                return
            size = struct.unpack_from(">Q", head, offset + 8)[0]
            if size < 16:
                return
        elif size == 0:
            yield kind, offset, -1
            return
        elif size < 8:
            return
        if not kind.isascii() or (not kind.isalnum() and kind != b"free"):
            return
        yield kind, offset, size
        offset += size


def _first_media_box(head: bytes) -> bytes | None:
    """`moov`, `mdat` or `moof`, whichever comes first, in an MP4 that starts with `ftyp`."""
    for number, (kind, _offset, _size) in enumerate(top_level_boxes(head)):
        if number == 0 and kind != b"ftyp":
            return None
        if kind in (b"moov", b"mdat", b"moof"):
            return kind
    return None


def header_patched(head: bytes) -> bool:
    """True when the writer will rewrite the file's first bytes when it stops: an MP4 with
    `mdat` before `moov` (plain, or faststart before its move), or Matroska / WebM."""
    if head.startswith(_EBML_MAGIC):
        return True
    return _first_media_box(head) == b"mdat"


def faststart_shift(head: bytes) -> tuple[int, int] | None:
    """For an MP4 that starts `ftyp`, `moov` (a faststart file): (where the moved content
    starts, by how many bytes it moved) = (end of `ftyp`, size of `moov`). None otherwise."""
    boxes = list(top_level_boxes(head))
    if len(boxes) < 2 or boxes[0][0] != b"ftyp" or boxes[1][0] != b"moov":
        return None
    moov_size = boxes[1][2]
    if moov_size <= 0:
        return None
    return boxes[1][1], moov_size
