"""The status page's pure parts, with plain tables: rendering and escaping, the chart, the
throughput history, the token check and the STATUS_TOKEN setting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest

from streamup.errors import ConfigError
from streamup.models import AgentSnapshot, FileIdentity, Status, StreamRecord, StreamView
from streamup.ops.http import TOKEN_COOKIE, authorised, parse_request, presented_tokens
from streamup.ops.page import (
    bandwidth,
    chart_points,
    completion_row,
    figures,
    render_page,
    short_time,
    stream_row,
)
from streamup.ops.throughput import Throughput, sample_while
from streamup.s3.bandwidth import describe, parse_bandwidth
from streamup.settings import load_settings

MiB = 1024 * 1024
HOSTILE = "<img src=x onerror=alert(1)>.mp4"
ID = "5b0c4a8e-0d3e-4f7a-9a53-3d1f0c2b9e11"
TOKEN = "s3cret-token-0123456789"


VOID = ("progress", "meta", "link", "rect", "polyline")  # void or empty: no text to keep


class Tree(HTMLParser):
    """Start tags seen, and the text inside each element, by its class and by its id."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, str] = {}
        self._open: list[tuple[str, ...]] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        names = tuple(v for k, v in attrs if k in ("class", "id") and v)
        if tag not in VOID:
            self._open.append(names)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for names in self._open:
            for name in names:
                self.text[name] = self.text.get(name, "") + data

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


def live_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stream_id": ID, "path": f"/data/watch/cam-1/{HOSTILE}", "state": "active",
        "stalled": False, "owner": "rec-1:42", "uploaded_bytes": 5 * MiB,
        "size_bytes": 8 * MiB, "lag_bytes": 3 * MiB, "parts": 1, "key": "k", "error": None,
    }  # fmt: skip
    row.update(changes)
    return row


def done_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stream_id": ID, "path": f"/data/watch/{HOSTILE}", "state": "completed",
        "size_bytes": 12 * MiB, "bucket": "b", "key": f"streams/{ID}/{HOSTILE}",
        "completed_at_utc": "2026-11-24T12:00:00+00:00", "end_reason": "idle",
    }  # fmt: skip
    row.update(changes)
    return row


def doc(**changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "source": "agent", "store": "sqlite", "agent_id": "rec-1:42",
        "generated_at_utc": "2026-11-24T12:00:01+00:00", "store_error": None,
        "streams": [live_row()], "recent_completions": [done_row()],
    }  # fmt: skip
    found.update(changes)
    return found


@pytest.mark.parametrize(
    ("row", "cell", "shown"),
    [
        (live_row(), "name", HOSTILE),
        (live_row(), "state", "active"),
        (live_row(stalled=True), "state", "active stalled"),
        (live_row(), "bytes", "5.0 MiB / 8.0 MiB"),
        (live_row(), "pct", "62%"),
        (live_row(size_bytes=0, uploaded_bytes=0), "pct", "0%"),
        (live_row(size_bytes=4 * MiB), "bytes", "5.0 MiB / 5.0 MiB"),  # size lags behind parts
        (live_row(), "lag", "3.0 MiB"),
        (live_row(parts=7), "parts", "7"),
        (live_row(), "owner", "rec-1:42"),
        (live_row(owner=None), "owner", ""),
        (live_row(error="S3 <b>down</b> & out"), "error", "S3 <b>down</b> & out"),
    ],
)
def test_a_stream_row_shows_each_value_as_text(row: dict[str, Any], cell: str, shown: str) -> None:
    tree = Tree(stream_row(row, 2.5 * MiB))
    assert tree.text.get(cell, "") == shown
    assert tree.named("img") == [] and tree.named("b") == []


def test_a_stream_row_has_a_progress_bar_its_rate_and_the_full_path_as_a_title() -> None:
    tree = Tree(stream_row(live_row(), 2.5 * MiB))
    assert tree.named("progress") == [{"max": str(8 * MiB), "value": str(5 * MiB)}]
    assert tree.text["rate"] == "2.5 MiB/s"
    (cell,) = [attrs for tag, attrs in tree.tags if attrs.get("class") == "name"]
    assert cell["title"] == f"/data/watch/cam-1/{HOSTILE}"
    assert Tree(stream_row(live_row(), None)).text.get("rate", "") == ""  # not sampled yet


