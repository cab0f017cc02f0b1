"""The status page at `GET /`: pure functions from the /status document to escaped HTML.

The server renders the whole page, so it is a complete snapshot without JavaScript; the script
shipped beside it (static/page.js) then polls /status and /throughput and rebuilds the same
rows with `textContent`, never with markup. Everything shown here comes from the document and
is escaped here, once per value: file names are user input.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import quote

from streamup.ops.report import human_size

POLL_MS = 2000
CHART_WIDTH, CHART_HEIGHT = 480, 60  # static/page.js draws with the same numbers
NOT_REPORTED = "not reported"
_ISO_UTC = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?\+00:00$")

STATIC_TYPES = {
    "page.css": "text/css; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
}


@cache
def static_file(name: str) -> bytes:
    """A file shipped in the package beside this module (package data, in every wheel)."""
    return (resources.files("streamup.ops") / "static" / name).read_bytes()


def esc(value: object) -> str:
    """Text for HTML content or a quoted attribute; None shows as nothing."""
    return html.escape("" if value is None else str(value), quote=True)


def file_name(path: object) -> str:
    return str(path or "").rsplit("/", 1)[-1]


def short_time(value: object) -> str:
    """`2026-11-24T12:00:58.5987+00:00` -> `2026-11-24 12:00:58` (the column says UTC)."""
    found = _ISO_UTC.match(str(value or ""))
    return f"{found[1]} {found[2]}" if found else str(value or "")


def rate(value: object) -> str:
    return f"{human_size(value)}/s"


def percent(uploaded: int, size: int) -> str:
    return f"{100 * uploaded // size}%" if size > 0 else "0%"


def as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def figure(value: object, *, size: bool = False) -> str:
    """An agent-level figure that another feature may or may not report yet."""
    if value is None:
        return NOT_REPORTED
    return human_size(value) if size else str(value)


def stream_row(row: Mapping[str, Any], rate_bytes_s: float | None) -> str:
    """One `<tr>` of the streams table."""
    uploaded = as_int(row.get("uploaded_bytes"))
    size = max(as_int(row.get("size_bytes")), uploaded)
    state = esc(row.get("state"))
    if row.get("stalled"):
        state += ' <span class="badge">stalled</span>'
    cells = (
        f'<td class="name" title="{esc(row.get("path"))}">{esc(file_name(row.get("path")))}</td>',
        f'<td class="state">{state}</td>',
        f'<td class="bytes">{esc(human_size(uploaded))} / {esc(human_size(size))}</td>',
        f'<td class="progress"><progress max="{size or 1}" value="{uploaded}"></progress> '
        f'<span class="pct">{percent(uploaded, size)}</span></td>',
        f'<td class="rate">{esc(rate(rate_bytes_s)) if rate_bytes_s is not None else ""}</td>',
        f'<td class="lag">{esc(human_size(row.get("lag_bytes")))}</td>',
        f'<td class="parts">{as_int(row.get("parts"))}</td>',
        f'<td class="owner">{esc(row.get("owner"))}</td>',
        f'<td class="error">{esc(row.get("error"))}</td>',
    )
    return f'<tr data-stream-id="{esc(row.get("stream_id"))}">{"".join(cells)}</tr>'


def metadata_href(stream_id: object) -> str:
    """The agent's own route for a completion's metadata JSON (relative: works under a proxy)."""
    return "metadata/" + quote(str(stream_id), safe="")


def completion_row(row: Mapping[str, Any]) -> str:
    """One `<tr>` of the recent completions; a link to the metadata when there is one."""
    link = ""
    if row.get("state") == "completed":
        link = f'<a href="{esc(metadata_href(row.get("stream_id")))}">metadata</a>'
    cells = (
        f'<td class="name" title="{esc(row.get("path"))}">{esc(file_name(row.get("path")))}</td>',
        f'<td class="state">{esc(row.get("state"))} ({esc(row.get("end_reason"))})</td>',
        f'<td class="size">{esc(human_size(row.get("size_bytes")))}</td>',
        f'<td class="when">{esc(short_time(row.get("completed_at_utc")))}</td>',
        f'<td class="key"><code>{esc(row.get("key"))}</code></td>',
        f'<td class="meta">{link}</td>',
    )
    return f'<tr data-stream-id="{esc(row.get("stream_id"))}">{"".join(cells)}</tr>'


def chart_points(
    history: Iterable[float], capacity: int, width: int = CHART_WIDTH, height: int = CHART_HEIGHT
) -> str:
    """SVG polyline points: the newest sample at the right edge, the peak at the top."""
    values = list(history)[-capacity:]
    if not values:
        return ""
    top = max(max(values), 1.0)
    step = width / max(capacity - 1, 1)
    start = capacity - len(values)
    return " ".join(
        f"{(start + i) * step:.1f},{height - 1 - v / top * (height - 2):.1f}"
        for i, v in enumerate(values)
    )


def bandwidth(section: object) -> list[str]:
    """BANDWIDTH_LIMIT as the page shows it: the limit now (`2M/s`, `off`) and its next change
    (`then off from 2026-12-01 19:00`, the agent's local time; "" when the limit never changes)."""
    if not isinstance(section, Mapping):
        return [NOT_REPORTED, ""]
    at = section.get("next_change_at")
    then = f"then {per_second(section.get('next_limit'))} from {str(at).replace('T', ' ')}"
    return [per_second(section.get("limit")), then if at else ""]


def per_second(limit: object) -> str:
    return "off" if limit in (None, "off") else f"{limit}/s"


def figures(doc: Mapping[str, Any], throughput: Mapping[str, Any]) -> dict[str, str]:
    """The agent-level figures by element id; the page and the script share these ids."""
    streams = doc.get("streams") or []
    limit, then = bandwidth(doc.get("bandwidth"))
    return {
        "fig-rate": rate(throughput.get("rate_bytes_s", 0.0)),
        "fig-peak": rate(throughput.get("peak_bytes_s", 0.0)),
        "fig-streams": str(len(streams)),
        "fig-stalled": str(sum(1 for s in streams if s.get("stalled"))),
        "fig-lag": human_size(sum(as_int(s.get("lag_bytes")) for s in streams)),
        "fig-bandwidth": limit,
        "fig-bandwidth-next": then,
        # Slots for features still to come: shown once /status carries these fields.
        "fig-free-disk": figure(doc.get("free_disk_bytes"), size=True),
        "fig-undelivered": figure(doc.get("undelivered_events")),
    }


@cache
def _template() -> Template:
    return Template(static_file("page.html").decode())


def render_page(doc: Mapping[str, Any], throughput: Mapping[str, Any]) -> str:
    """The whole page: the /status document `doc` and the /throughput document, as HTML."""
    rates = throughput.get("streams") or {}
    streams = doc.get("streams") or []
    completions = doc.get("recent_completions") or []
    capacity = as_int(throughput.get("capacity")) or 2
    fields = {key.replace("-", "_"): esc(value) for key, value in figures(doc, throughput).items()}
    store_error = doc.get("store_error")
    return _template().substitute(
        fields,
        poll_ms=POLL_MS,
        agent_id=esc(doc.get("agent_id")),
        store=esc(doc.get("store")),
        generated=esc(doc.get("generated_at_utc")),
        store_error=esc(store_error),
        store_error_hidden="" if store_error else "hidden",
        stream_rows="".join(stream_row(r, rates.get(r.get("stream_id"))) for r in streams),
        no_streams_hidden="hidden" if streams else "",
        completion_rows="".join(completion_row(r) for r in completions),
        no_completions_hidden="hidden" if completions else "",
        chart_width=CHART_WIDTH,
        chart_height=CHART_HEIGHT,
        chart_minutes=f"{capacity * float(throughput.get('interval_s', 1.0)) / 60:g}",
        chart_points=chart_points(throughput.get("history_bytes_s") or [], capacity),
    )
