"""One validated settings object, read from the environment, `.env` and `run`'s flags.

Every problem becomes a ConfigError whose one line names the setting and how to fix it.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streamup.errors import ConfigError
from streamup.s3.parts import MAX_PART_SIZE_BYTES, MIN_PART_SIZE_BYTES

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class Settings(BaseSettings):
    """Configuration of the agent. Field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    watch_dir: Path = Path("./watch")
    watch_extensions: Annotated[tuple[str, ...], NoDecode] = (".mp4",)
    chunk_size_bytes: int = Field(10 * 1024 * 1024, ge=MIN_PART_SIZE_BYTES, le=MAX_PART_SIZE_BYTES)
    part_size_fixed: bool = False
    stream_timeout_seconds: float = Field(30.0, gt=0)
    scan_interval_seconds: float = Field(5.0, gt=0)
    upload_concurrency: int = Field(4, ge=1, le=64)
    shutdown_grace_seconds: float = Field(30.0, ge=0)

    s3_endpoint_url: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket_name: str = Field("video-streams", min_length=3, max_length=63)
    s3_region_name: str = "us-east-1"
    s3_key_prefix: str = "streams"
    # How each part is proven to be in S3 byte for byte (s3.integrity); `auto` asks the server.
    s3_integrity_mode: Literal["auto", "checksum", "content_md5", "etag", "none"] = "auto"

    redis_url: SecretStr | None = None
    state_dir: Path = Path("./.streamup")
    completed_history_limit: int = Field(1000, ge=1)
    # Multipart uploads under S3_KEY_PREFIX that no checkpoint knows, untouched this long, are
    # aborted (they cost storage forever otherwise). 0 turns the clean-up off.
    orphan_upload_age_seconds: float = Field(86400.0, ge=0)
    agent_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # With a shared Redis: an owner that stops renewing loses its streams after this long.
    lease_ttl_seconds: float = Field(15.0, ge=1)

    # Once S3 provably holds a file (after.lifecycle): leave it, delete it, or move it below
    # AFTER_UPLOAD_DIR, KEEP_LOCAL_SECONDS after completion. MIN_FREE_BYTES (bytes, or "5%" of
    # WATCH_DIR's filesystem; 0 = off): below it, uploaded files are deleted oldest first.
    after_upload: Literal["keep", "delete", "move"] = "keep"
    after_upload_dir: Path | None = None
    keep_local_seconds: float = Field(0.0, ge=0)
    min_free_bytes: str = "0"
    # Objects the server let nobody prove (S3_INTEGRITY_MODE none): their files stay unless this
    # is `accept`.
    after_upload_unproven: Literal["refuse", "accept"] = "refuse"

    ffprobe_path: str | None = None
    ffprobe_timeout_seconds: float = Field(30.0, gt=0)

    prom_port: int = Field(8000, ge=0, le=65535)  # 0 turns the HTTP endpoint off
    prom_host: str = "127.0.0.1"
    log_level: str = "INFO"

    @field_validator("watch_extensions", mode="before")
    @classmethod
    def _split_extensions(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            cleaned = []
            for item in value:
                ext = str(item).strip().lower()
                if not ext:
                    continue
                cleaned.append(ext if ext.startswith(".") else f".{ext}")
            if not cleaned:
                raise ValueError("needs at least one extension, e.g. .mp4,.mkv")
            return tuple(cleaned)
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("s3_bucket_name")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        # S3's naming rules; MinIO and R2 share them. Caught here, before any request is made.
        if not _BUCKET_NAME.fullmatch(value) or ".." in value:
            raise ValueError(
                "bucket names are 3-63 characters of lowercase letters, digits, dots and "
                "hyphens, starting and ending with a letter or digit"
            )
        return value

    @field_validator("s3_key_prefix")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("min_free_bytes", mode="before")
    @classmethod
    def _check_min_free(cls, value: Any) -> Any:
        text = str(value).strip()
        number = text.removesuffix("%")
        try:
            amount = float(number) if text.endswith("%") else int(number)
        except ValueError:
            raise ValueError(_MIN_FREE_HINT) from None
        if amount < 0 or (text.endswith("%") and amount >= 100):
            raise ValueError(_MIN_FREE_HINT)
        return text

    def min_free_floor(self, total_bytes: int) -> int:
        """MIN_FREE_BYTES in bytes, for a filesystem of `total_bytes` (0: the guard is off)."""
        text = self.min_free_bytes
        if text.endswith("%"):
            return int(total_bytes * float(text[:-1]) / 100)
        return int(text)

    @field_validator("after_upload_dir", mode="before")
    @classmethod
    def _empty_dir_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("s3_endpoint_url", "ffprobe_path", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    def redacted(self) -> dict[str, object]:
        """The settings as they may be logged: secrets masked, the Redis password removed."""
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = (
                    "**********" if name != "redis_url" else redact_url(value.get_secret_value())
                )
            shown[name] = str(value) if isinstance(value, Path) else value
        return shown


def redact_url(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host`, so a URL can be logged."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


_MIN_FREE_HINT = (
    "must be a number of bytes (0 turns the guard off) or a percentage of WATCH_DIR's "
    "filesystem below 100, such as 5%"
)
_RANGES = {
    "after_upload": "must be keep, delete or move",
    "after_upload_unproven": "must be refuse (the default) or accept",
    "s3_integrity_mode": (
        "must be auto (ask the server), checksum, content_md5, etag or none; leave it at auto "
        "unless the server is known"
    ),
    "chunk_size_bytes": (
        f"must be between {MIN_PART_SIZE_BYTES} (5 MiB, S3's smallest part) and "
        f"{MAX_PART_SIZE_BYTES} (5 GiB, S3's largest part)"
    ),
}


def load_settings(
    overrides: dict[str, Any] | None = None, *, prepare_watch_dir: bool = True
) -> Settings:
    """Build and validate the settings; raise ConfigError with one line naming what to fix.

    `prepare_watch_dir=False` is for readers such as `streamup status`, which must not create
    WATCH_DIR (or anything else) as a side effect of looking.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "settings"
        value = error.get("input")
        hint = _RANGES.get(name, str(error["msg"]).removeprefix("Value error, "))
        raise ConfigError(f"{name.upper()}={value!r} is invalid: {hint}") from None
    _check_after_upload(settings)
    if prepare_watch_dir:
        _prepare_watch_dir(settings.watch_dir)
        if settings.after_upload == "move" and settings.after_upload_dir is not None:
            _prepare_after_dir(settings.after_upload_dir)
    return settings


def _check_after_upload(settings: Settings) -> None:
    """AFTER_UPLOAD=move needs a folder the watcher will never see as new recordings."""
    target = settings.after_upload_dir
    if settings.after_upload != "move":
        return
    if target is None:
        raise ConfigError(
            "AFTER_UPLOAD=move needs AFTER_UPLOAD_DIR; set it to the folder files are moved to"
        )
    watch = os.path.realpath(settings.watch_dir)
    real = os.path.realpath(target)
    if real != watch and not real.startswith(watch.rstrip(os.sep) + os.sep):
        return
    inner = os.path.relpath(real, watch).split(os.sep)
    # The watcher ignores hidden folders and names starting with `~` (files.watcher).
    if real == watch or not any(part.startswith((".", "~")) for part in inner):
        raise ConfigError(
            f"AFTER_UPLOAD_DIR={str(target)!r} lies inside WATCH_DIR, so moved files would be"
            " found again; point it outside WATCH_DIR or at a hidden folder in it (.done)"
        )


def _prepare_after_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"AFTER_UPLOAD_DIR={str(path)!r} does not exist and cannot be created"
            f" ({exc.strerror}); create it or point AFTER_UPLOAD_DIR at a writable folder"
        ) from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"AFTER_UPLOAD_DIR={str(path)!r} is not a writable folder; fix its permissions"
        )


def _prepare_watch_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"WATCH_DIR={str(path)!r} does not exist and cannot be created ({exc.strerror}); "
            "create it or point WATCH_DIR at a readable folder"
        ) from None
    if not path.is_dir():
        raise ConfigError(f"WATCH_DIR={str(path)!r} is not a folder; point it at a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"WATCH_DIR={str(path)!r} is not readable; fix its permissions")
