"""Pure decisions of issue 18: which files hold their header part back (files.container), what
a faststart file's shift is, and how its final object is cut into sent and copied pieces
(s3.rebuild_plan) within S3's part rules."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamup.files.container import faststart_shift, header_patched, top_level_boxes
from streamup.s3.parts import MAX_PART_SIZE_BYTES, MIN_PART_SIZE_BYTES, MiB
from streamup.s3.rebuild_plan import Piece, Rebuild, Shifted, StalePart, plan_pieces

PART = 5 * MiB


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


FTYP = box(b"ftyp", b"isom\0\0\2\0isomiso2avc1mp41")


@pytest.mark.parametrize(
    ("head", "patched", "shift"),
    [
        (FTYP + box(b"free") + b"\0\0\0\x08mdat" + b"x" * 100, True, None),  # plain, growing
        (FTYP + box(b"moov", b"m" * 900) + box(b"free") + b"\0\0\0\x08mdat", False, (32, 908)),
        (FTYP + box(b"moov", b"m" * 50) + box(b"moof", b"f" * 20), False, (32, 58)),  # fMP4
        (b"\x1a\x45\xdf\xa3" + b"\x93B\x86\x81\x01" * 10, True, None),  # Matroska
        (b"\x47\x40\x11\x10" + b"\xff" * 184, False, None),  # MPEG-TS
        (b"", False, None),
        (box(b"mdat") + FTYP, False, None),  # not an MP4: ftyp must come first
        (FTYP + struct.pack(">I4sQ", 1, b"mdat", 2**33), True, None),  # 64-bit mdat size
    ],
)
def test_container_heads(head: bytes, patched: bool, shift: tuple[int, int] | None) -> None:
    assert header_patched(head) is patched
    assert faststart_shift(head) == shift


@given(st.binary(max_size=200))
def test_box_walk_never_fails_on_garbage(head: bytes) -> None:
    for _kind, offset, size in top_level_boxes(head):
        assert offset < len(head) and (size == -1 or size >= 8)
    header_patched(head)
    faststart_shift(head)


@pytest.mark.parametrize(
    ("flags", "patched"),
    [([], True), (["-movflags", "+frag_keyframe+empty_moov"], False), (None, True)],
)
def test_real_ffmpeg_heads(tmp_path: Path, flags: list[str] | None, patched: bool) -> None:
    name = "a.mkv" if flags is None else "a.mp4"
    out = tmp_path / name
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=10", "-t", "1", "-c:v", "libx264", *(flags or []), str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    assert header_patched(out.read_bytes()[:65536]) is patched


def test_faststart_ffmpeg_file_is_its_old_content_shifted(tmp_path: Path) -> None:
    base = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"]
    src = [*base, "testsrc2=size=160x120:rate=10", "-t", "1", "-c:v", "libx264", "-bitexact"]
    subprocess.run([*src, str(tmp_path / "p.mp4")], check=True, timeout=60)
    subprocess.run([*src, "-movflags", "+faststart", str(tmp_path / "f.mp4")], check=True)
    plain, fast = (tmp_path / "p.mp4").read_bytes(), (tmp_path / "f.mp4").read_bytes()
    shift = faststart_shift(fast[:65536])
    assert shift is not None and faststart_shift(plain[:65536]) is None
    moved_from, by = shift
    # The media data (past the mdat header the muxer patched) sits `by` bytes further on.
    mdat = plain.index(b"mdat") + 4
    assert fast[mdat + by : mdat + by + 4096] == plain[mdat : mdat + 4096]
    assert moved_from <= mdat


def test_faststart_plan_sends_head_and_tail_and_copies_the_shifted_parts() -> None:
    d = 908
    found = [Shifted(PART + d, PART, 0), Shifted(2 * PART + d, PART, PART)]
    pieces = plan_pieces(found, 3 * PART + d + 1234, PART)
    assert pieces == (
        Piece(1, 0, PART + d),
        Piece(2, PART + d, PART, 0),
        Piece(3, 2 * PART + d, PART, PART),
        Piece(4, 3 * PART + d, 1234),
    )


def test_a_changed_part_between_copies_is_sent_and_nothing_copied_means_no_plan() -> None:
    d = 100
    found = [Shifted(PART + d, PART, 0), Shifted(3 * PART + d, PART, 2 * PART)]
    pieces = plan_pieces(found, 4 * PART + d, PART)
    assert pieces is not None
    assert [(p.offset_bytes, p.size_bytes, p.copied) for p in pieces] == [
        (0, PART + d, False),
        (PART + d, PART, True),
        (2 * PART + d, PART, False),
        (3 * PART + d, PART, True),
    ]
    assert plan_pieces([], 4 * PART, PART) is None


def test_a_plan_that_would_break_the_5_mib_rule_is_refused() -> None:
    # A copy that starts 1 MiB in would leave a 1 MiB head part before it.
    assert plan_pieces([Shifted(MiB, PART, 0)], 3 * PART, PART) is None


@given(
    st.integers(8, 3 * MiB),  # the shift
    st.lists(st.booleans(), min_size=1, max_size=12),  # which old parts were found again
    st.integers(0, 2 * PART),  # the tail past the last old part
)
def test_plans_cover_the_file_once_within_the_part_rules(
    shift: int, found_flags: list[bool], tail: int
) -> None:
    found = [
        Shifted((n + 1) * PART + shift, PART, n * PART) for n, hit in enumerate(found_flags) if hit
    ]
    size = (len(found_flags) + 1) * PART + shift + tail
    pieces = plan_pieces(found, size, PART)
    if not found:
        assert pieces is None
        return
    assert pieces is not None
    assert [p.number for p in pieces] == list(range(1, len(pieces) + 1))
    offset = 0
    for n, piece in enumerate(pieces):
        assert piece.offset_bytes == offset
        assert piece.size_bytes <= MAX_PART_SIZE_BYTES
        assert piece.size_bytes >= MIN_PART_SIZE_BYTES or n == len(pieces) - 1
        offset += piece.size_bytes
    assert offset == size
    assert sum(p.size_bytes for p in pieces if p.copied) == len(found) * PART


def test_rebuild_intent_round_trips_through_json() -> None:
    plan = Rebuild(
        stale_upload_id="u-1",
        stale_parts=(StalePart(2, '"e"', "0a0b0c0d", "ff" * 16, PART),),
        stale_etag='"x-1"',
        shift_bytes=908,
        pieces=(Piece(1, 0, PART + 908), Piece(2, PART + 908, PART, 0)),
        file_size_bytes=2 * PART + 908,
        file_mtime_ns=123,
    )
    assert Rebuild.from_json(plan.to_json()) == plan
    assert plan.copied_bytes == PART
