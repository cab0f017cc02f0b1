"""A faststart recording whose file vanished while the agent lay dead in the middle of its
rebuild (stream.rebuild.when_lost): a real `ffmpeg -movflags +faststart` recording, the agent
SIGKILLed at a rebuild step, the file deleted, a fresh agent started. Whatever S3 holds that is
the file is kept, flagged partial; nothing else is left behind: no temporary object, no upload.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.agent import MiB, object_keys, wait_for, wait_metadata
from tests.test_e2e_core import run_cli
from tests.test_e2e_faststart import no_uploads_left, parts_sent, wait_crash

PART = 5 * MiB
RECORD_SECONDS = 12  # about 12 MiB at 8 Mbit/s: parts 1 and 2 whole, part 3 short


def record_faststart(path: Path, agent: Any) -> bytes:
    """Record with ffmpeg, faster than real time; pause the recorder (SIGSTOP) once part 2 is
    whole until the agent has sent it, so that it is in S3 whatever the machine's load when
    the muxer moves `moov` to the front. The final bytes."""
    recorder = subprocess.Popen(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-readrate", "4",
            "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(RECORD_SECONDS), "-vf", "noise=alls=40:allf=t", "-g", "50",
            "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "8M", "-maxrate", "8M",
            "-bufsize", "4M", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-movflags", "+faststart", str(path),
        ],
    )  # fmt: skip
    try:
        wait_for(
            lambda: path.exists() and path.stat().st_size >= 2 * PART + MiB // 2,
            deadline_s=30, what="the recording past part 2", every_s=0.02,
        )  # fmt: skip
        recorder.send_signal(signal.SIGSTOP)
        wait_for(lambda: 2 in parts_sent(agent, path), deadline_s=30, what="part 2 sent")
        recorder.send_signal(signal.SIGCONT)
        assert recorder.wait(60) == 0
    finally:
        if recorder.poll() is None:
            recorder.kill()
    return path.read_bytes()


def ended_streams(env: dict[str, str]) -> list[dict[str, Any]] | None:
    document = json.loads(run_cli(env, "status", "--json").stdout)
    return None if document["streams"] else list(document["recent_completions"])


# Killed with the stale upload completed as the temporary object but not yet checkpointed so;
# with a copied piece in the fresh upload, the tail not yet sent; with every piece sent or
# copied, before the final completion. That last one on Ceph RGW too: the completion replaces
# the temporary object, and RGW (like this moto) ignores If-Match: the HeadObject check holds.
@pytest.mark.parametrize(
    ("s3_backend", "point"),
    [
        ("moto", "after_stale_complete"),
        ("moto", "after_part_copy"),
        ("moto", "before_complete"),
        ("rgw", "before_complete"),
    ],
)
def test_file_lost_mid_rebuild_keeps_what_is_the_file_and_leaves_nothing_else(
    point: str,
    agent: Any,
    env: dict[str, str],
    watch_dir: Path,
    s3_client: Any,
    bucket: str,
) -> None:
    target = watch_dir / "fast.mp4"
    crashed = agent(STREAMUP_CRASH_AT=point, UPLOAD_CONCURRENCY="1")
    final = record_faststart(target, crashed)
    ftyp_bytes = int.from_bytes(final[:4], "big")
    assert (final[4:8], final[ftyp_bytes + 4 : ftyp_bytes + 8]) == (b"ftyp", b"moov")  # faststart
    assert len(final) > 2 * PART
    wait_crash(crashed)
    assert [e["point"] for e in crashed.events_named("test.crash")] == [point]
    assert crashed.events_named("stream.rebuild_planned")
    target.unlink()
    second = agent()
    wait_for(lambda: second.events_named("stream.file_lost"), deadline_s=20, what="file lost")
    if point == "before_complete":
        # Every piece was in the fresh upload: its object is the final file after all, and it
        # replaced the temporary object. Nothing could compare it with the file: partial.
        doc = wait_metadata(s3_client, bucket, "fast.mp4")
        [ended] = wait_for(lambda: ended_streams(env), deadline_s=20, what="the stream to end")
        assert (ended["state"], ended["end_reason"]) == ("completed", "file_lost")
        assert (doc["partial"], doc["end_reason"], doc["total_size_bytes"]) == (
            True, "file_lost", len(final),
        )  # fmt: skip
        body = s3_client.get_object(Bucket=bucket, Key=doc["s3_key_prefix"])["Body"].read()
        assert body == final
        assert doc["bytes_copied"] == PART
        assert len(object_keys(s3_client, bucket)) == 2  # the object and its metadata
    else:
        # The stale parts lack the file's first part (held back for the header patch): no use
        # as a partial object. The temporary object goes with the fresh upload.
        [ended] = wait_for(lambda: ended_streams(env), deadline_s=20, what="the stream to end")
        assert (ended["state"], ended["end_reason"]) == ("aborted_no_parts", "file_lost")
        assert object_keys(s3_client, bucket) == []
    no_uploads_left(s3_client, bucket)
    assert second.stop() == 0
