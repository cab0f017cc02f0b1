"""BANDWIDTH_LIMIT without a network: the timetable (pure, s3.bandwidth), the priority rule
(pure, s3.priority), the limiter with an injected clock, and paced bodies sent to moto."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from streamup import metrics
from streamup.checksums import crc32c_of
from streamup.errors import ConfigError, StorageError
from streamup.ops.report import render
from streamup.s3.bandwidth import describe, format_rate, parse_bandwidth, parse_rate
from streamup.s3.client import S3Storage
from streamup.s3.pacing import PacedBody, Pacer, PrioritySlots
from streamup.s3.priority import BACKLOG_TURN, Priority, grant, streak_after
from streamup.settings import load_settings
from tests.agent import wait_for
from tests.proxy import FaultProxy

KiB, MiB = 1024, 1024 * 1024
MON = datetime(2026, 11, 30)  # a Monday, 00:00


@pytest.mark.parametrize(
    ("text", "rate"),
    [("off", None), ("OFF", None), ("512k", 512 * KiB), ("10M", 10 * MiB), ("1.5M", 3 * MiB // 2),
     ("2g", 2 * 1024 * MiB), ("100000", 100000), ("10MiB", 10 * MiB), ("1k", 1024)],
)  # fmt: skip
def test_a_rate_is_bytes_per_second_with_binary_suffixes(text: str, rate: int | None) -> None:
    assert parse_rate(text) == rate
    assert parse_bandwidth(text).rate_at(MON) == rate


@pytest.mark.parametrize(
    ("value", "quoted"),
    [("10Q", "'10Q'"), ("0", "'0'"), ("100", "'100'"), ("25:00,1M", "'25:00,1M'"),
     ("08:00,1M 8:61,2M", "'8:61,2M'"), ("Xyz-08:00,1M", "'Xyz-08:00,1M'"),
     ("08:00 19:00,1M", "'08:00'"), ("08:00,1M 08:00,off", "'08:00,1M' and '08:00,off'"),
     ("Mon-Fri-08:00,1M Fri-08:00,2M", "'Fri-08:00,2M'"), ("08:00,fast", "'08:00,fast'")],
)  # fmt: skip
def test_a_bad_value_is_a_start_up_error_quoting_the_bad_entry(value: str, quoted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"bandwidth_limit": value}, prepare_watch_dir=False)
    message = str(caught.value)
    assert message.startswith("BANDWIDTH_LIMIT=") and quoted in message and "\n" not in message


def test_format_rate_reads_back() -> None:
    for text in ("off", "512k", "2M", "1.5M", "3G"):
        assert format_rate(parse_rate(text)) == text


DAILY = parse_bandwidth("08:00,512k 19:00,10M 23:00,off")


@pytest.mark.parametrize(
    ("at", "rate"),
    [(MON, None), (MON.replace(hour=7, minute=59), None), (MON.replace(hour=8), 512 * KiB),
     (MON.replace(hour=18, minute=59, second=59), 512 * KiB), (MON.replace(hour=19), 10 * MiB),
     (MON.replace(hour=23, minute=30), None)],
)  # fmt: skip
def test_a_daily_timetable_holds_each_rate_until_the_next_entry(at: datetime, rate: int) -> None:
    assert DAILY.rate_at(at) == rate


def test_the_rate_before_the_first_entry_of_a_day_is_the_last_of_the_day_before() -> None:
    table = parse_bandwidth("08:00,1M 20:00,2M")  # no entry at midnight
    assert table.rate_at(MON.replace(hour=3)) == 2 * MiB  # Monday 03:00: Sunday's 20:00 entry
    change = table.next_change(MON.replace(hour=21))
    assert change is not None and (change.at, change.rate) == (MON + timedelta(hours=32), MiB)


def test_weekday_entries_wrap_around_the_week() -> None:
    table = parse_bandwidth("Mon-Fri-08:00,2M Sat-00:00,off")
    sunday_night = MON + timedelta(days=6, hours=23, minutes=59)
    assert table.rate_at(sunday_night) is None
    assert table.rate_at(MON.replace(hour=7)) is None  # Monday before 08:00: still Saturday's
    assert table.rate_at(MON + timedelta(days=3, hours=23)) == 2 * MiB  # Thursday night
    change = table.next_change(sunday_night)
    assert change is not None and change.at == MON + timedelta(days=7, hours=8)
    friday = table.next_change(MON + timedelta(days=4, hours=9))
    assert friday is not None and (friday.at, friday.rate) == (MON + timedelta(days=5), None)


def test_a_day_range_may_wrap_past_sunday() -> None:
    table = parse_bandwidth("Sat-Mon-10:00,1M 18:00,off")
    ten = [table.rate_at(MON + timedelta(days=d, hours=10)) for d in range(7)]
    assert ten == [MiB, None, None, None, None, MiB, MiB]  # Mon, then Sat and Sun


def test_the_next_change_skips_entries_that_keep_the_rate() -> None:
    table = parse_bandwidth("08:00,1M 12:00,1M 20:00,off")
    change = table.next_change(MON.replace(hour=9))
    assert change is not None and change.at == MON.replace(hour=20) and change.rate is None
    assert parse_bandwidth("2M").next_change(MON) is None
    assert not parse_bandwidth("08:00,off 20:00,off").limited


def test_local_time_is_the_wall_clock_across_daylight_saving_changes() -> None:
    # Europe's spring change: the wall clock goes from 01:59 to 03:00 on 29 March 2026. The
    # 02:30 entry never shows on the clock; it is in force from the jump, as the clock says.
    table = parse_bandwidth("02:30,1M 04:00,off")
    before, after = datetime(2026, 3, 29, 1, 59), datetime(2026, 3, 29, 3, 0)
    assert (table.rate_at(before), table.rate_at(after)) == (None, MiB)
    # Autumn: 02:00-02:59 happens twice (25 October 2026); the table follows the wall clock.
    autumn = parse_bandwidth("02:30,1M 03:00,off")
    assert [autumn.rate_at(datetime(2026, 10, 25, 2, m)) for m in (10, 40, 10, 40)] == [
        None, MiB, None, MiB,
    ]  # fmt: skip


def test_status_describes_the_limit_now_and_the_next_change() -> None:
    assert describe(DAILY, MON.replace(hour=9)) == {
        "limit": "512k", "bytes_per_second": 512 * KiB,
        "next_change_at": "2026-11-30T19:00", "next_limit": "10M",
    }  # fmt: skip
    assert describe(parse_bandwidth("off"), MON)["next_change_at"] is None
    doc = {"bandwidth": describe(DAILY, MON.replace(hour=9)), "streams": []}
    assert "bandwidth limit: 512k (then 10M from 2026-11-30T19:00)" in render(doc)


# ------------------------------------------------------------------ the priority rule


def test_a_live_part_goes_first_and_the_backlog_gets_every_fifth_turn() -> None:
    streak, order = 0, []
    for _ in range(3 * BACKLOG_TURN):
        chosen = grant(free=1, total=4, live_waiting=True, backlog_waiting=True, live_streak=streak)
        assert chosen is not None
        order.append(chosen)
        streak = streak_after(chosen, streak)
    assert order.count(Priority.BACKLOG) == 3
    assert order[:BACKLOG_TURN] == [Priority.LIVE] * (BACKLOG_TURN - 1) + [Priority.BACKLOG]


@pytest.mark.parametrize(
    ("free", "total", "live", "backlog", "streak", "keep", "expected"),
    [(0, 4, True, True, 0, False, None), (1, 4, False, True, 0, False, Priority.BACKLOG),
     (1, 4, False, True, 0, True, None),  # the last slot waits for a live part
     (2, 4, False, True, 0, True, Priority.BACKLOG), (1, 1, False, True, 0, True, Priority.BACKLOG),
     (1, 4, False, True, BACKLOG_TURN - 1, True, Priority.BACKLOG),  # its turn: no starving
     (1, 4, True, False, 9, True, Priority.LIVE), (1, 4, False, False, 0, False, None)],
)  # fmt: skip
def test_the_grant_rule(
    free: int, total: int, live: bool, backlog: bool, streak: int, keep: bool, expected: Any
) -> None:
    chosen = grant(free=free, total=total, live_waiting=live, backlog_waiting=backlog,
                   live_streak=streak, keep_one_for_live=keep)  # fmt: skip
    assert chosen == expected


async def test_priority_slots_admit_a_live_part_before_waiting_backlog_parts() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(Priority.BACKLOG)
    order: list[str] = []

    async def wait(name: str, priority: Priority) -> None:
        async with slots.holding(priority):
            order.append(name)

    tasks = [asyncio.create_task(wait(f"b{i}", Priority.BACKLOG)) for i in range(2)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait("live", Priority.LIVE)))
    cancelled = asyncio.create_task(wait("gone", Priority.LIVE))
    await asyncio.sleep(0)
    cancelled.cancel()
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["live", "b0", "b1"]
    assert slots._free == 1  # the cancelled waiter took nothing with it


# ------------------------------------------------------------------ the limiter


class Clocks:
    """A monotonic clock and a wall clock that the test moves by hand."""

    def __init__(self, wall: datetime) -> None:
        self.now_s, self.wall = 1000.0, wall

    def advance(self, seconds: float) -> None:
        self.now_s += seconds
        self.wall += timedelta(seconds=seconds)


def test_a_timetable_whose_next_entry_is_a_minute_away_switches_at_that_minute() -> None:
    clocks = Clocks(datetime(2026, 12, 1, 13, 59, 0))
    table = parse_bandwidth("08:00,512k 14:00,2M 23:00,off")
    with capture_logs() as logs:
        pacer = Pacer(table, clock=lambda: clocks.now_s, wall=lambda: clocks.wall)
        assert pacer.rate == 512 * KiB
        assert pacer.next_change() == (datetime(2026, 12, 1, 14, 0), 2 * MiB)
        clocks.advance(59.5)
        assert pacer.refresh() == 512 * KiB  # 13:59:59.5
        clocks.advance(0.5)
        assert pacer.refresh() == 2 * MiB  # 14:00:00
    assert metrics.BANDWIDTH_LIMIT._value.get() == 2 * MiB
    changes = [(e["limit"], e["next_change_at"]) for e in logs if e["event"] == "bandwidth.limit"]
    assert changes == [("512k", "2026-12-01T14:00"), ("2M", "2026-12-01T23:00")]


def test_while_the_limit_is_off_a_part_is_its_own_bytes() -> None:
    clocks = Clocks(MON.replace(hour=1))
    pacer = Pacer(DAILY, clock=lambda: clocks.now_s, wall=lambda: clocks.wall)
    data = b"x" * 1000
    assert pacer.body(data, Priority.LIVE) is data  # 01:00: off, no wrapper
    clocks.advance(8 * 3600)
    body = pacer.body(data, Priority.LIVE)
    assert isinstance(body, PacedBody) and len(body) == 1000


class Wire:
    """What aiohttp's writer does with a payload's slices: takes each (and lets others run)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.written = 0

    async def write(self, chunk: memoryview) -> None:
        self.chunks.append(bytes(chunk))
        self.written += len(chunk)
        await asyncio.sleep(0)


