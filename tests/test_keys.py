"""Key templates and object options: the pure rules (s3.keys, s3.object_options), as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamup.s3.keys import (
    DEFAULT_TEMPLATE,
    MAX_VIDEO_KEY_BYTES,
    KeyFields,
    check_key,
    numbered,
    parse_template,
)
from streamup.s3.object_options import (
    ObjectOptions,
    encode_tags,
    parse_metadata,
    parse_storage_class,
    parse_tags,
    tags_to_apply,
)

STARTED = datetime(2026, 12, 1, 23, 30, 5, tzinfo=UTC)
ID = "5b0c6d1e-8f3a-4c2b-9d7e-1a2b3c4d5e6f"


def fields(relative: str = "cam1/sub/2026-12-01.mp4", *, prefix: str = "streams") -> KeyFields:
    return KeyFields(prefix, ID, relative, "edge-7", STARTED)


@pytest.mark.parametrize(
    ("template", "relative", "key"),
    [
        (DEFAULT_TEMPLATE, "cam1/sub/2026-12-01.mp4", f"streams/{ID}/cam1/sub/2026-12-01.mp4"),
        (DEFAULT_TEMPLATE, "top.mp4", f"streams/{ID}/top.mp4"),
        ("{dir}/{started:%Y/%m/%d}/{name}", "cam1/a.mp4", "cam1/2026/12/01/a.mp4"),
        # An empty {dir} leaves no empty folder behind.
        ("{dir}/{started:%Y/%m/%d}/{name}", "a.mp4", "2026/12/01/a.mp4"),
        ("{host}/{stem}-{started}{ext}", "cam1/a.mp4", "edge-7/a-20261201T233005Z.mp4"),
        ("{prefix}/{path}", "cam1/a.mkv", "streams/cam1/a.mkv"),
        ("{{lit}}/{name}", "x/a.ts", "{lit}/a.ts"),
        ("{stem}{ext}", "x/noext", "noext"),
    ],
)
def test_templates_render_the_expected_keys(template: str, relative: str, key: str) -> None:
    assert parse_template(template).render(fields(relative)) == key


def test_started_is_rendered_in_utc_whatever_the_zone_given() -> None:
    local = STARTED.astimezone(timezone(timedelta(hours=5)))  # already 2 December there
    moment = KeyFields("p", ID, "a.mp4", "h", local)
    assert parse_template("{started:%Y-%m-%d}/{name}").render(moment) == "2026-12-01/a.mp4"


def test_an_empty_prefix_takes_its_slash_with_it() -> None:
    template = parse_template(DEFAULT_TEMPLATE, prefix="")
    assert template.render(fields("a.mp4", prefix="")) == f"{ID}/a.mp4"


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{camera}/{name}", "unknown field {camera}"),
        ("{}", "unknown field {}"),
        ("{path", "unbalanced brace"),
        ("a}/{path}", "unbalanced brace"),
        ("{path!r}", "conversions"),
        ("{name:>10}", "only started takes a format"),
        ("{started:{name}}", "cannot contain a field"),
        ("/{path}", "starts with '/'"),
        ("{path}/", "ends with '/'"),
        ("{dir}//{name}", "'//'"),
        ("../{path}", "'..'"),
        ("x" * MAX_VIDEO_KEY_BYTES + "{name}", "bytes"),
        ("   ", "must not be empty"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("{", r"\{").replace("(", r"\(")):
        parse_template(template)


def test_a_template_that_is_only_an_empty_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="S3_KEY_PREFIX=''"):
        parse_template("{prefix}", prefix="")


def test_a_path_too_long_for_a_key_is_refused_at_render() -> None:
    with pytest.raises(ValueError, match="bytes"):
        parse_template(DEFAULT_TEMPLATE).render(fields("d/" * 600 + "a.mp4"))


@pytest.mark.parametrize(
    ("template", "prefix", "fixed"),
    [
        (DEFAULT_TEMPLATE, "streams", "streams/"),
        (DEFAULT_TEMPLATE, "a/b", "a/b/"),
        (DEFAULT_TEMPLATE, "", ""),
        ("{dir}/{name}", "streams", ""),
        ("cams/{host}/{started:%Y}/{name}", "streams", "cams/edge-7/"),
        ("archive-{name}", "streams", "archive-"),
    ],
)
def test_the_fixed_prefix_stops_at_the_first_field_that_changes(
    template: str, prefix: str, fixed: str
) -> None:
    assert parse_template(template, prefix=prefix).fixed_prefix(prefix, "edge-7") == fixed


def test_only_a_template_with_the_stream_id_is_unique() -> None:
    assert parse_template(DEFAULT_TEMPLATE).unique
    assert not parse_template("{dir}/{started:%Y/%m/%d}/{name}").unique


@pytest.mark.parametrize(
    ("key", "number", "expected"),
    [
        ("cam1/2026-12-01.mp4", 1, "cam1/2026-12-01.mp4"),
        ("cam1/2026-12-01.mp4", 2, "cam1/2026-12-01-2.mp4"),
        ("a.tar.mp4", 12, "a.tar-12.mp4"),
        ("cam1/noext", 3, "cam1/noext-3"),
        ("dir.d/noext", 2, "dir.d/noext-2"),
    ],
)
def test_numbered_keys_put_the_number_before_the_extension(
    key: str, number: int, expected: str
) -> None:
    assert numbered(key, number) == expected


@given(st.lists(st.sampled_from(["a", "b", "é", "x.y", "~z", " s "]), min_size=1, max_size=6))
def test_every_rendered_key_is_valid(segments: list[str]) -> None:
    relative = "/".join(segments) + ".mp4"
    for template in (DEFAULT_TEMPLATE, "{dir}/{started:%Y/%m/%d}/{name}", "{host}/{stem}{ext}"):
        key = parse_template(template).render(fields(relative))
        check_key(key)
        check_key(numbered(key, 7))


# -- object options -----------------------------------------------------------------------------


def test_tags_parse_url_encoded_and_encode_back() -> None:
    tags = parse_tags("team=video&note=two%20words&empty=")
    assert tags == (("team", "video"), ("note", "two words"), ("empty", ""))
    assert encode_tags(tags) == "team=video&note=two%20words&empty="


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("novalue", "key=value pairs"),
        ("&".join(f"k{i}=v" for i in range(11)), "11 tags"),
        ("k" * 129 + "=v", "1-128 characters"),
        ("k=" + "v" * 257, "257 characters"),
        ("a=1&a=2", "twice"),
        ("aws:x=1", "reserved"),
        ("a=%3Cb%3E", "holds"),
    ],
)
def test_tags_over_s3s_limits_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_tags(text)


def test_ten_tags_of_the_longest_sizes_are_accepted() -> None:
    text = "&".join(f"{i}{'k' * 127}={'v' * 256}" for i in range(10))
    assert len(parse_tags(text)) == 10


def test_metadata_keys_are_lower_cased_and_values_kept() -> None:
    assert parse_metadata("Camera=front, site=lab 2") == (("camera", "front"), ("site", "lab 2"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("camera", "not key=value"),
        ("bad key=1", "not key=value"),
        ("k=é", "printable ASCII"),
        ("a=1,A=2", "twice"),
        ("k=" + "v" * 2048, "2049 bytes"),
    ],
)
def test_bad_metadata_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_metadata(text)


def test_storage_class_names_are_s3s() -> None:
    assert parse_storage_class("standard_ia") == "STANDARD_IA"
    with pytest.raises(ValueError, match="not an S3 storage class"):
        parse_storage_class("COLD")


def test_options_become_the_request_arguments_s3_expects() -> None:
    options = ObjectOptions(
        sse="aws:kms", kms_key_id="alias/video", storage_class="STANDARD_IA",
        tags=(("team", "a b"),), metadata=(("camera", "front"),),
    )  # fmt: skip
    assert options.request_args() == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/video",
        "StorageClass": "STANDARD_IA",
        "Tagging": "team=a%20b",
        "Metadata": {"camera": "front"},
    }
    assert ObjectOptions().request_args() == {}


@pytest.mark.parametrize(
    ("wanted", "stored", "to_put"),
    [
        ((("a", "1"),), {"a": "1"}, None),
        ((("a", "1"),), {"a": "1", "other": "x"}, None),
        ((("a", "1"),), {}, {"a": "1"}),  # dropped at CreateMultipartUpload (Ceph RGW)
        ((("a", "1"),), {"a": "0", "other": "x"}, {"a": "1", "other": "x"}),
        ((), {"x": "y"}, None),
    ],
)
def test_tags_are_put_only_where_the_server_lacks_them(
    wanted: tuple[tuple[str, str], ...], stored: dict[str, str], to_put: dict[str, str] | None
) -> None:
    assert tags_to_apply(wanted, stored) == to_put
