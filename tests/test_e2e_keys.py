"""Objects where and how users want them (issue 17), end to end: real `streamup run` processes on
moto over HTTP. HeadObject and GetObjectTagging read back what the server stored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from streamup.errors import StorageError
from streamup.s3.client import S3Storage
from streamup.s3.object_options import ObjectOptions
from streamup.s3.opening import refused_setting
from streamup.s3.placement import ensure_tags, refused_option
from streamup.settings import load_settings
from tests import servers
from tests.agent import (
    MiB,
    assert_exact,
    grow,
    metadata_docs,
    object_keys,
    wait_for,
)

PART = 5 * MiB
HOST = "edge-7"
FILES = ("cam1/a.mp4", "cam2/sub/b.mkv", "top.mp4")
OPTIONS = {
    "S3_SSE": "aws:kms",
    "S3_SSE_KMS_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef",
    "S3_STORAGE_CLASS": "STANDARD_IA",
    "S3_OBJECT_TAGS": "team=video&note=two%20words",
    "S3_OBJECT_METADATA": "camera=front,Site=lab2",
}


def put_finished(watch_dir: Path, tmp_path: Path, relative: str, size: int) -> Path:
    """A finished recording copied into the folder; the copy outside is returned."""
    source = tmp_path / ("source-" + relative.replace("/", "_"))
    source.write_bytes(os.urandom(size))
    (watch_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, watch_dir / relative)
    return source


def docs_by_path(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    return {doc["original_file_path"]: doc for doc in metadata_docs(s3, bucket).values()}


def wait_docs(s3: Any, bucket: str, count: int, deadline_s: float = 40) -> dict[str, Any]:
    return wait_for(
        lambda: (found := docs_by_path(s3, bucket)) and len(found) >= count and found,
        deadline_s=deadline_s, what=f"{count} metadata documents",
    )  # fmt: skip


def day_of(doc: dict[str, Any]) -> str:
    return datetime.fromisoformat(doc["stream_started_at_utc"]).strftime("%Y/%m/%d")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, lambda doc, rel: f"streams/{doc['stream_id']}/{rel}"),
        (
            "{dir}/{started:%Y/%m/%d}/{name}",
            lambda doc, rel: "/".join(
                filter(None, [os.path.dirname(rel), day_of(doc), os.path.basename(rel)])
            ),
        ),
        ("{prefix}/{host}/{path}", lambda doc, rel: f"streams/{HOST}/{rel}"),
    ],
    ids=["default", "camera-date", "no-stream-id"],
)
def test_templates_place_files_from_subfolders_where_expected(
    agent: Any,
    env: dict[str, str],
    watch_dir: Path,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
    template: str | None,
    expected: Any,
) -> None:
    sources = {rel: put_finished(watch_dir, tmp_path, rel, PART + 1000) for rel in FILES}
    extra = {"AGENT_ID": f"{HOST}:1", "WATCH_EXTENSIONS": ".mp4,.mkv"}
    if template is not None:
        extra["S3_KEY_TEMPLATE"] = template
    process = agent(**extra)
    docs = wait_docs(s3_client, bucket, len(FILES))
    wanted = set()
    for rel, source in sources.items():
        doc = docs[str(watch_dir / rel)]
        key = expected(doc, rel)
        assert doc["s3_key_prefix"] == key
        assert doc["key_collision_of"] is None
        assert_exact(s3_client, bucket, doc, source, tmp_path)
        wanted |= {key, key + ".metadata.json"}
    assert set(object_keys(s3_client, bucket)) == wanted
    assert process.stop() == 0
    status = run_cli(dict(env, **extra), "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = {row["key"] for row in json.loads(status.stdout)["recent_completions"]}
    assert shown == {key for key in wanted if not key.endswith(".metadata.json")}


def test_recordings_that_map_to_one_key_all_survive_with_distinct_keys(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # Another object holds the key already, and two recordings start at once that both map to
    # it: neither may overwrite it or each other.
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_object(Bucket=bucket, Key="x.mp4", Body=b"someone else's object")
    sources = {
        rel: put_finished(watch_dir, tmp_path, rel, PART + 7) for rel in ("c1/x.mp4", "c2/x.mp4")
    }
    process = agent(S3_KEY_TEMPLATE="{name}", S3_SSE="AES256")
    docs = wait_docs(s3_client, bucket, 2)
    keys = set()
    for rel, source in sources.items():
        doc = docs[str(watch_dir / rel)]
        assert doc["key_collision_of"] == "x.mp4"
        assert_exact(s3_client, bucket, doc, source, tmp_path)
        keys.add(doc["s3_key_prefix"])
        head = s3_client.head_object(Bucket=bucket, Key=doc["s3_key_prefix"])
        assert head["ServerSideEncryption"] == "AES256"
    assert keys == {"x-2.mp4", "x-3.mp4"}
    untouched = s3_client.get_object(Bucket=bucket, Key="x.mp4")["Body"].read()
    assert untouched == b"someone else's object"
    assert len(process.events_named("stream.key_collision")) == 2
    # The same path again (a new recording replacing a finished one): a new key again.
    replaced = put_finished(watch_dir, tmp_path, "c1/x.mp4", PART + 9)

    def replacing_doc() -> dict[str, Any] | None:
        docs = [
            d for d in metadata_docs(s3_client, bucket).values() if d["s3_key_prefix"] == "x-4.mp4"
        ]
        return docs[0] if docs else None

    doc = wait_for(replacing_doc, deadline_s=40, what="the replacing recording's metadata")
    assert doc["original_file_path"] == str(watch_dir / "c1/x.mp4")
    assert doc["key_collision_of"] == "x.mp4"
    assert_exact(s3_client, bucket, doc, replaced, tmp_path)
    assert process.stop() == 0


def check_stored_with_options(s3: Any, bucket: str, key: str) -> None:
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == OPTIONS["S3_SSE_KMS_KEY_ID"]
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["Metadata"] == {"camera": "front", "site": "lab2"}
    tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "video", "note": "two words"}


def test_options_are_on_both_objects_after_a_kill_and_resume_mid_stream(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    port = servers.free_port()
    extra = dict(OPTIONS, S3_KEY_TEMPLATE="{dir}/{started:%Y/%m/%d}/{name}", PROM_PORT=str(port))
    target = watch_dir / "cam1" / "rec.mp4"
    target.parent.mkdir()
    first = agent(**extra)
    writer = grow(target, 3 * PART + 123, 2 * MiB)
    wait_for(lambda: first.events_named("part.uploaded"), deadline_s=30, what="a first part")
    live = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status").read())
    [row] = live["streams"]
    assert row["key"].startswith("cam1/") and row["key"].endswith("/rec.mp4")
    first.kill()
    second = agent(**extra)
    writer.join()
    doc = wait_docs(s3_client, bucket, 1)[str(target)]
    assert doc["s3_key_prefix"] == row["key"]  # resumed under the checkpointed key
    assert second.events_named("stream.resuming")
    assert_exact(s3_client, bucket, doc, target, tmp_path)
    check_stored_with_options(s3_client, bucket, doc["s3_key_prefix"])
    check_stored_with_options(s3_client, bucket, doc["s3_key_prefix"] + ".metadata.json")
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert second.stop() == 0


async def test_tags_the_server_dropped_are_put_and_read_back(
    s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    # Ceph RGW drops tags given at CreateMultipartUpload; an object without them stands in.
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_object(Bucket=bucket, Key="v.mp4", Body=b"v", Tagging="other=kept")
    storage = S3Storage(bucket=bucket, region="us-east-1", endpoint_url=s3_endpoint,
                        access_key_id="testing", secret_access_key="testing")  # fmt: skip
    await storage.open()
    try:
        wanted = (("team", "video"), ("note", "two words"))
        assert await ensure_tags(storage, "v.mp4", wanted) is True
        assert await ensure_tags(storage, "v.mp4", wanted) is False  # there now: nothing to do
    finally:
        await storage.close()
    tags = s3_client.get_object_tagging(Bucket=bucket, Key="v.mp4")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {
        "other": "kept", "team": "video", "note": "two words"
    }  # fmt: skip


def test_the_reaper_without_a_fixed_prefix_touches_only_keys_the_checkpoints_know(
    agent: Any, watch_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    source = put_finished(watch_dir, tmp_path, "cam1/a.mp4", PART + 3)
    first = agent(S3_KEY_TEMPLATE="{dir}/{name}", ORPHAN_UPLOAD_AGE_SECONDS="0")
    doc = wait_docs(s3_client, bucket, 1)[str(watch_dir / "cam1/a.mp4")]
    assert first.stop() == 0
    # Left behind at a key this agent's checkpoints know (a crash before the upload id was
    # checkpointed leaves such an upload), and two uploads that are someone else's.
    leftover = s3_client.create_multipart_upload(Bucket=bucket, Key="cam1/a.mp4")["UploadId"]
    foreign = {
        s3_client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        for key in ("cam1/other.mp4", "elsewhere/b.mp4")
    }

    def open_uploads() -> set[str]:
        uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return {u["UploadId"] for u in uploads}

    second = agent(S3_KEY_TEMPLATE="{dir}/{name}", ORPHAN_UPLOAD_AGE_SECONDS="1")
    wait_for(lambda: leftover not in open_uploads(), deadline_s=20, what="the leftover aborted")
    wait_for(lambda: second.events_named("upload.orphan_scope"), deadline_s=5, what="the scope")
    [scope] = second.events_named("upload.orphan_scope")
    assert scope["prefix"] is None and "keys the checkpoints know" in scope["scope"]
    assert foreign <= open_uploads()
    assert [e["key"] for e in second.events_named("upload.orphan_aborted")] == ["cam1/a.mp4"]
    assert second.stop() == 0
    assert_exact(s3_client, bucket, doc, source, tmp_path)  # the completed object is intact


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamup", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "value", "also"),
    [
        ("S3_KEY_TEMPLATE", "{camera}/{name}", {}),
        ("S3_KEY_TEMPLATE", "{dir}/{name", {}),
        ("S3_KEY_TEMPLATE", "/{path}", {}),
        ("S3_KEY_TEMPLATE", "{dir}//{name}", {}),
        ("S3_SSE", "aes", {}),
        ("S3_SSE_KMS_KEY_ID", "alias/video", {"S3_SSE": "AES256"}),
        ("S3_STORAGE_CLASS", "COLD", {}),
        ("S3_OBJECT_TAGS", "&".join(f"k{i}=v" for i in range(11)), {}),
        ("S3_OBJECT_TAGS", "team", {}),
        ("S3_OBJECT_METADATA", "bad key=1", {}),
        ("S3_OBJECT_METADATA", "k=" + "v" * 2100, {}),
    ],
)
def test_bad_values_give_one_line_naming_the_setting_and_exit_2(
    env: dict[str, str], setting: str, value: str, also: dict[str, str]
) -> None:
    result = run_cli(dict(env, **also, **{setting: value}), "run")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"streamup: error: {setting}=")


def test_a_key_another_agents_unfinished_stream_holds_is_not_taken(
    agent: Any, redis_url: str, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    # Two agents on one Redis, each with a folder of its own. A's recording is still below one
    # part, so it has no multipart upload yet: only the checkpoint store knows its key.
    folders = {name: tmp_path / f"watch-{name}" for name in ("a", "b")}
    for folder in folders.values():
        folder.mkdir()
    common = {"S3_KEY_TEMPLATE": "{name}", "REDIS_URL": redis_url}
    first = agent(**common, WATCH_DIR=str(folders["a"]), STATE_DIR=str(tmp_path / "sa"))
    growing = folders["a"] / "x.mp4"
    writer = grow(growing, 4 * MiB, MiB // 2)
    wait_for(lambda: first.events_named("stream.discovered"), deadline_s=20, what="A's stream")
    second = agent(**common, WATCH_DIR=str(folders["b"]), STATE_DIR=str(tmp_path / "sb"))
    finished = put_finished(folders["b"], tmp_path, "x.mp4", PART + 5)
    writer.join()
    docs = wait_docs(s3_client, bucket, 2)
    mine, theirs = docs[str(growing)], docs[str(folders["b"] / "x.mp4")]
    assert (mine["s3_key_prefix"], mine["key_collision_of"]) == ("x.mp4", None)
    assert (theirs["s3_key_prefix"], theirs["key_collision_of"]) == ("x-2.mp4", "x.mp4")
    assert_exact(s3_client, bucket, mine, growing, tmp_path)
    assert_exact(s3_client, bucket, theirs, finished, tmp_path)
    assert first.stop() == 0 and second.stop() == 0


class RefusesClasses(S3Storage):
    """moto as Ceph RGW answers a storage class it has no placement for."""

    async def create_upload(
        self, key: str, content_type: str, *, crc32c: bool = False,
        options: ObjectOptions | None = None,
    ) -> str:  # fmt: skip
        if options is not None and options.storage_class not in (None, "STANDARD"):
            raise StorageError("creating multipart upload: 400 InvalidArgument", code="400")
        return await super().create_upload(key, content_type, crc32c=crc32c, options=options)


async def test_the_start_up_check_names_the_option_the_server_refuses(
    s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    s3_client.create_bucket(Bucket=bucket)
    storage = RefusesClasses(bucket=bucket, region="us-east-1", endpoint_url=s3_endpoint,
                             access_key_id="testing", secret_access_key="testing")  # fmt: skip
    await storage.open()
    try:
        options = ObjectOptions(sse="AES256", storage_class="GLACIER", tags=(("a", "1"),))
        refused = await refused_option(storage, "streams", options)
        assert refused is not None and refused[0] == "S3_STORAGE_CLASS"
        accepted = ObjectOptions(sse="AES256", storage_class="STANDARD", tags=(("a", "1"),))
        assert await refused_option(storage, "streams", accepted) is None
    finally:
        await storage.close()
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


ALL_OPTIONS = "S3_SSE, S3_STORAGE_CLASS, S3_OBJECT_TAGS, S3_OBJECT_METADATA"


@pytest.mark.parametrize(
    ("setting", "values", "shown"),
    [
        ("S3_STORAGE_CLASS", {"s3_storage_class": "GLACIER"}, "S3_STORAGE_CLASS=GLACIER"),
        ("S3_SSE", {"s3_sse": "AES256"}, "S3_SSE=AES256"),
        ("S3_SSE", {}, "S3_SSE"),  # unset: named without a value
        (ALL_OPTIONS, {"s3_sse": "AES256"}, ALL_OPTIONS),  # refused together: the names only
    ],
)
def test_a_refused_option_is_named_with_its_value(
    tmp_path: Path, setting: str, values: dict[str, str], shown: str
) -> None:
    settings = load_settings({"watch_dir": str(tmp_path / "watch"), **values})
    assert refused_setting(setting, settings) == shown
