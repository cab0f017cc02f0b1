"""The install a user gets: lean runtime dependencies, a lock that covers pyproject.toml, and a
wheel that installs from the runtime lock into a clean virtual environment and runs.

The wheel test builds and installs for real (uv, from its cache or PyPI): no step is simulated.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
FULL_LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"
# What only the demo and the tests need; none of it may reach a production install.
NOT_RUNTIME = {"moto", "flask", "flask-cors", "werkzeug", "pytest", "boto3", "mypy", "ruff"}


def project() -> dict[str, object]:
    table: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return table


def pins(lock: Path) -> dict[str, set[str]]:
    """name -> pinned versions (a universal lock may pin two, one per Python range)."""
    found: dict[str, set[str]] = {}
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            spec = line.split(";")[0].split("\\")[0].strip()
            name, _, version = spec.partition("==")
            found.setdefault(canonicalize_name(name), set()).add(version.strip())
    return found


def declared(extras: list[str]) -> list[Requirement]:
    table = project()
    runtime = [Requirement(text) for text in table["dependencies"]]  # type: ignore[attr-defined]
    optional: dict[str, list[str]] = table["optional-dependencies"]  # type: ignore[assignment]
    found = list(runtime)
    for extra in extras:
        found += [Requirement(text) for text in optional[extra]]
    return [req for req in found if canonicalize_name(req.name) != "streamup"]


def unpinned(requirements: list[Requirement], lock: Path) -> list[str]:
    locked = pins(lock)
    wrong = []
    for req in requirements:
        versions = locked.get(canonicalize_name(req.name), set())
        if not versions or not all(req.specifier.contains(v, prereleases=True) for v in versions):
            wrong.append(f"{req} (locked: {sorted(versions) or 'missing'})")
    return wrong


def test_runtime_dependencies_leave_out_the_demo_server_and_the_test_tools() -> None:
    runtime = {canonicalize_name(Requirement(t).name) for t in project()["dependencies"]}  # type: ignore[attr-defined]
    assert runtime & NOT_RUNTIME == set()
    optional: dict[str, list[str]] = project()["optional-dependencies"]  # type: ignore[assignment]
    assert any(Requirement(t).name == "moto" for t in optional["demo"])
    assert "streamup[demo]" in optional["dev"]  # the tests use the demo's S3 server


def test_the_lock_pins_every_dependency_pyproject_declares() -> None:
    # Fails after a dependency is added to pyproject.toml without `make lock`.
    assert unpinned(declared(["demo", "dev"]), FULL_LOCK) == []
    assert unpinned(declared([]), RUNTIME_LOCK) == []


def test_the_runtime_lock_is_the_full_locks_versions_without_demo_or_test_tools() -> None:
    full, runtime = pins(FULL_LOCK), pins(RUNTIME_LOCK)
    assert set(runtime) & NOT_RUNTIME == set()
    assert {name: full.get(name) for name in runtime} == runtime


def test_every_pin_carries_a_hash() -> None:
    for lock in (FULL_LOCK, RUNTIME_LOCK):
        blocks = [b for b in lock.read_text().split("\n") if b and not b[0].isspace()]
        requirements = [b for b in blocks if not b.startswith("#")]
        assert requirements and all(b.rstrip().endswith("\\") for b in requirements), lock.name
        assert lock.read_text().count("--hash=sha256:") >= len(requirements)


def test_the_checker_sees_a_dependency_missing_from_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("redis==8.1.0 \\\n    --hash=sha256:00\n")
    wrong = unpinned([Requirement("redis>=9"), Requirement("crc32c>=2")], lock)
    assert wrong == ["redis>=9 (locked: ['8.1.0'])", "crc32c>=2 (locked: missing)"]


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def uv() -> str:
    found = shutil.which("uv", path=sysconfig.get_path("scripts")) or shutil.which("uv")
    assert found, "uv is missing: it comes with the dev extra (make setup)"
    return found


def test_the_wheel_installs_from_the_runtime_lock_into_a_clean_venv_and_runs(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "streamup", source / "streamup",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    built = run(uv(), "build", "--wheel", "--out-dir", tmp_path / "dist", source)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("streamup-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [
            line for line in archive.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist: moto")
        ]  # fmt: skip
    assert requires and all('extra == "demo"' in line for line in requires)

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    assert run(uv(), "venv", "--python", sys.executable, venv).returncode == 0
    installed = run(uv(), "pip", "install", "--python", python, "--require-hashes",
                    "-r", RUNTIME_LOCK)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    installed = run(uv(), "pip", "install", "--python", python, "--no-deps", wheel)
    assert installed.returncode == 0, installed.stderr
    # The runtime lock alone satisfies everything the wheel requires.
    checked = run(uv(), "pip", "check", "--python", python)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    helped = run(venv / "bin" / "streamup", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "run" in helped.stdout and "status" in helped.stdout
    assert run(python, "-c", "import moto").returncode != 0  # lean: no demo server

    demo = run(venv / "bin" / "streamup", "demo", cwd=tmp_path)
    assert demo.returncode == 2
    assert demo.stdout == ""
    assert demo.stderr.count("\n") == 1, demo.stderr
    assert "pip install 'streamup[demo]'" in demo.stderr


def test_the_image_installs_the_runtime_lock_with_hashes_then_streamup_alone() -> None:
    steps = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.startswith(("COPY", "RUN pip"))]  # fmt: skip
    assert steps == [
        "COPY requirements-runtime.lock ./",
        "RUN pip install --no-cache-dir --require-hashes -r requirements-runtime.lock",
        "COPY pyproject.toml README.md ./",
        "COPY streamup ./streamup",
        "RUN pip install --no-cache-dir --no-deps . && pip check",
    ]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and not any(name.endswith(".lock") for name in ignored)