@pytest.mark.parametrize(
    ("hostile_field", "value"),
    [
        ("path", '/w/"><script>alert(1)</script>.mp4'),
        ("path", "/w/x' onmouseover='alert(1).mp4"),
        ("stream_id", '"><img src=x onerror=alert(1)>'),
        ("owner", "<svg onload=alert(1)>"),
        ("state", "<iframe src=//evil>"),
    ],
)
def test_no_value_can_open_a_tag_or_leave_its_attribute(hostile_field: str, value: str) -> None:
    markup = stream_row(live_row(**{hostile_field: value}), None)
    tree = Tree(markup)
    assert {tag for tag, _ in tree.tags} <= {"tr", "td", "progress", "span"}
    assert all(not name.startswith("on") for _, attrs in tree.tags for name in attrs)


@pytest.mark.parametrize(
    ("row", "link"),
    [
        (done_row(), f"metadata/{ID}"),
        (done_row(stream_id="a/../b?c"), "metadata/a%2F..%2Fb%3Fc"),  # one path segment
        (done_row(state="aborted_no_parts"), None),  # no object, so no metadata
    ],
)
def test_a_completion_links_to_the_agents_metadata_route(
    row: dict[str, Any], link: str | None
) -> None:
    tree = Tree(completion_row(row))
    assert [a["href"] for a in tree.named("a")] == ([link] if link else [])
    assert tree.text["name"] == HOSTILE
    assert tree.text["key"] == f"streams/{ID}/{HOSTILE}"
    assert tree.named("img") == []


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("2026-11-24T12:00:58.598740+00:00", "2026-11-24 12:00:58"),
        ("2026-11-24T12:00:58+00:00", "2026-11-24 12:00:58"),
        ("2026-11-24T12:00:58+02:00", "2026-11-24T12:00:58+02:00"),  # not UTC: as given
        (None, ""),
        ("<b>", "<b>"),
    ],
)
def test_completion_times_are_short_utc(value: str | None, shown: str) -> None:
    assert short_time(value) == shown


@pytest.mark.parametrize(
    ("history", "capacity", "points"),
    [
        ([], 5, ""),
        ([0.0], 5, "300.0,59.0"),  # the newest sample sits at the right edge
        ([0.0, 10.0], 3, "150.0,59.0 300.0,1.0"),  # the peak reaches the top
        ([5.0, 10.0, 0.0], 3, "0.0,30.0 150.0,1.0 300.0,59.0"),
        ([1.0, 2.0, 3.0, 4.0], 2, "0.0,15.5 300.0,1.0"),  # only the last `capacity` values
        ([0.5, 0.5], 2, "0.0,30.0 300.0,30.0"),  # below 1 B/s the scale stays at 1 B/s
    ],
)
def test_chart_points(history: list[float], capacity: int, points: str) -> None:
    assert chart_points(history, capacity, width=300, height=60) == points


@pytest.mark.parametrize(
    ("extra", "free_disk", "undelivered"),
    [
        ({}, "not reported", "not reported"),  # slots until those features exist
        ({"free_disk_bytes": 3 * 1024 * MiB, "undelivered_events": 2}, "3.0 GiB", "2"),
        ({"free_disk_bytes": 0, "undelivered_events": 0}, "0 B", "0"),
    ],
)
def test_agent_figures_and_the_slots_for_later_features(
    extra: dict[str, Any], free_disk: str, undelivered: str
) -> None:
    shown = figures(
        doc(streams=[live_row(), live_row(stalled=True)], **extra),
        {"rate_bytes_s": 2 * MiB, "peak_bytes_s": 6 * MiB},
    )
    assert shown == {
        "fig-rate": "2.0 MiB/s", "fig-peak": "6.0 MiB/s", "fig-streams": "2",
        "fig-stalled": "1", "fig-lag": "6.0 MiB", "fig-bandwidth": "not reported",
        "fig-bandwidth-next": "", "fig-free-disk": free_disk, "fig-undelivered": undelivered,
    }  # fmt: skip


