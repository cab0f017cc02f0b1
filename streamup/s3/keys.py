"""Object keys from S3_KEY_TEMPLATE. Pure: parsing, rendering, the rules of a valid key, and the
numbered suffix that keeps two recordings from sharing one key. No I/O, no clock.

A template is Python's format syntax restricted to a few named fields:

    {prefix}     S3_KEY_PREFIX                   {name}   file name       2026-12-01.mp4
    {stream_id}  the stream's UUID               {stem}   name without its extension
    {path}       relative to WATCH_DIR           {ext}    the extension, dot included (.mp4)
    {dir}        folder of {path} ('' at top)    {host}   the host whose agent found the file
    {started}    stream start, UTC; a strftime spec formats it: {started:%Y/%m/%d}

Literal braces are written `{{` and `}}`. A field that is empty (`{dir}` for a file directly in
WATCH_DIR, `{prefix}` when S3_KEY_PREFIX is empty, `{ext}` of a name without one) leaves no empty
folder behind: the slash beside it goes too. Slashes the template itself doubles are an error.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime

DEFAULT_TEMPLATE = "{prefix}/{stream_id}/{path}"
FIELDS = ("prefix", "stream_id", "path", "dir", "name", "stem", "ext", "host", "started")
# Fields that are the same for every stream this agent starts: they belong to the fixed part of
# a key, the part the orphan reaper may list under.
CONSTANT_FIELDS = frozenset({"prefix", "host"})
DEFAULT_STARTED_FORMAT = "%Y%m%dT%H%M%SZ"

# Candidates tried before giving up (`a.mp4`, `a-2.mp4`, ... `a-1000.mp4`): a template that maps
# this many recordings to one key needs a field that tells them apart.
MAX_KEY_NUMBER = 1000
MAX_KEY_BYTES = 1024  # S3's limit on a key, in bytes of UTF-8
METADATA_SUFFIX = ".metadata.json"
# The metadata object's key is the video key plus its suffix, and must fit too.
MAX_VIDEO_KEY_BYTES = MAX_KEY_BYTES - len(METADATA_SUFFIX)

_SAMPLE_STARTED = datetime(2026, 12, 1, 13, 45, 30, tzinfo=UTC)
_SAMPLE_STREAM_ID = "5b0c6d1e-8f3a-4c2b-9d7e-1a2b3c4d5e6f"


@dataclass(frozen=True, slots=True)
class KeyFields:
    """What a key is made of, for one stream."""

    prefix: str
    stream_id: str
    relative_path: str  # forward slashes
    host: str
    started: datetime

    def values(self) -> dict[str, str]:
        name = posixpath.basename(self.relative_path)
        stem, ext = posixpath.splitext(name)
        return {
            "prefix": self.prefix,
            "stream_id": self.stream_id,
            "path": self.relative_path,
            "dir": posixpath.dirname(self.relative_path),
            "name": name,
            "stem": stem,
            "ext": ext,
            # An AGENT_ID may hold a slash; the host is one folder name, never two.
            "host": self.host.replace("/", "_"),
        }


@dataclass(frozen=True, slots=True)
class KeySearch:
    """The keys one file's object may have (stream.recognition, stream.adoption): its numbered
    keys in order (`a.mp4`, `a-2.mp4`, ...), or, with {stream_id} in the template, any key that
    is `before` + one stream id + `after` (`streams/` + id + `/cam1/a.mp4`)."""

    numbered: tuple[str, ...]
    before: str = ""
    after: str = ""

    @property
    def prefix(self) -> str:
        """What to list under to see every such key."""
        if not self.numbered:
            return self.before
        folder = posixpath.dirname(self.numbered[0])
        return f"{folder}/" if folder else ""

    def fits(self, key: str) -> bool:
        if self.numbered:
            return key in self.numbered
        return self.stream_id_of(key) is not None

    def stream_id_of(self, key: str) -> str | None:
        """The stream id in `key`, when it is before + one stream id (no slash) + after."""
        if self.numbered or len(key) <= len(self.before) + len(self.after):
            return None
        if not (key.startswith(self.before) and key.endswith(self.after)):
            return None
        middle = key[len(self.before) : len(key) - len(self.after)]
        return None if "/" in middle else middle


@dataclass(frozen=True, slots=True)
class _Piece:
    literal: str
    field: str | None
    spec: str


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """A parsed S3_KEY_TEMPLATE."""

    text: str
    pieces: tuple[_Piece, ...]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(p.field for p in self.pieces if p.field is not None)

    @property
    def unique(self) -> bool:
        """True when every stream gets a key of its own (the template names the stream id), so
        no key can ever be another stream's."""
        return "stream_id" in self.fields

    def render(self, fields: KeyFields) -> str:
        """The key for `fields`. Raises ValueError when it is not a valid key (too long, say)."""
        key = collapse(self._raw(fields)).strip("/")
        check_key(key)
        return key

    def search(self, fields: KeyFields) -> KeySearch | None:
        """Where this file's object (or upload) may be, whatever stream made it; None for a
        template with {started} (a key that changes with time cannot be found again)."""
        if "started" in self.fields:
            return None
        if not self.unique:
            wanted = self.render(fields)
            return KeySearch(tuple(numbered(wanted, n) for n in range(1, MAX_KEY_NUMBER + 1)))
        key = self.render(dataclasses.replace(fields, stream_id=_SAMPLE_STREAM_ID))
        before, found, after = key.partition(_SAMPLE_STREAM_ID)
        if not found or _SAMPLE_STREAM_ID in after:
            return None
        return KeySearch((), before, after)

    def fixed_prefix(self, prefix: str, host: str) -> str:
        """The leading part every key of this agent shares: the template's text up to its first
        field that changes from stream to stream. Empty when the template starts with one."""
        values = KeyFields(prefix, "", "", host, _SAMPLE_STARTED).values()
        out = []
        for piece in self.pieces:
            out.append(piece.literal)
            if piece.field is None:
                continue
            if piece.field not in CONSTANT_FIELDS:
                break
            out.append(values[piece.field])
        return collapse("".join(out)).lstrip("/")

    def _raw(self, fields: KeyFields) -> str:
        values = fields.values()
        out = []
        for piece in self.pieces:
            out.append(piece.literal)
            if piece.field == "started":
                out.append(fields.started.astimezone(UTC).strftime(piece.spec))
            elif piece.field is not None:
                out.append(values[piece.field])
        return "".join(out)


