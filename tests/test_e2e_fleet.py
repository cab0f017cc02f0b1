"""Many agents, one Redis: real `streamup run` processes sharing a folder and a redis-server.

Each stream is owned through a lease; only the owner uploads, completes and describes it; a dead
or paused owner's streams are taken over by an agent that can see the file.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.agent import (
    AgentProcess,
    MiB,
    assert_exact,
    doc_for,
    grow,
    metadata_docs,
    object_keys,
    wait_for,
    wait_metadata,
)
from tests.conftest import BOTH_SERVERS
from tests.proxy import FaultProxy

PART = 5 * MiB
OVERHEAD_BYTES = 1024 * 1024
TTL_S = 3


@pytest.fixture
def fleet(agent: Any, redis_url: str, proxy: FaultProxy, tmp_path: Path) -> Any:
    """Start agent number `n` of a fleet sharing the folder, the bucket and Redis."""

    def start(n: int, **extra: str) -> AgentProcess:
        return agent(
            REDIS_URL=redis_url, S3_ENDPOINT_URL=proxy.url, AGENT_ID=f"host-{n}:{n}",
            STATE_DIR=str(tmp_path / f"state-{n}"), LEASE_TTL_SECONDS=str(TTL_S), **extra,
        )  # fmt: skip

    return start


@BOTH_SERVERS
def test_two_agents_on_one_folder_upload_every_file_exactly_once(
    fleet: Any, proxy: FaultProxy, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    first, second = fleet(1), fleet(2)
    for process in (first, second):
        wait_for(lambda p=process: p.events_named("agent.started"), deadline_s=30, what="start")
    names = [f"cam-{i}.mp4" for i in range(10)]
    writers = [grow(watch_dir / name, 12 * MiB + i, int(1.5 * MiB)) for i, name in enumerate(names)]
    for writer in writers:
        writer.join()
    docs = wait_for(
        lambda: (d := metadata_docs(s3_client, bucket)) and len(d) >= len(names) and d,
        deadline_s=60,
        what="ten metadata documents",
    )
    for name in names:
        doc = doc_for(docs, name)
        assert doc is not None
        assert_exact(s3_client, bucket, doc, watch_dir / name, tmp_path)
    assert len(object_keys(s3_client, bucket)) == 2 * len(names)
    sizes = sum((watch_dir / n).stat().st_size for n in names)
    assert proxy.bytes_up <= sizes + len(names) * PART + OVERHEAD_BYTES
    discovered = [len(p.events_named("stream.discovered")) for p in (first, second)]
    assert sum(discovered) == len(names)  # each file became one stream, on one agent
    assert first.stop() == 0 and second.stop() == 0


def owner_of(name: str, *agents: AgentProcess) -> tuple[AgentProcess, AgentProcess]:
    """(owner, other) of the stream for file `name`, from who discovered it."""

    def found(process: AgentProcess) -> bool:
        return any(e["path"].endswith(name) for e in process.events_named("stream.discovered"))

    owner = wait_for(
        lambda: next((a for a in agents if found(a)), None),
        deadline_s=20,
        what=f"an owner for {name}",
    )
    return owner, next(a for a in agents if a is not owner)


def test_killed_owner_is_taken_over_within_the_lease_ttl(
    fleet: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    agents = (fleet(1), fleet(2))
    for process in agents:
        wait_for(lambda p=process: p.events_named("agent.started"), deadline_s=30, what="start")
    target = watch_dir / "handover.mp4"
    writer = grow(target, 30 * MiB, 2 * MiB)
    owner, other = owner_of("handover.mp4", *agents)
    wait_for(lambda: len(owner.events_named("part.uploaded")) >= 2, deadline_s=30, what="2 parts")
    owner.kill()
    taken = wait_for(
        lambda: other.events_named("stream.taken_over"), deadline_s=TTL_S + 10, what="the takeover"
    )
    assert taken[0]["path"] == str(target)
    writer.join()
    doc = wait_metadata(s3_client, bucket, "handover.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert len(object_keys(s3_client, bucket)) == 2
    assert other.stop() == 0


def test_paused_owner_notices_it_lost_the_lease_and_backs_off(
    fleet: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    agents = (fleet(1), fleet(2))
    for process in agents:
        wait_for(lambda p=process: p.events_named("agent.started"), deadline_s=30, what="start")
    target = watch_dir / "paused.mp4"
    writer = grow(target, 30 * MiB, 2 * MiB)
    owner, other = owner_of("paused.mp4", *agents)
    wait_for(lambda: owner.events_named("part.uploaded"), deadline_s=30, what="a part")
    assert owner.proc is not None
    owner.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: other.events_named("stream.taken_over"),
            deadline_s=TTL_S + 15,
            what="the takeover",
        )
    finally:
        owner.proc.send_signal(signal.SIGCONT)
    wait_for(
        lambda: owner.events_named("stream.lease_lost"),
        deadline_s=TTL_S + 10,
        what="the paused owner to notice",
    )
    writer.join()
    doc = wait_metadata(s3_client, bucket, "paused.mp4", deadline_s=60)
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    assert len(object_keys(s3_client, bucket)) == 2
    completed = [len(a.events_named("stream.completed")) for a in agents]
    assert sorted(completed) == [0, 1]
    assert other.events_named("stream.completed")
    assert owner.stop() == 0 and other.stop() == 0


@pytest.mark.parametrize("hosts", [("host-1", "host-2"), ("host-1", "host-1")])
def test_in_a_fleet_each_uploaded_file_is_deleted_once_by_one_agent(
    agent: Any,
    redis_url: str,
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
    hosts: tuple[str, str],
) -> None:
    """Different hosts: the host whose agent finished the stream acts, the other leaves it
    (`other_host`). One host, two agents: the action's lease lets one of them act."""
    agents = [
        agent(REDIS_URL=redis_url, AGENT_ID=f"{host}:{n}", STATE_DIR=str(tmp_path / f"s{n}"),
              LEASE_TTL_SECONDS=str(TTL_S), AFTER_UPLOAD="delete")
        for n, host in enumerate(hosts)
    ]  # fmt: skip
    for process in agents:
        wait_for(lambda p=process: p.events_named("agent.started"), deadline_s=30, what="start")
    names = [f"cam-{i}.mp4" for i in range(4)]
    writers = [grow(watch_dir / name, 6 * MiB + i, 3 * MiB) for i, name in enumerate(names)]
    for writer in writers:
        writer.join()
    wait_for(lambda: not any((watch_dir / n).exists() for n in names), deadline_s=60,
             what="every file deleted")  # fmt: skip

    def deletions() -> list[tuple[int, dict[str, Any]]]:
        return [(n, e) for n, p in enumerate(agents) for e in p.events_named("file.deleted")]

    wait_for(lambda: len(deletions()) >= len(names), deadline_s=10, what="the log lines")
    assert sorted(e["path"] for _, e in deletions()) == sorted(str(watch_dir / n) for n in names)
    for n, event in deletions():
        finished = {e["stream_id"] for e in agents[n].events_named("stream.completed")}
        if hosts[0] != hosts[1]:
            assert event["stream_id"] in finished  # the finishing host's agent deleted it
    for process in agents:
        assert not [e for e in process.events_named("file.kept")
                    if e["reason"] in ("action_failed", "file_changed")]  # fmt: skip
    assert len(metadata_docs(s3_client, bucket)) == len(names)
    for process in agents:
        assert process.stop() == 0
