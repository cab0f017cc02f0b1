"""The rooms of the package and who may import whom (docs/architecture.md), checked on the source.

A rule broken here is an architecture decision taken by accident; change the table on purpose,
with the page, or move the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamup"

# The base every room may import: no I/O of its own beyond what it names (metrics, faults).
BASE = {
    "errors", "models", "metrics", "faults", "retry", "memory", "settings", "checksums", "__init__"
}  # fmt: skip
# Pure modules every room may import too.
PURE = {
    "s3.parts", "s3.keys", "s3.object_options", "stream.lifecycle", "after.metadata",
    "after.events", "after.schedule", "after.lifecycle", "s3.rebuild_plan", "files.container",
    "stream.extension", "s3.bandwidth", "s3.priority", "stream.renewal",
}  # fmt: skip

# room -> the rooms it may import besides the base, itself and the pure modules.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "files": set(),
    "checkpoint": set(),
    "s3": {"checkpoint"},
    "after": {"files", "s3", "checkpoint"},
    "stream": {"files", "s3", "checkpoint", "after"},
    "ops": {"files", "checkpoint"},
    "seams": {"files", "s3", "checkpoint", "stream", "ops"},
    "service": {"files", "s3", "checkpoint", "after", "stream", "ops", "seams"},
    "cli": {"files", "s3", "checkpoint", "after", "stream", "ops", "seams", "service"},
    "__main__": {"cli"},
}
# The demo runs a whole agent on a local S3: it is a client of the product, like the CLI.
EXCEPTIONS = {("ops.demo", "service")}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def room_of(module: str) -> str:
    head = module.split(".")[0]
    if "." in module or head in ("checkpoint", "files", "s3", "after", "stream", "ops"):
        return head
    return "base" if head in BASE else head


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("streamup"):
            base = node.module.removeprefix("streamup").lstrip(".")
            if not base:  # `from streamup import metrics`
                found.update(alias.name for alias in node.names)
            else:
                found.add(base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("streamup."):
                    found.add(alias.name.removeprefix("streamup."))
    return {m for m in found if m and m != "__version__"}


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[module_name(p) for p in SOURCES])
def test_every_import_follows_the_room_rules(path: Path) -> None:
    module = module_name(path)
    room = room_of(module)
    assert room in ALLOWED, f"{module}: no room named {room!r} in docs/architecture.md"
    wrong = []
    for target in imported_modules(path):
        target_room = room_of(target)
        if target_room in ("base", room) or target in PURE or target_room in ALLOWED[room]:
            continue
        if (module, target_room) in EXCEPTIONS:
            continue
        wrong.append(target)
    assert not wrong, f"{module} ({room}) may not import {sorted(wrong)}"


def test_the_operator_faces_never_import_the_agent() -> None:
    for path in (PACKAGE / "ops").glob("*.py"):
        if module_name(path) == "ops.demo":
            continue
        assert "service" not in imported_modules(path), module_name(path)


def test_the_rule_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    # The check above must be able to fail: a files module importing the S3 client is refused.
    sample = tmp_path / "x.py"
    sample.write_text("from streamup.s3.client import S3Storage\nfrom streamup import metrics\n")
    found = imported_modules(sample)
    assert found == {"s3.client", "metrics"}
    assert room_of("s3.client") not in ALLOWED["files"] | {"base", "files"}
