"""The metadata JSON after completion: real media, unreadable media, no ffprobe, Redis clean-up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from tests.agent import assert_exact, doc_for, metadata_docs, wait_for

SEED_FIELDS = {
    "stream_id", "original_file_path", "s3_bucket", "s3_key_prefix", "total_size_bytes",
    "duration_seconds", "processed_at_utc", "stream_started_at_utc", "stream_completed_at_utc",
    "chunks",
}  # fmt: skip


def make_media(path: Path, seconds: float, *extra: str) -> None:
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", *extra,
            str(path),
        ],
        check=True, timeout=60,
    )  # fmt: skip


def wait_docs(s3: Any, bucket: str, names: list[str]) -> dict[str, dict[str, Any]]:
    def ready() -> dict[str, dict[str, Any]] | None:
        docs = metadata_docs(s3, bucket)
        found = {name: doc_for(docs, name) for name in names}
        return found if all(found.values()) else None  # type: ignore[return-value]

    return wait_for(ready, deadline_s=40, what=f"metadata for {names}")


def test_metadata_of_real_media_and_of_files_ffprobe_cannot_read(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    make_media(tmp_path / "clip.mp4", 4.0)
    make_media(tmp_path / "clip.mkv", 3.0)
    make_media(tmp_path / "frag.mp4", 5.0, "-movflags", "+frag_keyframe+empty_moov")
    for name in ("clip.mp4", "clip.mkv", "frag.mp4"):
        os.replace(tmp_path / name, watch_dir / name)
    (watch_dir / "corrupt.mp4").write_bytes(os.urandom(300_000))
    (watch_dir / "empty.mp4").write_bytes(b"")
    process = agent(WATCH_EXTENSIONS=".mp4,.mkv")
    docs = wait_docs(
        s3_client, bucket, ["clip.mp4", "clip.mkv", "frag.mp4", "corrupt.mp4", "empty.mp4"]
    )
    for name, seconds in (("clip.mp4", 4.0), ("clip.mkv", 3.0), ("frag.mp4", 5.0)):
        doc = docs[name]
        assert doc.keys() >= SEED_FIELDS
        assert doc["duration_seconds"] == pytest.approx(seconds, abs=0.1), name
        assert doc["video"]["codec"] == "h264"
        assert (doc["video"]["width"], doc["video"]["height"]) == (320, 240)
        assert doc["video"]["frame_rate"] == pytest.approx(25.0)
        assert doc["audio_codec"] == "aac"
        assert_exact(s3_client, bucket, doc, watch_dir / name, tmp_path)
    assert docs["clip.mkv"]["content_type"] == "video/x-matroska"
    assert docs["clip.mp4"]["content_type"] == "video/mp4"
    for name in ("corrupt.mp4", "empty.mp4"):
        doc = docs[name]
        assert doc.keys() >= SEED_FIELDS
        assert doc["duration_seconds"] is None
        assert doc["probe_error"]
        assert_exact(s3_client, bucket, doc, watch_dir / name, tmp_path)
    assert docs["empty.mp4"]["total_size_bytes"] == 0
    head = s3_client.head_object(Bucket=bucket, Key=docs["clip.mp4"]["s3_key_prefix"])
    assert head["ContentLength"] == docs["clip.mp4"]["total_size_bytes"]
    assert head["ContentType"] == "video/mp4"
    meta_head = s3_client.head_object(
        Bucket=bucket, Key=docs["clip.mp4"]["s3_key_prefix"] + ".metadata.json"
    )
    assert meta_head["ContentType"] == "application/json"
    warnings = [e for e in process.events() if e.get("event") == "stream.probe_failed"]
    assert {Path(e["path"]).name for e in warnings} == {"corrupt.mp4", "empty.mp4"}
    assert process.stop() == 0


def test_missing_ffprobe_gives_null_duration_and_a_completed_stream(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    make_media(tmp_path / "clip.mp4", 2.0)
    os.replace(tmp_path / "clip.mp4", watch_dir / "clip.mp4")
    process = agent(FFPROBE_PATH=str(tmp_path / "no-such-ffprobe"))
    doc = wait_docs(s3_client, bucket, ["clip.mp4"])["clip.mp4"]
    assert doc["duration_seconds"] is None
    assert "not found" in doc["probe_error"]
    assert_exact(s3_client, bucket, doc, watch_dir / "clip.mp4", tmp_path)
    assert process.stop() == 0


def test_redis_keys_of_a_completed_stream_are_removed(
    agent: Any, redis_url: str, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    (watch_dir / "r.mp4").write_bytes(os.urandom(6 * 1024 * 1024))
    process = agent(REDIS_URL=redis_url)
    doc = wait_docs(s3_client, bucket, ["r.mp4"])["r.mp4"]
    assert_exact(s3_client, bucket, doc, watch_dir / "r.mp4", tmp_path)
    stream_id = doc["stream_id"]
    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        wait_for(
            lambda: client.sismember("streams:completed", stream_id),
            deadline_s=10,
            what="the completed set",
        )
        assert not client.exists(f"stream:{stream_id}:meta", f"stream:{stream_id}:parts")
        assert not client.sismember("streams:active", stream_id)
        assert not client.sismember("streams:pending_completion", stream_id)
        assert not client.sismember("streams:failed", stream_id)
    finally:
        client.close()
    assert process.stop() == 0
