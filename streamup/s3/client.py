"""The S3 multipart client (aiobotocore). Every library error is translated here, once.

botocore's own retries are switched off: the agent's retry loop (retry.py) is the only one, and
it decides on StorageError.retryable, so a blip deep inside a request is retried however it shows.

Only the hashing the proof needs (s3.integrity): the agent computes each part's CRC32C (and MD5
where the server's proof needs it) off the event loop and hands them in; botocore adds no
checksum of its own and signs no payload (`UNSIGNED-PAYLOAD`: the part's checksum protects the
body, and a payload SHA-256 would cost as much CPU as the rest of the upload together).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    ReadTimeoutError,
)

from streamup.checksums import b64, etag_hex
from streamup.errors import NoSuchUpload, StorageError
from streamup.s3.body import PartBody
from streamup.s3.object_options import ObjectOptions, encode_tags

T = TypeVar("T")

# Set around one UploadPart that asks the server for the CRC32C of what it received: botocore,
# given ChecksumAlgorithm, would compute the checksum itself, so the header is added here instead.
_ASK_CRC32C: contextvars.ContextVar[bool] = contextvars.ContextVar("ask_crc32c", default=False)


def _name_crc32c_if_asked(params: dict[str, Any], **_: Any) -> None:
    if _ASK_CRC32C.get():
        params["headers"]["x-amz-sdk-checksum-algorithm"] = "CRC32C"


_NETWORK_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)
_WIRE_ERRORS = (ClientError, *_NETWORK_ERRORS)

# S3 error codes that mean "try again later" (throttling, server trouble, a slow request).
_RETRYABLE_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
        "OperationAborted",
    }
)
# Answers that mean "the multipart upload is gone" when they come from a request on an upload:
# NoSuchUpload (AWS, moto; RGW for UploadPart and Abort) and NoSuchKey (RGW's ListParts).
_UPLOAD_OPERATIONS = frozenset(
    {"UploadPart", "UploadPartCopy", "ListParts", "CompleteMultipartUpload", "AbortMultipartUpload"}
)
# A server error about an upload may mean it is gone too (RGW's Complete and moto's UploadPart
# answer 500 for an aborted upload): ListParts decides before it is retried as weather.
_SERVER_ERROR_CODES = frozenset({"InternalError", "500"})
_HINTS = {
    "AccessDenied": "check the credentials and the bucket policy",
    "403": "access denied: check S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY and the bucket policy",
    "InvalidAccessKeyId": "check S3_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "check S3_SECRET_ACCESS_KEY",
    "NoSuchBucket": "create the bucket or check S3_BUCKET_NAME",
    "InvalidBucketName": "S3_BUCKET_NAME must be 3-63 lowercase letters, digits, dots or hyphens",
    "EntityTooSmall": "a part under 5 MiB that is not the last; this is a bug, please report it",
}
# The server refused a part because its bytes did not match the checksum sent with them: the
# bytes were damaged on the way, and sending them again is the cure.
DIGEST_REFUSED = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "BadChecksum"}
)


@dataclass(frozen=True, slots=True)
class RemotePart:
    number: int
    etag: str
    size_bytes: int
    modified_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """What HeadObject says of a completed object; `crc32c` is its whole-object CRC32C as the
    server reports it (base64, without a `-N` suffix), when it keeps one."""

    size_bytes: int
    etag: str
    crc32c: str | None = None
    checksum_type: str | None = None


@dataclass(frozen=True, slots=True)
class PartAnswer:
    """What UploadPart or UploadPartCopy answers: the part's ETag, and the CRC32C (base64) the
    server reports for it, if it reports one."""

    etag: str
    crc32c: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteUpload:
    key: str
    upload_id: str
    initiated_at: datetime
    checksum_algorithm: str = ""  # as CreateMultipartUpload asked (where the server says)


def _completed_part(number: int, etag: str, crc32c: bytes | None) -> dict[str, object]:
    part: dict[str, object] = {"PartNumber": number, "ETag": etag}
    if crc32c is not None:
        part["ChecksumCRC32C"] = b64(crc32c)
    return part


def translate(exc: BaseException, what: str) -> StorageError:
    """Map an aiobotocore / aiohttp / OS error to a StorageError with the right retry flag."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        # 501 NotImplemented (a server without UploadPartCopy, say) never cures itself.
        server_trouble = status >= 500 and code != "NotImplemented"
        retryable = (
            code in _RETRYABLE_CODES or code in DIGEST_REFUSED or server_trouble or status == 429
        )
        hint = _HINTS.get(code)
        message = f"{what}: {code or status} {error.get('Message') or ''}".strip()
        if hint:
            message = f"{message} ({hint})"
        gone = code == "NoSuchUpload" or (
            code == "NoSuchKey" and exc.operation_name in _UPLOAD_OPERATIONS
        )
        if gone:
            return NoSuchUpload(message, code=code)
        happened = f"answered {status} {code}" if code != str(status) else f"answered {status}"
        return StorageError(message, code=code, retryable=retryable, happened=happened)
    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"{what}: no S3 credentials found (set S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY)",
            code="NoCredentials",
        )
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | asyncio.TimeoutError):
        # Connection refused/reset, DNS, timeouts, a truncated response: the network, not us.
        return StorageError(
            f"{what}: {type(exc).__name__}: {exc}", code="Network", retryable=True,
            happened=network_happening(exc),
        )  # fmt: skip
    raise exc


