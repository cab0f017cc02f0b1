"""How the agent proves that the server holds exactly the bytes of each part, and of the object.

A server's word that it "stored the part" proves nothing about its bytes: a byte flipped on the
wire is stored as faithfully as the right one. What proves them is a check the server made
itself, or a digest it returns that the agent can compare. Servers differ, so the agent finds out
once per endpoint and bucket, at start-up (`probe`), which proof this one offers, best first:

1. `checksum`: it refuses a part whose additional checksum (CRC32C) is wrong (AWS S3).
2. `reported`: asked for a CRC32C algorithm without a value, it answers with the CRC32C of the
   body it received; the agent compares (moto).
3. `content_md5`: it refuses a part whose Content-MD5 is wrong (Ceph RGW).
4. `etag`: its part ETag is the MD5 of what it received; the agent compares (moto, RGW).
5. `none`: nothing can be proven, and the agent says so (start-up, status, metadata).

Cheapest first: modes 1 and 2 need only the CRC32C every part gets anyway (hardware, GIL
released: the fast checksum every comparison uses); MD5, three times the CPU of everything else
the agent does per byte, only modes 3 and 4. The whole object is then proven too: the server's
ETag and whole-object CRC32C, where it reports them, against the values the agent computes from
its parts. The decisions here are pure; `probe` alone does I/O.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import NamedTuple, TypeVar

import structlog

from streamup import checksums
from streamup.checksums import b64, crc32c_of, etag_hex, md5_of, multipart_etag
from streamup.errors import NoSuchUpload, StorageError
from streamup.models import PartRecord, Proof
from streamup.retry import Backoff
from streamup.s3.client import DIGEST_REFUSED, PartAnswer, RemoteObject, S3Storage

T = TypeVar("T")
log = structlog.get_logger("streamup")
# Each probe request is tried this many times over a few seconds before the probe gives up (and
# start-up, patient for longer, runs it again).
PROBE_ATTEMPTS = 6
PROBE_BACKOFF = Backoff(first_s=0.2, factor=2.0, cap_s=2.0)


class ProofMode(StrEnum):
    """How parts are proven on this endpoint (`S3_INTEGRITY_MODE`; `auto` probes)."""

    CHECKSUM = "checksum"
    REPORTED = "reported"
    CONTENT_MD5 = "content_md5"
    ETAG = "etag"
    NONE = "none"

    @property
    def needs_md5(self) -> bool:
        return self in (ProofMode.CONTENT_MD5, ProofMode.ETAG)

    @property
    def proof(self) -> Proof:
        """What a part sent in this mode, and accepted, is proven by."""
        return _MODE_PROOF[self]


class Proven(NamedTuple):
    """A part the server holds: its ETag, and how its bytes were proven."""

    etag: str
    proof: Proof


_MODE_PROOF = {
    ProofMode.CHECKSUM: Proof.SERVER_VERIFIED,
    ProofMode.REPORTED: Proof.CHECKSUM_COMPARED,
    ProofMode.CONTENT_MD5: Proof.SERVER_VERIFIED,
    ProofMode.ETAG: Proof.ETAG_COMPARED,
    ProofMode.NONE: Proof.UNVERIFIED,
}


# Weakest first: an object is only as proven as its least proven part. A digest the server
# computed and the agent compared proves what a check the server made does; MD5 (the ETag) is
# the longer digest, but either finds any damage a wire or a disk does.
_STRENGTH = (Proof.UNVERIFIED, Proof.CHECKSUM_COMPARED, Proof.ETAG_COMPARED, Proof.SERVER_VERIFIED)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server was seen to check (or what `S3_INTEGRITY_MODE` asserts it checks)."""

    checksums_accepted: bool  # CreateMultipartUpload with a CRC32C algorithm is accepted
    checksum_verified: bool  # a part with a wrong CRC32C is refused
    md5_verified: bool  # a part with a wrong Content-MD5 is refused
    etag_is_md5: bool  # a part's ETag is the MD5 of its body
    checksum_reported: bool = False  # asked, it answers with the CRC32C of the body it received

    @property
    def mode(self) -> ProofMode:
        if self.checksum_verified:
            return ProofMode.CHECKSUM
        if self.checksum_reported:
            return ProofMode.REPORTED
        return self.mode_for(with_checksum=False)

    def mode_for(self, *, with_checksum: bool) -> ProofMode:
        """The mode for one stream's upload: without a checksum algorithm (an upload created
        before checksums) only the proofs by MD5 are left."""
        if with_checksum:
            return self.mode
        if self.md5_verified:
            return ProofMode.CONTENT_MD5
        if self.etag_is_md5:
            return ProofMode.ETAG
        return ProofMode.NONE

    @classmethod
    def forced(cls, mode: ProofMode) -> Capabilities:
        """The capabilities a forced mode asserts, without asking the server."""
        return cls(
            checksums_accepted=mode is not ProofMode.NONE,
            checksum_verified=mode is ProofMode.CHECKSUM,
            md5_verified=mode is ProofMode.CONTENT_MD5,
            etag_is_md5=mode is ProofMode.ETAG,
            checksum_reported=mode is ProofMode.REPORTED,
        )

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "checksums_accepted": self.checksums_accepted,
            "checksum_verified": self.checksum_verified,
            "content_md5_verified": self.md5_verified,
            "etag_is_md5": self.etag_is_md5,
            "checksum_reported": self.checksum_reported,
        }


