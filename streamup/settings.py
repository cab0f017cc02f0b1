"""One validated settings object, read from the environment, `.env` and `run`'s flags.

Every problem becomes a ConfigError whose one line names the setting and how to fix it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import streamup.s3.object_options as options
from streamup.errors import ConfigError
from streamup.s3.bandwidth import Timetable, parse_bandwidth
from streamup.s3.keys import DEFAULT_TEMPLATE, KeyTemplate, parse_template
from streamup.s3.parts import MAX_PART_SIZE_BYTES, MIN_PART_SIZE_BYTES

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# URL-safe characters only: the token travels in a header, a query string and a cookie unescaped.
_STATUS_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")


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
    # How long start-up waits out a busy or unreachable S3 / checkpoint store; 0 = forever.
    startup_timeout_seconds: float = Field(300.0, ge=0)
    # All part uploads together (s3.bandwidth): a rate or a timetable in local time.
    bandwidth_limit: str = "off"

    s3_endpoint_url: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket_name: str = Field("video-streams", min_length=3, max_length=63)
    s3_region_name: str = "us-east-1"
    s3_key_prefix: str = "streams"
    # Where each object goes (s3.keys) and how it is stored (s3.object_options).
    s3_key_template: str = DEFAULT_TEMPLATE
    s3_sse: str | None = None
    s3_sse_kms_key_id: str | None = None
    s3_storage_class: str | None = None
    s3_object_tags: str | None = None
    s3_object_metadata: str | None = None
    # How each part is proven to be in S3 byte for byte (s3.integrity); `auto` asks the server.
    s3_integrity_mode: Literal["auto", "checksum", "reported", "content_md5", "etag", "none"] = (
        "auto"
    )

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

    # After completion (after.delivery): a command hook and a signed webhook, both optional.
    on_complete_command: str | None = None
    hook_timeout_seconds: float = Field(60.0, gt=0)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None

    prom_port: int = Field(8000, ge=0, le=65535)  # 0 turns the HTTP endpoint off
    prom_host: str = "127.0.0.1"
    # Set: the status page, /status and the metadata route need it (/metrics, /healthz stay open).
    status_token: SecretStr | None = None
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

    @field_validator("bandwidth_limit")
    @classmethod
    def _check_bandwidth(cls, value: str) -> str:
        parse_bandwidth(value)
        return value

    @property
    def bandwidth(self) -> Timetable:
        return parse_bandwidth(self.bandwidth_limit)

    def min_free_floor(self, total_bytes: int) -> int:
        """MIN_FREE_BYTES in bytes, for a filesystem of `total_bytes` (0: the guard is off)."""
        text = self.min_free_bytes
        if text.endswith("%"):
            return int(total_bytes * float(text[:-1]) / 100)
        return int(text)

    @field_validator("status_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _STATUS_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError(
                "must be 16-256 letters, digits, '-', '_', '.' or '~' "
                "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        return value

    @field_validator("s3_key_template")
    @classmethod
    def _check_template(cls, value: str, info: ValidationInfo) -> str:
        parse_template(value, prefix=info.data.get("s3_key_prefix", ""))
        return value

    @field_validator("s3_sse")
    @classmethod
    def _check_sse(cls, value: str | None) -> str | None:
        return None if value is None else options.parse_sse(value)

    @field_validator("s3_sse_kms_key_id")
    @classmethod
    def _check_kms_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("s3_sse") != "aws:kms":
            raise ValueError("goes only with S3_SSE=aws:kms; set S3_SSE=aws:kms or unset it")
        return options.parse_kms_key_id(value)

    @field_validator("s3_storage_class")
    @classmethod
    def _check_storage_class(cls, value: str | None) -> str | None:
        return None if value is None else options.parse_storage_class(value)

    @field_validator("s3_object_tags")
    @classmethod
    def _check_tags(cls, value: str | None) -> str | None:
        if value is not None:
            options.parse_tags(value)
        return value

    @field_validator("s3_object_metadata")
    @classmethod
    def _check_metadata(cls, value: str | None) -> str | None:
        if value is not None:
            options.parse_metadata(value)
        return value

    @property
    def key_template(self) -> KeyTemplate:
        return parse_template(self.s3_key_template, prefix=self.s3_key_prefix)

    @property
    def object_options(self) -> options.ObjectOptions:
        """What every object is stored with (S3_SSE ... S3_OBJECT_METADATA)."""
        return options.ObjectOptions(
            sse=self.s3_sse,
            kms_key_id=self.s3_sse_kms_key_id,
            storage_class=self.s3_storage_class,
            tags=options.parse_tags(self.s3_object_tags) if self.s3_object_tags else (),
            metadata=(
                options.parse_metadata(self.s3_object_metadata) if self.s3_object_metadata else ()
            ),
        )

    @field_validator(
        "s3_endpoint_url", "ffprobe_path", "s3_sse", "s3_sse_kms_key_id", "s3_storage_class",
        "s3_object_tags", "s3_object_metadata", "status_token", "after_upload_dir",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("on_complete_command")
    @classmethod
    def _check_command(cls, value: str | None) -> str | None:
        if value is not None:
            split_command(value)
        return value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL with a host, e.g."
                " https://hooks.example.com/streamup"
            )
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("it is empty; set a secret, or unset WEBHOOK_SECRET for no signature")
        return value

    @property
    def on_complete_argv(self) -> list[str] | None:
        """ON_COMPLETE_COMMAND split into the program and its arguments."""
        return None if self.on_complete_command is None else split_command(self.on_complete_command)

    def redacted(self) -> dict[str, object]:
        """The settings as they may be logged: secrets masked, the Redis password removed."""
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = (
                    "**********" if name != "redis_url" else redact_url(value.get_secret_value())
                )
            if name == "webhook_url" and value is not None:
                value = _url_without_credentials(str(value))
            shown[name] = str(value) if isinstance(value, Path) else value
        return shown


def split_command(text: str) -> list[str]:
    """ON_COMPLETE_COMMAND split as a POSIX shell would (quotes, backslashes), never run by one.

    Raises ValueError, with the fix, when it is empty or its quotes do not close.
    """
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot be split like a shell would ({exc}); check its quotes") from None
    if not argv or not argv[0]:
        raise ValueError(
            "it is empty; give a command line, e.g. '/usr/local/bin/on-upload --notify',"
            " or unset ON_COMPLETE_COMMAND"
        )
    return argv


def _url_without_credentials(url: str) -> str:
    # A webhook URL may carry a token as user:password or in its query string.
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def redact_url(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host`, so a URL can be logged."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


_SECRETS = {"s3_access_key_id", "s3_secret_access_key", "redis_url", "status_token"}

_MIN_FREE_HINT = (
    "must be a number of bytes (0 turns the guard off) or a percentage of WATCH_DIR's "
    "filesystem below 100, such as 5%"
)
_RANGES = {
    "startup_timeout_seconds": (
        "must be a number of seconds, 0 or more (0 waits forever for S3 and the checkpoint store)"
    ),
    "after_upload": "must be keep, delete or move",
    "after_upload_unproven": "must be refuse (the default) or accept",
    "s3_integrity_mode": (
        "must be auto (ask the server), checksum, reported, content_md5, etag or none; leave it at "
        "auto unless the server is known"
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
        if name in _SECRETS:  # the one line names the setting, never the secret's value
            value = "**********"
        hint = _RANGES.get(name, str(error["msg"]).removeprefix("Value error, "))
        raise ConfigError(f"{name.upper()}={value!r} is invalid: {hint}") from None
    _check_after_upload(settings)
    if settings.webhook_secret is not None and settings.webhook_url is None:
        raise ConfigError(
            "WEBHOOK_SECRET is set but WEBHOOK_URL is not; set WEBHOOK_URL or unset WEBHOOK_SECRET"
        )
    if prepare_watch_dir:  # the agent itself, not a reader such as `streamup status`
        _check_hook_program(settings.on_complete_argv)
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


def _check_hook_program(argv: list[str] | None) -> None:
    if argv is not None and shutil.which(argv[0]) is None:
        raise ConfigError(
            f"ON_COMPLETE_COMMAND names the program {argv[0]!r}, which is not found on PATH or"
            " is not executable; give its full path or fix its permissions"
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