def network_happening(exc: BaseException) -> str:
    """What a network error was, in words, from the deepest cause that says so."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        number = seen.errno if isinstance(seen, OSError) else None
        if isinstance(seen, ConnectionRefusedError) or number == errno.ECONNREFUSED:
            return "refused the connection"
        if isinstance(seen, ConnectionResetError) or number == errno.ECONNRESET:
            return "reset the connection"
        if isinstance(seen, socket.gaierror):
            return "has a name that does not resolve"
        if isinstance(seen, TimeoutError | ReadTimeoutError | ConnectTimeoutError):
            return "did not answer in time"
        if number in (errno.EMFILE, errno.ENFILE):
            return "could not be reached: this process is out of file descriptors"
        kwargs = getattr(seen, "kwargs", None)  # botocore keeps the aiohttp error there
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        seen = inner if isinstance(inner, BaseException) else (seen.__cause__ or seen.__context__)
    return f"could not be reached ({type(exc).__name__})"


class S3Storage:
    """One S3 client with a connection pool sized to the upload concurrency."""

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_connections: int = 10,
    ) -> None:
        self.bucket = bucket
        self._client_args: dict[str, Any] = {
            "region_name": region,
            "endpoint_url": endpoint_url,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "config": AioConfig(
                retries={"total_max_attempts": 1},
                max_pool_connections=max_connections,
                connect_timeout=10,
                read_timeout=120,
                # The agent hands in the checksums the proof needs; botocore's own would be a
                # second hash of every byte for nothing.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3=dict(
                    {"payload_signing_enabled": False},
                    **({"addressing_style": "path"} if endpoint_url else {}),
                ),
            ),
        }
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self.conditional_writes = True  # turned off when the server does not support them

    async def open(self) -> None:
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", **self._client_args)
        )
        self._client.meta.events.register("before-call.s3.UploadPart", _name_crc32c_if_asked)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (TimeoutError, ClientError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, what) from exc

    async def _about_upload(self, key: str, upload_id: str, call: Callable[[], Awaitable[T]]) -> T:
        """A request on an upload; a server error is NoSuchUpload when ListParts says it is gone."""
        try:
            return await call()
        except StorageError as exc:
            if exc.code not in _SERVER_ERROR_CODES or not await self._upload_gone(key, upload_id):
                raise
            raise NoSuchUpload(f"{exc}; ListParts: the upload is gone", code=exc.code) from exc

    async def _upload_gone(self, key: str, upload_id: str) -> bool:
        try:
            await self._call(
                f"listing parts of {key!r}",
                lambda: self._client.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MaxParts=1
                ),
            )
        except NoSuchUpload:
            return True
        except StorageError:
            return False  # cannot tell: the first error stands (and is retried)
        return False

    async def ensure_bucket(self) -> bool:
        """Create the bucket when it is missing. Returns True when it was created."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 404:
                raise translate(exc, f"checking bucket {self.bucket!r}") from exc
        except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, f"checking bucket {self.bucket!r}") from exc
        args: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client_args["region_name"]
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._client.create_bucket(**args)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou",):
                return False
            raise translate(exc, f"creating bucket {self.bucket!r}") from exc
        except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, f"creating bucket {self.bucket!r}") from exc
        return True

    async def create_upload(
        self,
        key: str,
        content_type: str,
        *,
        crc32c: bool = False,
        options: ObjectOptions | None = None,
    ) -> str:
        """CreateMultipartUpload; with `crc32c`, every part must then carry its CRC32C and the
        object gets a COMPOSITE CRC32C (the checksum of the parts' checksums). `options`
        (encryption, storage class, tags, user metadata) can only be given here for a multipart
        object: S3 takes none of them at completion."""
        extra: dict[str, object] = (
            {"ChecksumAlgorithm": "CRC32C", "ChecksumType": "COMPOSITE"} if crc32c else {}
        )
        extra.update(options.request_args() if options else {})
        response = await self._call(
            f"creating multipart upload {key!r}",
            lambda: self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type, **extra
            ),
        )
        return str(response["UploadId"])

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | PartBody,
        *,
        crc32c: bytes | None = None,
        md5: bytes | None = None,
        ask_crc32c: bool = False,
    ) -> PartAnswer:
        """Send one part with the checksums given (raw digests), of exactly these bytes (paced
        while sent, s3.pacing, under BANDWIDTH_LIMIT). Returns the part's ETag, and the CRC32C
        the server reports of what it received where it reports one.

        `ask_crc32c` (and no `crc32c`): name the algorithm without a value, which asks a server
        that computes checksums itself (moto) for the CRC32C of the body it received; AWS S3
        refuses such a request (s3.integrity's probe finds out which)."""
        extra = {}
        if crc32c is not None:
            extra["ChecksumCRC32C"] = b64(crc32c)
        if md5 is not None:
            extra["ContentMD5"] = b64(md5)
        token = _ASK_CRC32C.set(ask_crc32c and crc32c is None)
        try:
            response = await self._about_upload(key, upload_id, lambda: self._call(
                f"uploading part {number} of {key!r}",
                lambda: self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=body if isinstance(body, PartBody) else PartBody(body),
                    **extra,
                ),
            ))  # fmt: skip
        finally:
            _ASK_CRC32C.reset(token)
        crc = response.get("ChecksumCRC32C")
        return PartAnswer(str(response["ETag"]), str(crc) if crc else None)

    async def copy_part(
        self, key: str, upload_id: str, number: int, source_key: str, first: int, last: int
    ) -> PartAnswer:
        """Part `number` of the upload made by the server from bytes `first`..`last` (inclusive)
        of the completed object `source_key`: nothing is sent but the request. The answer's ETag
        (and CRC32C, where the server reports one) is what the caller proves the part by."""
        response = await self._about_upload(key, upload_id, lambda: self._call(
            f"copying part {number} of {key!r} from {source_key!r}",
            lambda: self._client.upload_part_copy(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source_key},
                CopySourceRange=f"bytes={first}-{last}",
            ),
        ))  # fmt: skip
        result = response.get("CopyPartResult", {})
        crc = result.get("ChecksumCRC32C")
        return PartAnswer(str(result.get("ETag", "")), str(crc) if crc else None)

    async def list_parts(self, key: str, upload_id: str) -> dict[int, RemotePart]:
        """Every part S3 holds for the upload, following pagination past 1,000 parts."""
        parts: dict[int, RemotePart] = {}
        marker = 0
        while True:
            page = await self._call(
                f"listing parts of {key!r}",
                lambda m=marker: self._client.list_parts(  # type: ignore[misc]
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=m
                ),
            )
            for item in page.get("Parts", []):
                number = int(item["PartNumber"])
                parts[number] = RemotePart(
                    number, str(item["ETag"]), int(item["Size"]), item.get("LastModified")
                )
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    async def complete_upload(
        self,
        key: str,
        upload_id: str,
        etags: list[tuple[int, str, bytes | None]],
        *,
        replacing: str | None = None,
    ) -> str:
        """Complete the upload from (number, ETag, CRC32C or None) of every part, never over an
        existing object (`If-None-Match: *` where the server supports it). An existing object
        raises StorageError code PreconditionFailed. With `replacing` (an ETag), the one exception:
        the object there must be that very object (an extension replacing what it was built from,
        a faststart rebuild its temporary object; `If-Match` where the server supports it);
        anything else there, or nothing, is refused the same way."""
        # Some servers accept the header on completion and ignore it (Ceph RGW 16 overwrites):
        # a HeadObject first, so that only a completion racing this very instant could.
        there = await self.head_object(key)
        if replacing is None and there is not None:
            raise StorageError(
                f"completing {key!r}: PreconditionFailed (an object is there already; it is "
                "never replaced)", code="PreconditionFailed",
            )  # fmt: skip
        if replacing is not None and (there is None or etag_hex(there.etag) != etag_hex(replacing)):
            raise StorageError(
                f"completing {key!r}: PreconditionFailed (the object there is not {replacing},"
                " the one this upload may replace)", code="PreconditionFailed",
            )  # fmt: skip
        parts = {"Parts": [_completed_part(*part) for part in etags]}
        condition = {"IfNoneMatch": "*"} if replacing is None else {"IfMatch": replacing}
        response = await self._about_upload(key, upload_id, lambda: self._exclusive(
            f"completing {key!r}",
            lambda extra: self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload=parts, **extra
            ),
            condition,
        ))  # fmt: skip
        return str(response.get("ETag", ""))

    async def _exclusive(
        self,
        what: str,
        call: Callable[[dict[str, str]], Awaitable[T]],
        condition: dict[str, str] | None = None,
    ) -> T:
        """Make a write conditional on the key being free (or on `condition`), if the server
        knows how.

        Servers without conditional writes answer NotImplemented (or reject the header); then the
        write goes ahead without it and the lease alone protects the object.
        """
        if self.conditional_writes:
            try:
                return await self._call(what, lambda: call(condition or {"IfNoneMatch": "*"}))
            except StorageError as exc:
                if exc.code not in ("NotImplemented", "501", "InvalidArgument", "InvalidRequest"):
                    raise
                self.conditional_writes = False
        return await self._call(what, lambda: call({}))

    async def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            await self._call(
                f"aborting upload of {key!r}",
                lambda: self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
            )
        except NoSuchUpload:
            return

    async def head_object(self, key: str) -> RemoteObject | None:
        """Size, ETag and whole-object CRC32C (where kept) of an object, or None."""
        try:
            response = await self._client.head_object(
                Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise translate(exc, f"reading {key!r}") from exc
        except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, f"reading {key!r}") from exc
        crc = response.get("ChecksumCRC32C")
        return RemoteObject(
            int(response["ContentLength"]),
            str(response["ETag"]),
            None if crc is None else str(crc).split("-", 1)[0],
            response.get("ChecksumType"),
        )

    async def delete_object(self, key: str) -> None:
        await self._call(
            f"deleting {key!r}", lambda: self._client.delete_object(Bucket=self.bucket, Key=key)
        )

    async def get_bytes(self, key: str, *, max_bytes: int = 16 * 1024 * 1024) -> bytes | None:
        """A small object's body (a metadata document), or None when there is none.

        Larger than `max_bytes` is refused: this is for documents, never for video objects.
        """
        what = f"reading {key!r}"
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise translate(exc, what) from exc
        except _NETWORK_ERRORS as exc:
            raise translate(exc, what) from exc
        async with response["Body"] as body:
            if int(response.get("ContentLength", 0)) > max_bytes:
                raise StorageError(
                    f"{what}: larger than {max_bytes} bytes", code="TooLarge", retryable=False
                )
            try:
                data: bytes = await body.read()
            except _NETWORK_ERRORS as exc:
                raise translate(exc, what) from exc
        return data

    async def put_bytes(
        self,
        key: str,
        body: bytes,
        content_type: str,
        *,
        exclusive: bool = False,
        options: ObjectOptions | None = None,
    ) -> str:
        """PutObject; with `exclusive`, never over an existing object (PreconditionFailed)."""
        stored_as = options.request_args() if options else {}

        def put(extra: dict[str, str]) -> Awaitable[Any]:
            call: Awaitable[Any] = self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **extra,
                **stored_as,
            )  # fmt: skip
            return call

        what = f"writing {key!r}"
        response = await (
            self._exclusive(what, put) if exclusive else self._call(what, lambda: put({}))
        )
        return str(response["ETag"])

    async def get_tags(self, key: str) -> dict[str, str]:
        """GetObjectTagging: the tags the server keeps on an object."""
        response = await self._call(
            f"reading the tags of {key!r}",
            lambda: self._client.get_object_tagging(Bucket=self.bucket, Key=key),
        )
        return {str(t["Key"]): str(t["Value"]) for t in response.get("TagSet", [])}

    async def put_tags(self, key: str, tags: dict[str, str]) -> None:
        """PutObjectTagging: replace the object's tag set."""
        tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
        await self._call(
            f"tagging {key!r} ({encode_tags(tags)})",
            lambda: self._client.put_object_tagging(
                Bucket=self.bucket, Key=key, Tagging={"TagSet": tag_set}
            ),
        )

    async def list_keys(self, prefix: str, suffix: str = "") -> list[str]:
        """The keys of the objects under `prefix` that end with `suffix`, every page of them."""
        keys: list[str] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = await self._call(
                "listing objects",
                lambda a=dict(args): self._client.list_objects_v2(**a),  # type: ignore[misc]
            )
            keys.extend(i["Key"] for i in page.get("Contents", []) if i["Key"].endswith(suffix))
            if not page.get("IsTruncated"):
                return keys
            args["ContinuationToken"] = page["NextContinuationToken"]

    async def list_uploads(self, prefix: str) -> list[RemoteUpload]:
        """Multipart uploads in progress under `prefix` (for orphan clean-up)."""
        uploads: list[RemoteUpload] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = await self._call(
                "listing multipart uploads",
                lambda a=dict(args): self._client.list_multipart_uploads(**a),  # type: ignore[misc]
            )
            for item in page.get("Uploads", []):
                uploads.append(RemoteUpload(
                    item["Key"], item["UploadId"], item["Initiated"],
                    checksum_algorithm=item.get("ChecksumAlgorithm") or "",
                ))  # fmt: skip
            if not page.get("IsTruncated"):
                return uploads
            args["KeyMarker"] = page.get("NextKeyMarker")
            args["UploadIdMarker"] = page.get("NextUploadIdMarker")