def part_proof(part: PartRecord, caps: Capabilities, *, with_checksum: bool) -> Proof:
    """How well `part` is proven: as its record says, the proof of the run that sent it (a part
    sent while nothing was proven stays unverified, whatever a later run can prove).

    A part recorded before proofs were kept is judged by what the server proves now: by a check
    it made when it accepted the part (a CRC32C sent with it, its Content-MD5), by the CRC32C it
    reported for it, or by its ETag equal to its MD5. `with_checksum`: the stream's upload
    carries CRC32C (parts were sent with it); parts from before checksums carried Content-MD5.
    """
    if part.proof is not None:
        return part.proof
    if with_checksum and part.crc32c_hex and caps.checksum_verified:
        return Proof.SERVER_VERIFIED
    if with_checksum and part.crc32c_hex and caps.checksum_reported:
        return Proof.CHECKSUM_COMPARED
    if part.md5_hex and caps.md5_verified:
        return Proof.SERVER_VERIFIED
    if part.md5_hex and caps.etag_is_md5 and etag_hex(part.etag) == part.md5_hex:
        return Proof.ETAG_COMPARED
    return Proof.UNVERIFIED


def sent_part_mismatch(
    mode: ProofMode, answer: PartAnswer, *, md5: bytes | None, crc32c: bytes
) -> tuple[str, str] | None:
    """Why the server's answer to an UploadPart does not prove the part (reason, detail), or
    None when it does or the mode proves parts otherwise (a refusal, before any answer). In
    `reported` mode every part was sent asking for the server's CRC32C."""
    if mode is ProofMode.REPORTED:
        if answer.crc32c is None:
            return "no checksum reported", "the server reported no CRC32C of the part it received"
        if answer.crc32c != b64(crc32c):
            detail = f"the server reports CRC32C {answer.crc32c}, the bytes sent have {b64(crc32c)}"
            return "checksum mismatch", detail
    if mode is ProofMode.ETAG and md5 is not None and etag_hex(answer.etag) != md5.hex():
        return "ETag mismatch", f"ETag {answer.etag} is not the MD5 of the bytes sent ({md5.hex()})"
    return None


def weakest(proofs: Iterable[Proof]) -> Proof:
    """The proof of a whole made of these (a whole of nothing is unverified)."""
    found = [_STRENGTH.index(p) for p in proofs]
    return _STRENGTH[min(found)] if found else Proof.UNVERIFIED


def composite_crc32c(parts: Iterable[PartRecord]) -> str | None:
    """The object's COMPOSITE CRC32C (base64, no `-N`): the CRC32C of the parts' CRC32Cs.
    None when a part has none (a stream from before checksums)."""
    parts = list(parts)
    if not all(p.crc32c_hex for p in parts):
        return None
    return checksums.composite_crc32c(bytes.fromhex(p.crc32c_hex) for p in parts)


def object_mismatch(remote: RemoteObject, parts: list[PartRecord]) -> str | None:
    """Why the completed object is not the completion of `parts`, or None when every digest
    the server reports agrees with the one computed from the parts (and the size is right)."""
    size = sum(p.size_bytes for p in parts)
    if remote.size_bytes != size:
        return f"the object holds {remote.size_bytes} bytes, the parts {size}"
    expected = composite_crc32c(parts)
    if remote.crc32c is not None and expected is not None and remote.crc32c != expected:
        return f"the object's CRC32C is {remote.crc32c}, the parts give {expected}"
    # A multipart ETag (`"hex-N"`) is comparable where every part's MD5 is known; servers that
    # encrypt or otherwise do not use MD5 give other forms, which prove nothing either way.
    if all(p.md5_hex for p in parts) and etag_hex(remote.etag).endswith(f"-{len(parts)}"):
        expected_etag = multipart_etag(bytes.fromhex(p.md5_hex) for p in parts)
        if etag_hex(remote.etag) != etag_hex(expected_etag):
            return f"the object's ETag is {remote.etag}, the parts give {expected_etag}"
    return None


