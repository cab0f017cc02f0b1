"""The proof of every byte: pure decisions in tables, the probe against moto's real server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest
from structlog.testing import capture_logs

from streamup.checksums import b64, crc32c_of, md5_of, multipart_etag
from streamup.files.hashing import PrefixHash
from streamup.files.mounts import filesystem_type, mounts
from streamup.models import PartRecord, Proof, ReadMark
from streamup.s3.client import PartAnswer, RemoteObject, S3Storage
from streamup.s3.integrity import (
    Capabilities,
    ProofMode,
    composite_crc32c,
    object_mismatch,
    part_proof,
    probe,
    sent_part_mismatch,
    weakest,
)
from streamup.s3.parts import PartSpan
from streamup.stream.lifecycle import unchanged_since_read
from tests.conftest import BOTH_SERVERS
from tests.proxy import FaultProxy

T0 = datetime(2026, 12, 1, tzinfo=UTC)
S = 1_000_000_000  # one second in ns


def part(number: int, body: bytes, *, etag: str | None = None, md5: bool = True) -> PartRecord:
    return PartRecord(
        number, 0, len(body), etag if etag is not None else f'"{md5_of(body).hex()}"',
        md5_of(body).hex() if md5 else "", T0, crc32c_hex=crc32c_of(body).hex(),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("caps", "mode"),
    [
        (Capabilities(True, True, True, True), ProofMode.CHECKSUM),  # AWS S3
        (Capabilities(True, False, False, True, True), ProofMode.REPORTED),  # moto
        (Capabilities(True, False, True, True), ProofMode.CONTENT_MD5),  # Ceph RGW
        (Capabilities(True, False, False, True), ProofMode.ETAG),  # moto, forced
        (Capabilities(False, False, False, False), ProofMode.NONE),
    ],
)
def test_the_best_proof_the_server_offers_is_chosen(caps: Capabilities, mode: ProofMode) -> None:
    assert caps.mode is mode
    assert Capabilities.forced(mode).mode is mode


def test_an_upload_from_before_checksums_is_proven_by_md5_where_the_server_allows() -> None:
    aws = Capabilities(True, True, True, True)
    moto = Capabilities(True, False, False, True, True)
    assert aws.mode_for(with_checksum=False) is ProofMode.CONTENT_MD5
    assert moto.mode_for(with_checksum=False) is ProofMode.ETAG
    assert moto.mode_for(with_checksum=True) is ProofMode.REPORTED
    forced = Capabilities.forced(ProofMode.REPORTED)
    assert forced.mode_for(with_checksum=False) is ProofMode.NONE
    assert not ProofMode.REPORTED.needs_md5


def test_a_part_is_proven_by_the_servers_check_or_by_its_etag() -> None:
    body = b"x" * 100
    modes = (ProofMode.CHECKSUM, ProofMode.CONTENT_MD5, ProofMode.ETAG)
    aws, rgw, moto = (Capabilities.forced(m) for m in modes)
    assert part_proof(part(1, body, md5=False), aws, with_checksum=True) is Proof.SERVER_VERIFIED
    # An upload created before checksums: its parts carried Content-MD5 only.
    assert part_proof(part(1, body, md5=False), aws, with_checksum=False) is Proof.UNVERIFIED
    assert part_proof(part(1, body), rgw, with_checksum=True) is Proof.SERVER_VERIFIED
    assert part_proof(part(1, body), moto, with_checksum=True) is Proof.ETAG_COMPARED
    damaged = part(1, body, etag=f'"{md5_of(b"y" * 100).hex()}"')
    assert part_proof(damaged, moto, with_checksum=True) is Proof.UNVERIFIED
    none = Capabilities.forced(ProofMode.NONE)
    assert part_proof(part(1, body), none, with_checksum=True) is Proof.UNVERIFIED
    # The server reported each part's CRC32C, which matched (a part is recorded only then).
    reported = Capabilities.forced(ProofMode.REPORTED)
    no_md5 = part(1, body, md5=False)
    assert part_proof(no_md5, reported, with_checksum=True) is Proof.CHECKSUM_COMPARED
    # A part from before checksums (Content-MD5 only) is proven by nothing the mode has.
    assert part_proof(no_md5, reported, with_checksum=False) is Proof.UNVERIFIED


@pytest.mark.parametrize(
    ("mode", "proof"),
    [
        (ProofMode.CHECKSUM, Proof.SERVER_VERIFIED),
        (ProofMode.REPORTED, Proof.CHECKSUM_COMPARED),
        (ProofMode.CONTENT_MD5, Proof.SERVER_VERIFIED),
        (ProofMode.ETAG, Proof.ETAG_COMPARED),
        (ProofMode.NONE, Proof.UNVERIFIED),
    ],
)
def test_a_part_is_recorded_with_the_proof_of_the_mode_it_was_sent_in(
    mode: ProofMode, proof: Proof
) -> None:
    assert mode.proof is proof
    # Recorded, the proof stands whatever the later run can prove: a part sent while nothing
    # was proven is not counted as compared because the server now reports checksums.
    body = b"x" * 100
    recorded = dataclasses.replace(part(1, body), proof=proof)
    for caps in (Capabilities.forced(m) for m in ProofMode):
        assert part_proof(recorded, caps, with_checksum=True) is proof


def test_the_servers_answer_to_a_part_proves_it_or_says_why_not() -> None:
    body, other = b"x" * 100, b"y" * 100
    crc, md5 = crc32c_of(body), md5_of(body)
    right = PartAnswer(f'"{md5.hex()}"', b64(crc))
    for mode in ProofMode:
        assert sent_part_mismatch(mode, right, md5=md5, crc32c=crc) is None
    reported = ProofMode.REPORTED
    damaged = PartAnswer(right.etag, b64(crc32c_of(other)))
    assert sent_part_mismatch(reported, damaged, md5=None, crc32c=crc) == (
        "checksum mismatch",
        f"the server reports CRC32C {b64(crc32c_of(other))}, the bytes sent have {b64(crc)}",
    )
    silent = PartAnswer(right.etag, None)
    reason = sent_part_mismatch(reported, silent, md5=None, crc32c=crc)
    assert reason is not None and reason[0] == "no checksum reported"
    wrong_etag = PartAnswer(f'"{md5_of(other).hex()}"', None)
    reason = sent_part_mismatch(ProofMode.ETAG, wrong_etag, md5=md5, crc32c=crc)
    assert reason is not None and reason[0] == "ETag mismatch"


def test_an_object_is_only_as_proven_as_its_weakest_part() -> None:
    assert weakest([Proof.SERVER_VERIFIED, Proof.ETAG_COMPARED]) is Proof.ETAG_COMPARED
    assert weakest([Proof.SERVER_VERIFIED] * 3) is Proof.SERVER_VERIFIED
    assert weakest([Proof.ETAG_COMPARED, Proof.UNVERIFIED]) is Proof.UNVERIFIED
    assert weakest([Proof.ETAG_COMPARED, Proof.CHECKSUM_COMPARED]) is Proof.CHECKSUM_COMPARED
    assert weakest([]) is Proof.UNVERIFIED


def test_the_completed_object_is_compared_with_its_parts() -> None:
    bodies = [os.urandom(64), os.urandom(32)]
    parts = [part(n, b) for n, b in enumerate(bodies, start=1)]
    etag = multipart_etag(md5_of(b) for b in bodies)
    crc = composite_crc32c(parts)
    assert crc is not None
    assert object_mismatch(RemoteObject(96, etag, crc, "COMPOSITE"), parts) is None
    assert object_mismatch(RemoteObject(96, etag), parts) is None  # no CRC reported: ETag
    assert "bytes" in (object_mismatch(RemoteObject(95, etag, crc), parts) or "")
    assert "CRC32C" in (object_mismatch(RemoteObject(96, etag, "AAAAAA=="), parts) or "")
    other = multipart_etag([md5_of(b"a"), md5_of(b"b")])
    assert "ETag" in (object_mismatch(RemoteObject(96, other), parts) or "")
    # An ETag of another form (an encrypting server) proves nothing either way.
    assert object_mismatch(RemoteObject(96, '"0123abcd"'), parts) is None


NOW = ReadMark(wall_ns=1_000 * S, mono_ns=1_000 * S)


@pytest.mark.parametrize(
    ("read", "ctime_ns", "local", "expected"),
    [
        (ReadMark(900 * S, 900 * S), 800 * S + 123, True, True),  # changed long before the read
        (ReadMark(900 * S, 900 * S), 900 * S + 1, True, False),  # changed after the read began
        (ReadMark(900 * S, 900 * S), 900 * S - 5_000_000, True, False),  # within a clock tick
        (ReadMark(900 * S, 900 * S), 899 * S + 500_000_000, True, True),  # 0.5 s before: safe
        (ReadMark(900 * S, 900 * S), 899 * S, True, False),  # whole seconds: a coarse fs
        (ReadMark(900 * S, 900 * S), 897 * S, True, True),  # coarse, but 3 s before
        (ReadMark(900 * S, 900 * S), 800 * S + 123, False, False),  # a network filesystem
        (ReadMark(900 * S, 990 * S), 800 * S + 123, True, False),  # the wall clock jumped
    ],
)
def test_a_part_read_after_the_files_last_change_cannot_have_changed(
    read: ReadMark, ctime_ns: int, local: bool, expected: bool
) -> None:
    assert unchanged_since_read(read, ctime_ns, NOW, local=local) is expected


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:27 / /data rw,nosuid shared:7 - nfs4 server:/export rw,vers=4.2
31 30 0:28 / /data/local\\040disk rw shared:8 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/home/rec/a.mp4", "ext4"),
        ("/data/cam/a.mp4", "nfs4"),
        ("/data/local disk/a.mp4", "tmpfs"),
        ("/data/localdisk/a.mp4", "nfs4"),  # a prefix of a mount point is not inside it
    ],
)
def test_the_filesystem_of_a_path_is_its_longest_mount(path: str, fstype: str) -> None:
    assert filesystem_type(path, mounts(MOUNTINFO)) == fstype


async def test_the_running_hash_takes_parts_in_order_and_restarts_before_a_changed_one() -> None:
    bodies = [os.urandom(1000) for _ in range(3)]
    spans = [PartSpan(n + 1, 1000 * n, 1000) for n in range(3)]
    running = PrefixHash()
    for span, body in zip(spans, bodies, strict=True):
        assert running.feed(span, body, crc32c_of(body).hex()) is not None
    assert running.feed(PartSpan(5, 4000, 1000), b"z" * 1000, "00") is None  # a gap: not taken
    assert await running.hexdigest() == hashlib.sha256(b"".join(bodies)).hexdigest()
    assert running.covers(spans[1], crc32c_of(bodies[1]).hex())
    assert not running.covers(spans[1], crc32c_of(b"other").hex())
    # Part 2 changed: the hash goes on from its state before part 2.
    state = await running.state_at(spans[1])
    assert state is not None
    again = PrefixHash(state, 1000)
    new = os.urandom(1000)
    again.feed(spans[1], new, crc32c_of(new).hex())
    again.feed(spans[2], bodies[2], crc32c_of(bodies[2]).hex())
    assert await again.hexdigest() == hashlib.sha256(bodies[0] + new + bodies[2]).hexdigest()
    # The file shrank below part 2: the hash forgets parts 2 and 3 and continues from part 1.
    running.truncate(2)
    assert running.end_bytes == 1000
    running.feed(spans[1], new, crc32c_of(new).hex())
    assert await running.hexdigest() == hashlib.sha256(bodies[0] + new).hexdigest()


# moto accepts CRC32C uploads, checks neither a checksum nor Content-MD5, and its part ETags
# are MD5s; asked for a CRC32C without a value, it computes one of the body it received: the
# agent compares that. Ceph RGW accepts and ignores checksums (reports none) but refuses a
# wrong Content-MD5 (compat/README.md).
SEEN_ON = {
    "moto": Capabilities(
        checksums_accepted=True,
        checksum_verified=False,
        md5_verified=False,
        etag_is_md5=True,
        checksum_reported=True,
    ),
    "rgw": Capabilities(
        checksums_accepted=True,
        checksum_verified=False,
        md5_verified=True,
        etag_is_md5=True,
        checksum_reported=False,
    ),
}


async def test_a_probe_whose_upload_another_agent_aborts_begins_again(
    s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    """Two agents starting at once on one bucket: the first one's reaper takes the second one's
    probe upload for an orphan (moto dates every upload in 2010) and aborts it mid-probe."""
    proxy = FaultProxy(s3_endpoint).start()
    aborted: list[str] = []

    def reaper(data: bytes) -> None:
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        if aborted or not line.startswith("PUT ") or "partNumber=2" not in line:
            return
        path, _, query = line.split(" ")[1].partition("?")
        key = unquote(path.split(f"/{bucket}/", 1)[1])
        upload_id = unquote(query.split("uploadId=", 1)[1].split("&")[0])
        s3_client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        aborted.append(key)

    proxy.before_forward = reaper
    storage = S3Storage(
        bucket=bucket, region="us-east-1", endpoint_url=proxy.url,
        access_key_id="testing", secret_access_key="testing",
    )  # fmt: skip
    await storage.open()
    try:
        await storage.ensure_bucket()
        with capture_logs() as logs:
            caps = await probe(storage, "streams")
        assert caps == SEEN_ON["moto"]
        assert len(aborted) == 1 and ".streamup-probe-" in aborted[0]
        assert [e["event"] for e in logs] == ["s3.integrity_probe_again"]
        assert await storage.list_uploads("streams/") == []
    finally:
        await storage.close()
        proxy.stop()


@BOTH_SERVERS
async def test_the_probe_finds_what_the_server_checks_and_leaves_nothing_behind(
    storage: S3Storage, s3_backend: str
) -> None:
    caps = await probe(storage, "streams")
    assert caps == SEEN_ON[s3_backend]
    assert caps.mode is {"moto": ProofMode.REPORTED, "rgw": ProofMode.CONTENT_MD5}[s3_backend]
    assert await storage.list_uploads("streams/") == []
