from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings

from streamup.checkpoint.redis import RedisStore
from streamup.s3.client import S3Storage
from tests import servers
from tests.agent import AgentProcess, agent_env
from tests.proxy import FaultProxy
from tests.rgw import Rgw, rgw_server

S3_TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# The S3 servers the suite runs against. A test that takes `s3_backend` as a parameter
# (`@BOTH_SERVERS`) runs once per server; every other test uses moto.
S3_BACKENDS = ("moto", "rgw")
BOTH_SERVERS = pytest.mark.parametrize("s3_backend", S3_BACKENDS)
_started: list[Rgw] = []
# The property tests prove results, not speed: no per-example time limit, which a busy machine
# (or the end-to-end tests on the other workers) would break at random.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")
# Modules whose tests share a module-scoped agent, recorder or set of recordings: under xdist
# (`make test`) each runs whole on one worker, which sets its fixture up once. Every other test
# goes to whichever worker is free. (xdist's own `xdist_group` mark does not reach its scheduler
# on pytest 9: the node id it rewrites is no longer the one reported.)
ONE_WORKER_MODULES = frozenset(
    f"tests/{name}.py"
    for name in (
        "test_browser_page",
        "test_e2e_recordings",
        "test_operator",
        "test_operator_outage",
        "test_probe",
    )
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup`: one test per unit of work, but a module of ONE_WORKER_MODULES is one."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return ModuleGroups(config, log)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with servers.redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A real redis-server, emptied for every test (and taking writes: a test may have
    refused them with maxmemory)."""
    client = redis_sync.Redis.from_url(redis_server_url)
    client.config_set("maxmemory", 0)
    client.flushall()
    client.close()
    yield redis_server_url


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    """streamup's Redis store on the emptied server, open."""
    opened = RedisStore(redis_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at (or damage) what a Redis store wrote."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with servers.moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def rgw_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Ceph RGW for the whole session, started by the first test that needs it. If it
    cannot start, that test errors with the reason: never a skip."""
    base = tmp_path_factory.mktemp("rgw")
    with rgw_server(
        base, access_key="testing", secret_key=S3_TEST_CREDENTIALS["aws_secret_access_key"]
    ) as rgw:
        _started.append(rgw)
        yield rgw.endpoint


@pytest.fixture
def s3_backend() -> str:
    """Which S3 server a test talks to; `@BOTH_SERVERS` parametrizes it."""
    return "moto"


@pytest.fixture
def s3_endpoint(s3_backend: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{s3_backend}_endpoint"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for rgw in _started:
        terminalreporter.write_line(
            f"Ceph RGW ({rgw.version}) at {rgw.endpoint}: started in {rgw.started_in_s:.1f} s"
        )


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    """A plain boto3 client on the test's S3 server, for the tests' own checks."""
    return boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_TEST_CREDENTIALS
    )


@pytest.fixture
def bucket() -> str:
    """A fresh bucket name per test (streamup creates it)."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def watch_dir(tmp_path: Path) -> Path:
    path = tmp_path / "watch"
    path.mkdir()
    return path


@pytest.fixture
def env(tmp_path: Path, watch_dir: Path, s3_endpoint: str, bucket: str) -> dict[str, str]:
    return agent_env(
        watch_dir=watch_dir, state_dir=tmp_path / "state", s3_endpoint=s3_endpoint, bucket=bucket
    )


@pytest.fixture
def agent(env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Starts `streamup run` processes (`agent(**extra_env)`); kills leftovers at the end."""
    agents: list[AgentProcess] = []

    def start(prefix: tuple[str, ...] = (), **extra: str) -> AgentProcess:
        log = tmp_path / f"agent-{len(agents)}.log"
        process = AgentProcess(dict(env, **extra), log, prefix).start()
        agents.append(process)
        return process

    yield start
    for process in agents:
        if process.proc is not None and process.proc.poll() is None:
            process.kill()


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_endpoint).start()
    yield proxy
    proxy.stop()


@pytest.fixture
async def storage(s3_endpoint: str, bucket: str) -> AsyncIterator[S3Storage]:
    """streamup's own S3 client on the test's server, with a fresh bucket it has just created."""
    client = S3Storage(
        bucket=bucket, region="us-east-1", endpoint_url=s3_endpoint,
        access_key_id="testing", secret_access_key="testing",
    )  # fmt: skip
    await client.open()
    assert await client.ensure_bucket() is True
    yield client
    await client.close()
