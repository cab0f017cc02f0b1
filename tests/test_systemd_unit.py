"""deploy/systemd: the unit passes `systemd-analyze verify` with no complaint, scores what the
README says on `systemd-analyze security`, and agrees with its environment file and the agent.

Both checks are systemd's own tool (Debian's systemd package; `make setup` installs it). A unit
that names a missing program fails verify, so the copy checked runs this venv's `streamup`
instead of /opt/streamup/bin/streamup; nothing else in it changes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamup.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "streamup.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "streamup.env.example"
INSTALLED_AT = "/opt/streamup/bin/streamup"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: run `make setup` (Debian's systemd package)"
    return found


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name.strip(), []).append(value.strip())
    return found


def checkable_copy(folder: Path, text: str | None = None) -> Path:
    text = UNIT.read_text() if text is None else text
    streamup = Path(sys.executable).with_name("streamup")
    copy = folder / "streamup.service"
    copy.write_text(text.replace(f"ExecStart={INSTALLED_AT} ", f"ExecStart={streamup} "))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_the_unit_runs_the_agent_from_its_install_folder() -> None:
    assert directives(UNIT.read_text())["ExecStart"] == [f"{INSTALLED_AT} run"]


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    result = verify(checkable_copy(tmp_path))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("good", "bad"),
    [("Type=notify", "Type=notifyy"), ("User=streamup", "Usr=streamup"),
     (f"ExecStart={INSTALLED_AT} ", "ExecStart=/nonexistent/streamup ")],
)  # fmt: skip
def test_verify_as_run_here_catches_a_broken_unit(tmp_path: Path, good: str, bad: str) -> None:
    # verify exits 0 on a typo (it only warns), so the check above demands silence as well.
    text = UNIT.read_text()
    assert good in text
    result = verify(checkable_copy(tmp_path, text.replace(good, bad)))
    assert result.returncode != 0 or result.stderr.strip() != ""


def security_score(unit: Path) -> float:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found[1])


def test_the_security_score_is_low_and_the_one_the_readme_states(tmp_path: Path) -> None:
    score = security_score(checkable_copy(tmp_path))
    assert (
        score <= 2.0
    )  # systemd calls up to 2.0 "OK"; the same unit without hardening scores 9.2 "UNSAFE"
    readme = (ROOT / "README.md").read_text()
    assert f"`systemd-analyze security`: **{score:.1f}**" in readme


def test_a_plain_unit_scores_unsafe_so_the_score_measures_the_hardening(tmp_path: Path) -> None:
    keep = ("[", "Type=", "ExecStart=", "User=", "Group=", "Description=", "WantedBy=")
    plain = "\n".join(
        line for line in UNIT.read_text().splitlines() if line.startswith(keep)
    )  # fmt: skip
    assert security_score(checkable_copy(tmp_path, plain + "\n")) > 5.0


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            values[name] = value
    return values


def test_the_environment_file_names_only_settings_and_passes_their_validation() -> None:
    env = env_example()
    assert set(env) - {name.upper() for name in Settings.model_fields} == set()
    load_settings({name.lower(): value for name, value in env.items()}, prepare_watch_dir=False)


def test_the_agent_may_write_exactly_where_the_environment_file_points() -> None:
    unit, env = directives(UNIT.read_text()), env_example()
    assert unit["EnvironmentFile"] == ["/etc/streamup/streamup.env"]
    assert unit["ProtectSystem"] == ["strict"]
    writable = [Path(p) for value in unit["ReadWritePaths"] for p in value.split()]
    writable += [Path("/var/lib") / name for name in unit["StateDirectory"]]
    for name in ("WATCH_DIR", "STATE_DIR"):
        assert any(Path(env[name]).is_relative_to(p) for p in writable), name


def test_systemd_waits_longer_for_a_stop_than_the_agent_lets_parts_land() -> None:
    unit = directives(UNIT.read_text())
    grace_s = Settings.model_fields["shutdown_grace_seconds"].default
    assert float(unit["TimeoutStopSec"][0]) > grace_s
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["User"] == ["streamup"]