async def test_paced_slices_go_at_the_rate_and_live_parts_get_most_of_the_line() -> None:
    pacer = Pacer(parse_bandwidth("4M"))
    wires = {Priority.LIVE: Wire(), Priority.BACKLOG: Wire()}
    bodies = [PacedBody(pacer, bytes(4 * MiB), p) for p in (Priority.LIVE, *[Priority.BACKLOG] * 2)]
    started = time.monotonic()
    tasks = [asyncio.create_task(b.write_with_length(wires[b._priority], None)) for b in bodies]
    await asyncio.sleep(0.75)
    elapsed = time.monotonic() - started
    live, total = wires[Priority.LIVE].written, sum(w.written for w in wires.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert abs(total / elapsed - 4 * MiB) < 0.2 * 4 * MiB, total / elapsed
    assert live / total > 0.7, (live, total)  # 4 slices in 5: 80 % when both wait
    assert max(len(c) for c in wires[Priority.LIVE].chunks) == 256 * KiB  # 1/16 s at 4 MiB/s


async def test_a_paced_body_is_exactly_its_bytes() -> None:
    data = os.urandom(MiB + 7)
    wire = Wire()
    body = PacedBody(Pacer(parse_bandwidth("1G")), data, Priority.LIVE)
    await body.write_with_length(wire, None)
    assert b"".join(wire.chunks) == data and len(body) == len(data)


async def test_a_stopped_pacer_fails_paced_parts_at_once() -> None:
    pacer = Pacer(parse_bandwidth("16k"))  # 4 KiB slices: a quarter of a second each
    wire = Wire()
    body = PacedBody(pacer, bytes(64 * KiB), Priority.BACKLOG)
    sending = asyncio.ensure_future(body.write_with_length(wire, None))
    await asyncio.sleep(0.1)  # the first slices went (the line was idle); the next waits
    assert 0 < wire.written < 64 * KiB
    pacer.stop()
    with pytest.raises(StorageError, match="stopping"):
        await asyncio.wait_for(sending, 5)
    with pytest.raises(StorageError, match="stopping"):
        pacer.body(b"x", Priority.LIVE)


async def test_a_paced_part_is_stored_byte_for_byte_with_its_checksums(storage: S3Storage) -> None:
    upload_id = await storage.create_upload("paced.mp4", "video/mp4", crc32c=True)
    data = os.urandom(5 * MiB + 123)
    pacer = Pacer(parse_bandwidth("40M"))
    body = pacer.body(data, Priority.LIVE)
    assert isinstance(body, PacedBody)
    md5 = hashlib.md5(data).digest()
    etag = (
        await storage.upload_part("paced.mp4", upload_id, 1, body, crc32c=crc32c_of(data), md5=md5)
    ).etag
    assert etag.strip('"') == md5.hex()
    # A retry sends a new body; a spent one would send nothing, which the server refuses.
    etag = (
        await storage.upload_part(
            "paced.mp4", upload_id, 1, pacer.body(data, Priority.LIVE), crc32c=crc32c_of(data)
        )
    ).etag
    assert etag.strip('"') == md5.hex()


async def test_a_paced_part_cut_on_the_wire_fails_retryably_and_a_new_body_goes_whole(
    storage: S3Storage, proxy: FaultProxy, bucket: str
) -> None:
    via_proxy = S3Storage(
        bucket=bucket, region="us-east-1", endpoint_url=proxy.url,
        access_key_id="testing", secret_access_key="testing",
    )  # fmt: skip
    await via_proxy.open()
    try:
        upload_id = await via_proxy.create_upload("cut.mp4", "video/mp4", crc32c=True)
        data = os.urandom(5 * MiB)
        crc, pacer = crc32c_of(data), Pacer(parse_bandwidth("4M"))
        sending = asyncio.ensure_future(via_proxy.upload_part(
            "cut.mp4", upload_id, 1, pacer.body(data, Priority.LIVE), crc32c=crc
        ))  # fmt: skip
        started = proxy.bytes_up
        sent_a_mib = lambda: proxy.bytes_up - started >= MiB  # noqa: E731
        await asyncio.to_thread(wait_for, sent_a_mib, deadline_s=10, what="a MiB of the part")
        proxy.cut()
        with pytest.raises(StorageError) as caught:
            await sending
        assert caught.value.retryable
        proxy.restore()
        # What the agent's retry loop does: the same bytes again, in a new paced body.
        await via_proxy.upload_part(
            "cut.mp4", upload_id, 1, pacer.body(data, Priority.LIVE), crc32c=crc
        )
        [part] = (await storage.list_parts("cut.mp4", upload_id)).values()
        assert (part.size_bytes, part.etag.strip('"')) == (len(data), hashlib.md5(data).hexdigest())
    finally:
        await via_proxy.close()
