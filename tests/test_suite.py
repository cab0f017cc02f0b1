"""The test suite's own layout: what `make test` (pytest-xdist workers) relies on."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ONE_WORKER_MODULES

TESTS = Path(__file__).resolve().parent


def module_scoped_fixtures(path: Path) -> list[str]:
    """Names of the fixtures declared with `scope="module"` in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and any(
                k.arg == "scope" and isinstance(k.value, ast.Constant) and k.value.value == "module"
                for k in decorator.keywords
            ):
                found.append(node.name)
    return found


def test_every_module_with_a_module_scoped_fixture_runs_on_one_worker() -> None:
    # Elsewhere, each xdist worker that gets one of its tests sets the fixture up again.
    sharing = {
        f"tests/{path.name}"
        for path in sorted(TESTS.glob("test_*.py"))
        if module_scoped_fixtures(path)
    }
    assert sharing - ONE_WORKER_MODULES == set()
    assert {m for m in ONE_WORKER_MODULES if not (TESTS.parent / m).exists()} == set()


def test_the_scope_finder_sees_a_module_scoped_fixture(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import pytest\n@pytest.fixture(scope='module')\ndef shared(): ...\n"
        "@pytest.fixture\ndef own(): ...\n"
    )
    assert module_scoped_fixtures(sample) == ["shared"]