# /status's `bandwidth` section (s3.bandwidth.describe) for BANDWIDTH_LIMIT values.
BANDWIDTH_SHOWN: list[tuple[str, list[str]]] = [
    ("off", ["off", ""]),
    ("2M", ["2M/s", ""]),
    ("08:00,512k 19:00,off", ["512k/s", "then off from 2026-11-24 19:00"]),
    ("08:00,off 19:00,1.5M", ["off", "then 1.5M/s from 2026-11-24 19:00"]),
]
NOON = datetime(2026, 11, 24, 12, 0)  # a Tuesday, local time


@pytest.mark.parametrize(("value", "shown"), BANDWIDTH_SHOWN)
def test_the_bandwidth_limit_and_its_next_change_are_shown(value: str, shown: list[str]) -> None:
    section = describe(parse_bandwidth(value), NOON)
    assert bandwidth(section) == shown
    tree = Tree(render_page(doc(bandwidth=section), Throughput().document()))
    assert [tree.text["fig-bandwidth"], tree.text.get("fig-bandwidth-next", "")] == shown


def test_a_status_without_a_bandwidth_section_says_not_reported() -> None:
    assert bandwidth(None) == bandwidth([]) == ["not reported", ""]


def test_the_whole_page_is_a_static_snapshot_with_every_value_escaped() -> None:
    throughput = Throughput(every_s=1.0, history_s=60.0)
    markup = render_page(
        doc(agent_id="<b>agent</b>", store_error="redis <down>"), throughput.document()
    )
    tree = Tree(markup)
    assert tree.named("img") == [] and tree.named("b") == [{"id": "agent-id"}, {"id": "store"}]
    assert tree.text["agent-id"] == "<b>agent</b>"
    assert tree.text["store-error-text"] == "redis <down>"
    assert tree.text["no-streams"] == "no streams in progress"
    assert tree.text["chart-minutes"] == "1"
    # Only the page's own files: no inline script, nothing from another origin.
    assert tree.named("script") == [{"src": "static/page.js", "defer": None}]
    assert [a["href"] for a in tree.named("link")] == ["static/page.css"]
    hidden = {attrs.get("id") for _, attrs in tree.tags if "hidden" in attrs}
    assert hidden == {"no-streams", "no-completions"}  # both tables have rows
    assert "$" not in markup  # every placeholder was filled


def test_the_empty_page_says_so() -> None:
    tree = Tree(render_page(doc(streams=[], recent_completions=[]), Throughput().document()))
    hidden = {attrs.get("id") for _, attrs in tree.tags if "hidden" in attrs}
    assert hidden == {"store-error"}
    assert tree.named("tr") == [{}, {}]  # the two header rows


