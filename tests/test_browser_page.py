"""The status page in a real headless Chromium while a real `streamup run` uploads a growing file.

Debian's Chromium (/usr/bin/chromium, installed by scripts/setup.sh) driven by Playwright for
Python; moto's S3 over HTTP; the agent protected by STATUS_TOKEN. The recording is named like
an attack (`<img src=x onerror=alert(1)>.mp4`). One run is observed once (module-scoped) and
several tests each check one thing the browser showed.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from streamup.ops.page import bandwidth, chart_points, percent, short_time
from streamup.ops.report import human_size
from tests.agent import AgentProcess, MiB, agent_env, metadata_docs, wait_for
from tests.conftest import S3_TEST_CREDENTIALS
from tests.servers import free_port
from tests.test_operator import Recorder

HOSTILE = "<img src=x onerror=alert(1)>.mp4"
TOKEN = "browser-test-token-0123456789"
# What Chromium needs on these machines: no sandbox as root, no GPU, and no background traffic
# (the closed network refuses it). Playwright adds --headless and a fresh --user-data-dir.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
DEADLINE_MS = 30_000
# A limit that changes twice a day (whatever the time, a next change is due) and never holds
# the 2.5 MiB/s recording back.
BANDWIDTH_LIMIT = "00:00,64M 12:00,48M"

ROW = "#streams tbody tr"
DONE_ROW = "#completions tbody tr"


@dataclass
class Seen:
    """What one agent run showed in the browser; gathered once, checked by several tests."""

    path: Path
    refused: dict[str, int]  # route -> status code without the token
    open_routes: dict[str, int]  # /metrics and /healthz without the token
    first_visit_status: int  # the browser's first request, without the token
    address_after_login: str
    uploaded_first: int
    uploaded_later: int
    size_later: int
    rate_shown: str
    bandwidth_shown: list[str]  # the limit and its next change, as the script showed them
    bandwidth_status: dict[str, Any]  # /status's `bandwidth` section at that moment
    snapshot_bandwidth: list[str]  # the same, server-rendered
    chart_points: str
    live_text: str
    growing_name: str  # the row's name as the script built it
    snapshot_name: str  # the row's name in the server-rendered page, JavaScript off
    snapshot_live_text: str
    done_name: str
    done_key: str
    metadata_doc: dict[str, Any]  # what the page's link showed
    s3_metadata: dict[str, dict[str, Any]]  # what the bucket holds, by video key
    js_formats: dict[str, list[str]]  # page.js's formats of FORMAT_CASES
    same_document: bool  # no reload happened from the first visit to the completion
    img_counts: list[int] = field(default_factory=list)  # <img> elements seen at each step
    dialogs: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)
    exit_code: int = -1
    log: str = ""


def http_code(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def launch(playwright: Any) -> Browser:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), "Debian's chromium is missing: run scripts/setup.sh"
    browser: Browser = playwright.chromium.launch(
        executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
    )
    return browser


def img_count(page: Page) -> int:
    return int(page.evaluate("document.querySelectorAll('img').length"))


def row_number(page: Page, selector: str) -> int:
    return int(page.eval_on_selector(selector, "e => Number(e.value)"))


def bandwidth_shown(page: Page) -> list[str]:
    return [page.text_content(f"#fig-bandwidth{part}") or "" for part in ("", "-next")]


def status_document(port: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        document: dict[str, Any] = json.load(response)
    return document


def observe(page: Page, seen_so_far: dict[str, Any], port: int, recorder: Recorder) -> None:
    """Drive the JavaScript page from an empty table to a completion, never reloading it."""
    page.on(
        "dialog", lambda dialog: (seen_so_far["dialogs"].append(dialog.message), dialog.dismiss())
    )
    first = page.goto(f"http://127.0.0.1:{port}/")
    assert first is not None
    seen_so_far["first_visit_status"] = first.status
    page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
    seen_so_far["address_after_login"] = page.url
    page.wait_for_selector("#live.ok", timeout=DEADLINE_MS)
    page.evaluate("window.streamupSameDocument = true")  # gone if the page ever reloads
    recorder.start()
    name_cell = f"{ROW} td.name"
    page.wait_for_selector(name_cell, timeout=DEADLINE_MS)
    seen_so_far["img_counts"].append(img_count(page))
    beyond = (
        "([sel, before]) => { const bar = document.querySelector(sel);"
        " return bar && Number(bar.value) > before; }"
    )
    # The row may appear before its first part lands; progress is measured from that part.
    page.wait_for_function(beyond, arg=[f"{ROW} progress", 0], timeout=DEADLINE_MS)
    first_bytes = row_number(page, f"{ROW} progress")
    page.wait_for_function(beyond, arg=[f"{ROW} progress", first_bytes], timeout=DEADLINE_MS)
    page.wait_for_function(
        "() => !['0 B/s', ''].includes(document.getElementById('fig-rate').textContent)",
        timeout=DEADLINE_MS,
    )
    seen_so_far.update(
        uploaded_first=first_bytes,
        uploaded_later=row_number(page, f"{ROW} progress"),
        size_later=int(page.eval_on_selector(f"{ROW} progress", "e => Number(e.max)")),
        rate_shown=page.text_content("#fig-rate"),
        chart_points=page.get_attribute("#chart-line", "points") or "",
        live_text=page.text_content("#live"),
        growing_name=page.text_content(name_cell),
        bandwidth_shown=bandwidth_shown(page),
        bandwidth_status=status_document(port)["bandwidth"],
    )
    seen_so_far["img_counts"].append(img_count(page))
    seen_so_far["js_formats"] = page.evaluate(
        """(cases) => {
            const f = window.streamupFormats;
            return {
                sizes: cases.sizes.map(f.humanSize),
                percents: cases.percents.map(([u, s]) => f.percent(u, s)),
                times: cases.times.map(f.shortTime),
                charts: cases.charts.map(([h, c]) => f.chartPoints(h, c)),
                bandwidths: cases.bandwidths.map(f.bandwidth),
            };
        }""",
        FORMAT_CASES,
    )


# Inputs for the formats that page.py (the server) and page.js (the browser) both implement.
FORMAT_CASES: dict[str, list[Any]] = {
    "sizes": [0, 1, 512.5, 1023, 1024, 1280, 5 * MiB, 2621440.0, 1536 * MiB, 5 * 1024**5],
    "percents": [[5 * MiB, 8 * MiB], [0, 0], [1, 3], [8, 8]],
    "times": ["2026-11-24T12:00:58.598740+00:00", "2026-11-24T12:00:58+00:00", "x", None],
    "charts": [[[], 5], [[0.0], 5], [[5.0, 10.0, 0.0], 3], [[1, 2, 3, 4], 2], [[7.5, 2.5], 7]],
    "bandwidths": [
        None,
        [],
        {"limit": "off", "next_change_at": None, "next_limit": None},
        {"limit": "2M", "next_change_at": "2026-11-24T19:00", "next_limit": "off"},
        {"limit": "off", "next_change_at": "2026-11-25T08:00", "next_limit": "1.5M"},
    ],
}


def python_formats() -> dict[str, list[str]]:
    return {
        "sizes": [human_size(n) for n in FORMAT_CASES["sizes"]],
        "percents": [percent(u, s) for u, s in FORMAT_CASES["percents"]],
        "times": [short_time(v) for v in FORMAT_CASES["times"]],
        "charts": [chart_points(h, c) for h, c in FORMAT_CASES["charts"]],
        "bandwidths": [bandwidth(b) for b in FORMAT_CASES["bandwidths"]],
    }


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[Seen]:
    root = tmp_path_factory.mktemp("browser")
    port = free_port()
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    env = agent_env(
        watch_dir=root / "watch", state_dir=root / "state", s3_endpoint=moto_endpoint,
        bucket=bucket, PROM_PORT=str(port), STATUS_TOKEN=TOKEN, LOG_LEVEL="INFO",
        BANDWIDTH_LIMIT=BANDWIDTH_LIMIT,
    )  # fmt: skip
    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", **S3_TEST_CREDENTIALS
    )
    agent = AgentProcess(env, root / "agent.log").start()
    # A recorder at 2.5 MiB/s: a part every two seconds, so the page sees it grow.
    recorder = Recorder(root / "watch" / "cam-1" / HOSTILE, trickle_bytes=128 * 1024)
    found: dict[str, Any] = {"dialogs": [], "img_counts": [], "screenshots": []}
    started = time.monotonic()
    try:
        wait_for(lambda: http_code(port, "/healthz") == 200, deadline_s=20, what="/healthz")
        found["refused"] = {
            p: http_code(port, p) for p in ("/", "/status", "/throughput", "/metadata/x")
        }
        found["open_routes"] = {p: http_code(port, p) for p in ("/metrics", "/healthz")}
        with sync_playwright() as playwright:
            browser = launch(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            observe(page, found, port, recorder)
            shot = root / "status-page-uploading.png"
            page.screenshot(path=str(shot), full_page=True)
            found["screenshots"].append(shot)

            # The same moment without JavaScript: the server-rendered snapshot.
            static = browser.new_context(
                java_script_enabled=False,
                extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
            )
            snapshot = static.new_page()
            snapshot.goto(f"http://127.0.0.1:{port}/")
            found["snapshot_name"] = snapshot.text_content(f"{ROW} td.name")
            found["snapshot_live_text"] = snapshot.text_content("#live")
            found["snapshot_bandwidth"] = bandwidth_shown(snapshot)
            found["img_counts"].append(img_count(snapshot))
            static.close()

            recorder.finish()
            done_name = f"{DONE_ROW} td.name"
            page.wait_for_selector(done_name, timeout=DEADLINE_MS)
            page.wait_for_selector("#no-streams:not([hidden])", timeout=DEADLINE_MS)
            found["done_name"] = page.text_content(done_name)
            found["done_key"] = page.text_content(f"{DONE_ROW} td.key")
            found["img_counts"].append(img_count(page))
            found["same_document"] = page.evaluate("window.streamupSameDocument === true")
            shot = root / "status-page-completed.png"
            page.screenshot(path=str(shot), full_page=True)
            found["screenshots"].append(shot)

            # The completion's link opens the metadata document the agent serves.
            with page.expect_navigation():
                page.click(f"{DONE_ROW} td.meta a")
            found["metadata_doc"] = json.loads(page.inner_text("body"))
            browser.close()
        found["s3_metadata"] = metadata_docs(s3, bucket)
        result = Seen(path=recorder.path, **found)
        result.exit_code = agent.stop()
        result.log = agent.log_text()
        print(f"browser tier: {time.monotonic() - started:.1f} s")
        yield result
    except Exception as exc:
        raise AssertionError(f"{exc}\nend of the agent's log:\n{agent.log_text()[-4000:]}") from exc
    finally:
        recorder.finish()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()


def test_without_the_token_the_page_and_its_data_answer_401(seen: Seen) -> None:
    assert seen.refused == {"/": 401, "/status": 401, "/throughput": 401, "/metadata/x": 401}
    assert seen.first_visit_status == 401  # the browser too


def test_metrics_and_healthz_stay_open_with_a_token(seen: Seen) -> None:
    assert seen.open_routes == {"/metrics": 200, "/healthz": 200}


def test_the_token_is_masked_in_the_start_up_line_and_never_logged(seen: Seen) -> None:
    (config,) = [json.loads(line) for line in seen.log.splitlines() if '"agent.config"' in line]
    assert config["status_token"] == "**********"
    assert TOKEN not in seen.log


def test_the_token_in_the_address_is_traded_for_a_cookie(seen: Seen) -> None:
    assert seen.address_after_login.endswith("/") and "token" not in seen.address_after_login


def test_the_page_shows_the_growing_stream_and_its_progress_advances_without_a_reload(
    seen: Seen,
) -> None:
    assert seen.uploaded_first >= 5 * MiB  # a whole part, shown by the page's own polling
    assert seen.uploaded_later > seen.uploaded_first
    assert seen.size_later >= seen.uploaded_later
    assert seen.rate_shown.endswith("/s") and seen.rate_shown != "0 B/s"
    assert seen.chart_points.count(",") >= 2  # the throughput chart has a line
    assert seen.live_text.startswith("live")
    assert seen.same_document


def test_the_hostile_file_name_is_text_in_the_live_and_the_static_page(seen: Seen) -> None:
    assert seen.growing_name == HOSTILE  # built by the script while it grew
    assert seen.snapshot_name == HOSTILE  # server-rendered, JavaScript off
    assert seen.snapshot_live_text.startswith("Snapshot of")
    assert seen.done_name == HOSTILE
    assert seen.img_counts == [0, 0, 0, 0]
    assert seen.dialogs == []  # no alert() ever ran


def test_the_finished_recording_is_listed_with_its_key_and_metadata(seen: Seen) -> None:
    assert seen.done_key.endswith(f"/cam-1/{HOSTILE}")
    doc = seen.metadata_doc
    assert doc == seen.s3_metadata[seen.done_key]  # the very document in the bucket
    assert doc["original_file_path"] == str(seen.path)
    assert doc["s3_key_prefix"] == seen.done_key
    assert doc["total_size_bytes"] == seen.path.stat().st_size
    assert seen.exit_code == 0


def test_the_bandwidth_limit_and_its_next_change_are_shown_live_and_in_the_snapshot(
    seen: Seen,
) -> None:
    status = seen.bandwidth_status
    assert status["limit"] in ("64M", "48M") and status["next_limit"] in ("64M", "48M")
    assert status["next_limit"] != status["limit"]
    limit, then = seen.bandwidth_shown
    assert limit == f"{status['limit']}/s"
    at = status["next_change_at"].replace("T", " ")
    assert then == f"then {status['next_limit']}/s from {at}"
    assert at.endswith(("00:00", "12:00"))
    assert seen.snapshot_bandwidth == seen.bandwidth_shown


def test_the_script_formats_values_as_the_server_does(seen: Seen) -> None:
    assert seen.js_formats == python_formats()


def test_screenshots_are_saved_as_artifacts(seen: Seen, capsys: pytest.CaptureFixture[str]) -> None:
    for shot in seen.screenshots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with capsys.disabled():
        for shot in seen.screenshots:
            print(f"\nstatus page screenshot: {shot}")
