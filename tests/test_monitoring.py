"""deploy/prometheus and deploy/grafana: the alert rules pass `promtool check rules` and their
own `promtool test rules`, the dashboard's queries are valid PromQL, and every metric they name
is exported by a real `streamup run` agent. A real Prometheus (Debian's package, like promtool)
then scrapes that agent and every dashboard query returns data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.agent import AgentProcess, wait_for, wait_metadata, write_slowly
from tests.servers import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "streamup-rules.yml"
RULES_TEST = PROMETHEUS_DIR / "streamup-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "streamup.json"
MiB = 1024 * 1024

# Words of PromQL that look like metric names; functions are recognised by the "(" after them.
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "offset", "bool", "inf", "nan"}  # fmt: skip
# Prometheus writes `up` itself for every target; the agent cannot export it.
FROM_PROMETHEUS = {"up"}


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: run `make setup` (Debian's prometheus package)"
    return found


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match[0]
        if expr[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_exprs() -> dict[str, str]:
    return {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    }


def as_prometheus_sees_it(expr: str, rate_window: str = "5m") -> str:
    """A dashboard query with Grafana's variables filled in as Grafana would."""
    return (
        expr.replace("$__rate_interval", rate_window)
        .replace("$__range", "1h")
        .replace("$instance", ".*")
    )


def test_metric_names_are_found_and_functions_labels_and_keywords_are_not() -> None:
    expr = (
        'sum by (instance, le) (rate(streamup_a_total{job="x", kind=~"y|z"}[5m])) '
        "/ on (instance) group_left() clamp_min(streamup_b, 1) and stremup_typo > 0"
    )
    assert metric_names(expr) == {"streamup_a_total", "streamup_b", "stremup_typo"}


def test_promtool_check_rules_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(rule_exprs()) >= {"StreamupAgentDown", "StreamupStreamStalled",
                                 "StreamupUploadLagGrowing",
                                 "StreamupNoCompletionsWhileFilesGrow"}  # fmt: skip


def test_promtool_test_rules_passes_the_rules_own_tests() -> None:
    result = promtool("test", "rules", RULES_TEST.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {t["alertname"] for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for t in case["alert_rule_test"]}  # fmt: skip
    assert tested == set(rule_exprs())  # every alert has a test


def test_promtool_test_rules_fails_a_rule_that_lost_its_threshold(tmp_path: Path) -> None:
    shutil.copy(RULES_TEST, tmp_path)
    broken = RULES.read_text().replace("streamup_upload_lag_bytes > 268435456", "vector(1) > 0")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    result = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0


def test_promtool_check_config_accepts_the_example_prometheus_config() -> None:
    result = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions only inside rules: each query becomes a recording rule.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": as_prometheus_sees_it(expr)}
        for n, expr in enumerate(dashboard_exprs().values())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_dashboard_is_well_formed_for_grafana() -> None:
    doc = dashboard()
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "instance"}
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    wanted = {
        "streamup_bytes_uploaded_total", "streamup_upload_lag_bytes", "streamup_streams_active",
        "streamup_streams_stalled", "streamup_retries_total", "streamup_streams_completed_total",
        "streamup_part_upload_seconds_bucket",
    }  # fmt: skip
    shown = set().union(*(metric_names(e) for e in dashboard_exprs().values()))
    assert wanted <= shown


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return str(answer.read().decode())


def exported_names(text: str) -> set[str]:
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Starts a real Prometheus scraping the given agent port every second; yields a query
    function for its HTTP API."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(agent_port: int) -> Any:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "streamup",
                                "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}]}],
        }))  # fmt: skip
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}",
             f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
            stdout=log, stderr=log,
        ))  # fmt: skip
        log.close()
        wait_for_port(port, procs[-1])

        def query(expr: str) -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.loads(answer.read())
            assert body["status"] == "success", body
            found: list[dict[str, Any]] = body["data"]["result"]
            return found

        return query

    yield start
    for proc in procs:
        stop(proc)


def test_every_metric_the_dashboard_and_the_rules_query_is_exported_by_a_running_agent(
    agent: Any, prometheus: Any, watch_dir: Path, s3_client: Any, bucket: str
) -> None:
    port = free_port()
    process: AgentProcess = agent(PROM_PORT=str(port), PROM_HOST="127.0.0.1")
    wait_for(lambda: process.events_named("agent.started"), deadline_s=30, what="the agent")
    query = prometheus(port)
    # Real work first, so the counters and the histogram have moved.
    write_slowly(watch_dir / "cam.mp4", total_bytes=6 * MiB, rate_bytes_s=24 * MiB)
    wait_metadata(s3_client, bucket, "cam.mp4")

    text = scrape(port)
    exported = exported_names(text)
    queried = {name: expr for expr in [*rule_exprs().values(), *dashboard_exprs().values()]
               for name in metric_names(expr)}  # fmt: skip
    missing = {name: expr for name, expr in queried.items()
               if name not in exported | FROM_PROMETHEUS}  # fmt: skip
    assert missing == {}
    linted = subprocess.run([tool("promtool"), "check", "metrics"], input=text,
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert linted.returncode == 0, linted.stdout + linted.stderr

    # Prometheus itself: every dashboard query returns data for this agent once it is scraped.
    wait_for(lambda: query('streamup_streams_completed_total{job="streamup"} >= 1'),
             deadline_s=30, what="Prometheus to scrape the agent")  # fmt: skip
    # rate() needs two scrapes in its window.
    wait_for(lambda: query('rate(streamup_bytes_uploaded_total{job="streamup"}[1m])'),
             deadline_s=30, what="a second scrape")  # fmt: skip
    empty = [title for title, expr in dashboard_exprs().items()
             if not query(as_prometheus_sees_it(expr, rate_window="1m"))]  # fmt: skip
    assert empty == []
    assert process.stop() == 0