def view(stream_id: str, uploaded_bytes: int) -> StreamView:
    now = datetime(2026, 11, 24, tzinfo=UTC)
    record = StreamRecord(
        stream_id=stream_id, path=f"/w/{stream_id}.mp4", relative_path=f"{stream_id}.mp4",
        bucket="b", key="k", status=Status.ACTIVE, identity=FileIdentity(1, 2),
        part_size_bytes=5 * MiB, part_size_fixed=False, started_at=now, last_activity_at=now,
        uploaded_bytes=uploaded_bytes,
    )  # fmt: skip
    return StreamView(record, parts=uploaded_bytes // (5 * MiB), stalled=False)


def test_throughput_follows_the_counter_and_each_stream_follows_its_own_bytes() -> None:
    meter = Throughput(every_s=1.0, history_s=4.0, window_s=2.0)
    # (now, counter, {stream: uploaded bytes})
    samples = [
        (0.0, 0, {"a": 0}),
        (1.0, 5 * MiB, {"a": 5 * MiB}),
        (2.0, 10 * MiB, {"a": 5 * MiB, "b": 5 * MiB}),
        (3.0, 20 * MiB, {"b": 10 * MiB}),  # `a` ended: its last part counts, its rate goes
        (4.0, 20 * MiB, {"b": 10 * MiB}),
        (5.0, 20 * MiB, {"b": 10 * MiB}),
    ]
    for now, total, streams in samples:
        meter.add(now, total, [view(s, n) for s, n in streams.items()])
    shown = meter.document()
    assert shown["history_bytes_s"] == [5 * MiB, 7.5 * MiB, 5 * MiB, 0.0]  # the last 4 s
    assert (shown["rate_bytes_s"], shown["peak_bytes_s"]) == (0.0, 7.5 * MiB)
    assert shown["streams"] == {"b": 0.0}
    assert (shown["interval_s"], shown["capacity"]) == (1.0, 4)


def test_throughput_starts_empty() -> None:
    shown = Throughput().document()
    assert (shown["rate_bytes_s"], shown["peak_bytes_s"], shown["history_bytes_s"]) == (0, 0, [])


def request(target: str = "/", **headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: x"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("head", "ok"),
    [
        (request("/"), False),
        (request(f"/?token={TOKEN}"), True),
        (request(f"/status?pretty=1&token={TOKEN}"), True),
        (request("/?token=wrong-token-0123456789"), False),
        (request("/", Authorization=f"Bearer {TOKEN}"), True),
        (request("/", Authorization=f"bearer {TOKEN}"), True),  # schemes are case-insensitive
        (request("/", Authorization=f"Basic {TOKEN}"), False),
        (request("/", Authorization="Bearer"), False),
        (request("/", Cookie=f"a=b; {TOKEN_COOKIE}={TOKEN}"), True),
        (request("/", Cookie=f"other={TOKEN}"), False),
        (request("/", Cookie=f"{TOKEN_COOKIE}={TOKEN[:-1]}"), False),
    ],
)
def test_a_request_is_authorised_only_with_the_token(head: bytes, ok: bool) -> None:
    assert authorised(parse_request(head), TOKEN) is ok
    assert authorised(parse_request(head), None) is True  # no token set: open


def test_a_request_head_is_parsed_into_path_query_and_headers() -> None:
    parsed = parse_request(request("/metadata/a%2Fb?token=x&token=y", Authorization="Bearer z"))
    assert (parsed.method, parsed.path) == ("GET", "/metadata/a/b")
    assert presented_tokens(parsed) == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (None, True),
        ("", True),  # empty is unset, as for the other optional settings
        (TOKEN, True),
        ("a" * 16, True),
        ("short-token", False),
        ("has space in it 0123", False),
        ("semi;colon;breaks;cookies", False),
        ("x" * 257, False),
    ],
)
def test_status_token_is_validated_and_never_shown(value: str | None, accepted: bool) -> None:
    overrides = {"status_token": value}
    if accepted:
        settings = load_settings(overrides, prepare_watch_dir=False)
        shown = settings.redacted()["status_token"]
        assert shown == (None if not value else "**********")
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides, prepare_watch_dir=False)
    message = str(caught.value)
    assert message.startswith("STATUS_TOKEN='**********' is invalid: must be 16-256")
    assert str(value) not in message


def agent_snapshot(*views: StreamView) -> AgentSnapshot:
    return AgentSnapshot(agent_id="a", store_name="sqlite", watch_dir="/w", streams=views)


async def test_the_sampler_samples_while_the_server_serves_and_then_stops() -> None:
    meter = Throughput(every_s=0.01, history_s=1.0, window_s=0.05)
    totals = iter(range(0, 10 * MiB, MiB))
    serving = iter([True] * 5 + [False])
    await asyncio.wait_for(
        sample_while(
            lambda: next(serving), lambda: agent_snapshot(view("a", MiB)), meter,
            total=lambda: float(next(totals)),
        ),
        5,
    )  # fmt: skip
    shown = meter.document()
    history = shown["history_bytes_s"]
    assert isinstance(history, list) and len(history) == 5 and max(history) > 0
    assert shown["streams"] == {"a": 0.0}


async def test_a_fault_in_the_sampler_ends_only_the_sampler() -> None:
    def broken() -> AgentSnapshot:
        raise RuntimeError("a bug")

    meter = Throughput()
    await asyncio.wait_for(sample_while(lambda: True, broken, meter, total=lambda: 0.0), 5)
    assert meter.document()["history_bytes_s"] == []
