"""How objects are stored: encryption, storage class, tags, user metadata. Pure: the parsers that
check S3_SSE, S3_SSE_KMS_KEY_ID, S3_STORAGE_CLASS, S3_OBJECT_TAGS and S3_OBJECT_METADATA against
S3's rules, the request arguments they become, and the decision whether a completed object still
needs its tags.

For a multipart object every option must be given at CreateMultipartUpload: S3 takes nothing at
completion, so an option sent later is silently lost (rclone learnt this the hard way). Some
servers drop tags given there anyway (Ceph RGW 16): `tags_to_apply` decides, from what the server
reports after completion, whether PutObjectTagging must add them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode

SSE_ALGORITHMS = ("AES256", "aws:kms")
# S3's storage class names (the x-amz-storage-class values PutObject accepts).
STORAGE_CLASSES = (
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
    "GLACIER", "DEEP_ARCHIVE", "OUTPOSTS", "GLACIER_IR", "SNOW", "EXPRESS_ONEZONE",
)  # fmt: skip
MAX_TAGS = 10  # per object
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256
MAX_METADATA_BYTES = 2048  # user metadata: keys and values together, UTF-8 bytes
# The characters AWS allows in tag keys and values, besides letters and digits of any script.
_TAG_PUNCTUATION = frozenset(" +-=._:/@")
# An HTTP header name (RFC 9110 token): user metadata travels as x-amz-meta-{key} headers.
_HEADER_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


@dataclass(frozen=True, slots=True)
class ObjectOptions:
    """What every object the agent writes (video and metadata) is stored with."""

    sse: str | None = None
    kms_key_id: str | None = None
    storage_class: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()

    def request_args(self) -> dict[str, object]:
        """Keyword arguments for CreateMultipartUpload and PutObject (botocore's names)."""
        args: dict[str, object] = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        if self.tags:
            args["Tagging"] = encode_tags(self.tags)
        if self.metadata:
            args["Metadata"] = dict(self.metadata)
        return args


def encode_tags(tags: tuple[tuple[str, str], ...] | Mapping[str, str]) -> str:
    """The x-amz-tagging header: URL-encoded query form, spaces as %20."""
    pairs = tags.items() if isinstance(tags, Mapping) else tags
    return urlencode(list(pairs), quote_via=quote, safe="")


def parse_sse(text: str) -> str:
    if text not in SSE_ALGORITHMS:
        raise ValueError(f"must be {' or '.join(SSE_ALGORITHMS)} (or unset for none)")
    return text


def parse_kms_key_id(text: str) -> str:
    if not text or any(ch.isspace() for ch in text):
        raise ValueError("must be a KMS key id, alias or ARN, without spaces")
    return text


def parse_storage_class(text: str) -> str:
    name = text.strip().upper()
    if name not in STORAGE_CLASSES:
        raise ValueError(f"is not an S3 storage class; use one of {', '.join(STORAGE_CLASSES)}")
    return name


def parse_tags(text: str) -> tuple[tuple[str, str], ...]:
    """`k=v&k2=v2` (URL-encoded form, as S3's x-amz-tagging header) -> pairs, within S3's limits:
    at most 10 tags, keys of 1-128 and values of 0-256 characters, no key twice, no `aws:` key."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError(
            "must be key=value pairs joined by &, e.g. team=video&retain=90d"
        ) from None
    if len(pairs) > MAX_TAGS:
        raise ValueError(f"has {len(pairs)} tags; S3 allows {MAX_TAGS} per object")
    seen: set[str] = set()
    for key, value in pairs:
        if not key or len(key) > MAX_TAG_KEY_CHARS:
            raise ValueError(f"tag key {key!r} must be 1-{MAX_TAG_KEY_CHARS} characters")
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise ValueError(f"the value of tag {key!r} is {len(value)} characters; S3 allows "
                             f"{MAX_TAG_VALUE_CHARS}")  # fmt: skip
        if key.lower().startswith("aws:"):
            raise ValueError(f"tag key {key!r}: the aws: prefix is reserved by AWS")
        for part in (key, value):
            bad = sorted({ch for ch in part if not (ch.isalnum() or ch in _TAG_PUNCTUATION)})
            if bad:
                raise ValueError(f"tag {key!r} holds {''.join(bad)!r}; S3 tags allow letters, "
                                 "digits, spaces and + - = . _ : / @")  # fmt: skip
        if key in seen:
            raise ValueError(f"tag key {key!r} is given twice")
        seen.add(key)
    return tuple(pairs)


def parse_metadata(text: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k2=v2` -> pairs. Keys are HTTP header names (S3 stores them in lower case, so they
    are lower-cased here and read back the same); values printable ASCII without commas; keys
    and values together at most 2 KB, S3's limit."""
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not _HEADER_TOKEN.fullmatch(key):
            raise ValueError(f"{item.strip()!r} is not key=value with a key of letters, digits "
                             "and - _ . (e.g. camera=front,site=lab2)")  # fmt: skip
        if not all(" " <= ch <= "~" for ch in value):
            raise ValueError(f"the value of {key!r} must be printable ASCII (HTTP headers carry "
                             "it)")  # fmt: skip
        if any(key == seen for seen, _ in pairs):
            raise ValueError(f"key {key!r} is given twice")
        pairs.append((key, value))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in pairs)
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size} bytes of keys and values; S3 allows {MAX_METADATA_BYTES}")
    return tuple(pairs)


def tags_to_apply(
    wanted: tuple[tuple[str, str], ...], stored: Mapping[str, str]
) -> dict[str, str] | None:
    """The tag set to put on an object whose server reports `stored`, or None when every wanted
    tag is there already. Tags someone else put on the object are kept (PutObjectTagging
    replaces the whole set)."""
    if all(stored.get(key) == value for key, value in wanted):
        return None
    return {**stored, **dict(wanted)}
