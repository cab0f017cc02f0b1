"""Checks on bytes: random source files, SHA-256 of files and of S3 objects, metadata documents,
and emptying buckets between repetitions."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from harness import ACCESS_KEY, REGION, SECRET_KEY, MiB


def write_random_file(path: Path, size_bytes: int) -> str:
    """Fill `path` with random bytes; returns their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        remaining = size_bytes
        while remaining:
            block = os.urandom(min(remaining, 64 * MiB))
            handle.write(block)
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def s3_client(endpoint: str) -> Any:
    """A boto3 client for the checks (no extra checksums: they would only cost CPU)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


def object_keys(s3: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    with contextlib.suppress(s3.exceptions.NoSuchBucket):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def empty_bucket(s3: Any, bucket: str) -> None:
    """Delete every object (moto then frees their bytes), keeping the bucket."""
    keys = object_keys(s3, bucket)
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def metadata_doc(s3: Any, bucket: str, video_key: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=f"{video_key}.metadata.json")["Body"].read()
    return dict(json.loads(body))


def sha256_object(s3: Any, bucket: str, key: str) -> str:
    """SHA-256 of an object, downloaded in a stream."""
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for block in body.iter_chunks(8 * MiB):
        digest.update(block)
    return digest.hexdigest()