def collapse(text: str) -> str:
    """Runs of slashes (left by empty fields) become one."""
    return re.sub(r"/{2,}", "/", text)


def parse_template(text: str, *, prefix: str = "streams") -> KeyTemplate:
    """Parse and check a template; raise ValueError with the reason, fit for one line.

    Besides the syntax, a sample stream is rendered with every field filled in, so a template
    whose own text makes an invalid key (a leading slash, `//`, a `..` folder) fails here, at
    start-up, and not on the first recording.
    """
    if not text.strip():
        raise ValueError(f"must not be empty; the default is {DEFAULT_TEMPLATE}")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(
            f"unbalanced brace ({exc}); write a literal brace as {{{{ or }}}}"
        ) from None
    template = KeyTemplate(text, tuple(_piece(*item) for item in parsed))
    sample = KeyFields(prefix or "streams", _SAMPLE_STREAM_ID, "cam1/2026-12-01.mp4", "host",
                       _SAMPLE_STARTED)  # fmt: skip
    try:
        raw = template._raw(sample)
    except ValueError as exc:  # a strftime spec the C library refuses
        raise ValueError(f"the started format cannot be rendered ({exc})") from None
    try:
        check_key(raw)
    except ValueError as exc:
        raise ValueError(f"makes an invalid key, e.g. {raw!r}: {exc}") from None
    # With the real prefix (which may be empty) too: "{prefix}" alone would then be no key.
    try:
        template.render(KeyFields(prefix, _SAMPLE_STREAM_ID, "x.mp4", "host", _SAMPLE_STARTED))
    except ValueError as exc:
        raise ValueError(f"makes an invalid key with S3_KEY_PREFIX={prefix!r}: {exc}") from None
    return template


def _piece(literal: str, field: str | None, spec: str | None, conversion: str | None) -> _Piece:
    """One literal and the field after it, as `string.Formatter.parse` gives them, checked."""
    if field is None:
        return _Piece(literal, None, "")
    if field not in FIELDS:
        shown = f"{{{field}}}" if field else "{}"
        raise ValueError(f"unknown field {shown}; the fields are {', '.join(FIELDS)}")
    if conversion is not None:
        raise ValueError(f"{{{field}!{conversion}}}: conversions are not supported")
    if "{" in (spec or ""):
        raise ValueError(f"{{{field}:{spec}}}: a format cannot contain a field")
    if spec and field != "started":
        raise ValueError(f"{{{field}:{spec}}}: only started takes a format, as in "
                         "{started:%Y/%m/%d}")  # fmt: skip
    return _Piece(literal, field, spec or DEFAULT_STARTED_FORMAT)


def check_key(key: str) -> None:
    """Raise ValueError unless `key` is a key S3 stores as one file-like object, with room for
    its metadata object beside it."""
    if not key:
        raise ValueError("the key is empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(
            "the key is not valid UTF-8 (a file name with undecodable bytes)"
        ) from None
    if size > MAX_VIDEO_KEY_BYTES:
        raise ValueError(f"the key is {size} bytes; S3 allows {MAX_KEY_BYTES}, and the metadata "
                         f"object's key adds {len(METADATA_SUFFIX)}")  # fmt: skip
    if key.startswith("/"):
        raise ValueError("the key starts with '/'")
    if key.endswith("/"):
        raise ValueError("the key ends with '/' (it would look like a folder)")
    if "//" in key:
        raise ValueError("the key holds an empty folder ('//')")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ValueError("the key holds a '.' or '..' folder")


def numbered(key: str, number: int) -> str:
    """The key with a number before its extension: `cam1/a.mp4`, 2 -> `cam1/a-2.mp4`. Number 1
    is the key itself."""
    if number <= 1:
        return key
    folder, name = posixpath.split(key)
    stem, ext = posixpath.splitext(name)
    return posixpath.join(folder, f"{stem}-{number}{ext}")