# -- the probe ---------------------------------------------------------------------------------

PROBE_BODY = b"streamup integrity probe: are damaged bytes refused?\n" * 20
PROBE_UPLOADS = 3  # probe uploads begun before one that vanished mid-probe counts as an error


async def probe(storage: S3Storage, key_prefix: str) -> Capabilities:
    """Ask the server, with one throwaway multipart upload (aborted at the end), what it checks.

    A refusal counts only when the same request with the right digest is then accepted, so a
    server that refuses checksum headers altogether is not mistaken for one that verifies them.
    Transient errors propagate (the caller retries the probe); the probe upload lives under the
    key prefix, so the orphan reaper would find it if the agent died mid-probe. An upload that
    vanishes mid-probe (another agent's reaper took it for an orphan: moto dates every upload in
    2010) is no answer: the probe begins again with a new one, PROBE_UPLOADS times at most.
    """
    begun = 1
    while True:
        try:
            return await _probe_once(storage, key_prefix)
        except NoSuchUpload as exc:
            if begun >= PROBE_UPLOADS:
                raise
            begun += 1
            log.info("s3.integrity_probe_again", reason=str(exc))


async def _probe_once(storage: S3Storage, key_prefix: str) -> Capabilities:
    key = f"{key_prefix.rstrip('/')}/.streamup-probe-{uuid.uuid4().hex}"
    body, good_crc, good_md5 = PROBE_BODY, crc32c_of(PROBE_BODY), md5_of(PROBE_BODY)
    bad_crc, bad_md5 = crc32c_of(PROBE_BODY + b"!"), md5_of(PROBE_BODY + b"!")
    try:
        upload_id = await _patient(
            lambda: storage.create_upload(key, "application/octet-stream", crc32c=True)
        )
        accepted = True
    except StorageError as exc:
        if exc.retryable:
            raise
        upload_id = await _patient(lambda: storage.create_upload(key, "application/octet-stream"))
        accepted = False
    crc = good_crc if accepted else None
    try:
        checksum_verified = accepted and await _refused(
            lambda: storage.upload_part(key, upload_id, 1, body, crc32c=bad_crc)
        )
        if checksum_verified:
            await _patient(lambda: storage.upload_part(key, upload_id, 1, body, crc32c=good_crc))
        md5_refused = await _refused(
            lambda: storage.upload_part(key, upload_id, 2, body, crc32c=crc, md5=bad_md5)
        )
        answer = await _patient(
            lambda: storage.upload_part(key, upload_id, 2, body, crc32c=crc, md5=good_md5)
        )
        reported = accepted and not checksum_verified and await _reports(storage, key, upload_id)
    finally:
        await _patient(lambda: storage.abort_upload(key, upload_id))  # gone already: fine
    return Capabilities(
        checksums_accepted=accepted,
        checksum_verified=checksum_verified,
        md5_verified=md5_refused,
        etag_is_md5=etag_hex(answer.etag) == good_md5.hex(),
        checksum_reported=reported,
    )


async def _reports(storage: S3Storage, key: str, upload_id: str) -> bool:
    """Whether the server, asked for a CRC32C without being given one, answers with the CRC32C
    of the very body it received: two different bodies, each answered with its own. (AWS S3
    refuses the request; Ceph RGW answers with none.) Not asked where the server verifies the
    checksums it is sent: that proof is as cheap, and the better one."""
    for body in (PROBE_BODY, PROBE_BODY + b"!"):
        try:
            answer = await _patient(
                partial(storage.upload_part, key, upload_id, 3, body, ask_crc32c=True)
            )
        except StorageError as exc:
            if exc.retryable and exc.code not in DIGEST_REFUSED:
                raise
            return False
        if answer.crc32c != b64(crc32c_of(body)):
            return False
    return True


async def _refused(request: Callable[[], Awaitable[object]]) -> bool:
    """True when the server answered the request with a (non-transient) refusal."""
    try:
        await _patient(request)
    except StorageError as exc:
        if exc.retryable and exc.code not in DIGEST_REFUSED:
            raise
        return True
    return False


async def _patient(request: Callable[[], Awaitable[T]]) -> T:
    """One probe request, tried again a few times while the server answers transiently (5xx,
    429, the network): one busy answer must not cost the whole probe. A digest refusal is an
    answer, not weather: it comes back at once. What stays transient goes to the caller."""
    for attempt in range(1, PROBE_ATTEMPTS):
        try:
            return await request()
        except StorageError as exc:
            if not exc.retryable or exc.code in DIGEST_REFUSED:
                raise
            await asyncio.sleep(PROBE_BACKOFF.delay_s(attempt))
    return await request()
