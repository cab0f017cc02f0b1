"""S3 as the agent opens it: the client the settings ask for, then, once at start-up and in
this order, the bucket, what the server proves of each part (S3_INTEGRITY_MODE) and whether it
accepts the object options (S3_SSE, S3_STORAGE_CLASS, ...). A permanent refusal is a
`ConfigError` naming the setting; a busy or absent server is waited for (`note` tells the
operator, once an episode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from streamup.errors import ConfigError, StorageError, StreamupError
from streamup.retry import Backoff, retrying
from streamup.s3.client import S3Storage
from streamup.s3.integrity import Capabilities, ProofMode, probe
from streamup.s3.placement import refused_option
from streamup.settings import Settings

log = structlog.get_logger("streamup")
# Start-up against a busy or absent server: soon at first, then every 15 s at most.
STARTUP_BACKOFF = Backoff(first_s=0.5, factor=2.0, cap_s=15.0)
# What the start-up's waiting is told of a retried step (ops.startup.StartupWait.note).
Note = Callable[[str], Callable[[StreamupError, int, float], None]]


def s3_connections(settings: Settings) -> int:
    return settings.upload_concurrency * 2 + 4


def make_storage(settings: Settings) -> S3Storage:
    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None else None

    return S3Storage(
        bucket=settings.s3_bucket_name,
        region=settings.s3_region_name,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=secret(settings.s3_access_key_id),
        secret_access_key=secret(settings.s3_secret_access_key),
        max_connections=s3_connections(settings),
    )


async def open_bucket(storage: S3Storage, settings: Settings, note: Note) -> None:
    """Open the client and make sure the bucket is there (created when it is not)."""
    await storage.open()
    on_retry = note("bucket")
    created = await retrying(storage.ensure_bucket, backoff=STARTUP_BACKOFF, on_retry=on_retry)
    if created:
        log.info("bucket.created", bucket=settings.s3_bucket_name)


async def integrity(storage: S3Storage, settings: Settings, note: Note) -> Capabilities:
    """What this endpoint proves of each part: asked once at start-up, or as configured."""
    mode = settings.s3_integrity_mode
    if mode == "auto":
        try:
            caps = await retrying(
                lambda: probe(storage, settings.s3_key_prefix),
                backoff=STARTUP_BACKOFF, on_retry=note("integrity probe"),
            )  # fmt: skip
        except StorageError as exc:
            raise ConfigError(
                f"S3_INTEGRITY_MODE=auto could not ask the server what it checks ({exc}); "
                "set S3_INTEGRITY_MODE to checksum, reported, content_md5, etag or none"
            ) from None
    else:
        caps = Capabilities.forced(ProofMode(mode))
    log.info("s3.integrity", configured=mode, **caps.describe())
    if caps.mode is ProofMode.NONE:
        log.warning(
            "s3.integrity_unproven",
            detail="this server proves no part's bytes (no checksum or Content-MD5 check, no"
            " checksum reported, ETags are not MD5s): objects are completed but marked unverified",
        )
    return caps


async def check_object_options(storage: S3Storage, settings: Settings, note: Note) -> None:
    """Once at start-up: a server that refuses an object option (Ceph RGW: SSE over plain
    HTTP, classes other than STANDARD) would fail every stream; say which setting, once."""
    refused = await retrying(
        lambda: refused_option(storage, settings.s3_key_prefix, settings.object_options),
        backoff=STARTUP_BACKOFF, on_retry=note("object options check"),
    )  # fmt: skip
    if refused is not None:
        setting, exc = refused
        raise ConfigError(
            f"{refused_setting(setting, settings)} is refused by the server ({exc}); unset it or"
            " change it to what the server supports"
        ) from None


def refused_setting(setting: str, settings: Settings) -> str:
    """How a refused setting is named to the operator: with its value when it is one setting."""
    value = getattr(settings, setting.lower(), None) if "," not in setting else None
    return setting if value is None else f"{setting}={value}"
