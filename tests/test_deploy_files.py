"""docker-compose.yml, example.env and the Dockerfile agree with the settings and each other.

No Docker daemon is needed: the files are parsed (PyYAML), linted (yamllint) and cross-checked,
which catches the usual drift: a variable the agent does not know, a secret defined twice, a
service without a health check, Redis without persistence.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from streamup.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE_ENV = ROOT / "example.env"
DOCKERFILE = ROOT / "Dockerfile"


def example_env() -> dict[str, str]:
    values = {}
    for line in EXAMPLE_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def services() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(COMPOSE.read_text())
    found: dict[str, dict[str, Any]] = doc["services"]
    return found


def env_files(service: dict[str, Any]) -> list[str]:
    given = service.get("env_file", [])
    return [given] if isinstance(given, str) else [str(item) for item in given]


def test_every_example_env_variable_is_a_setting() -> None:
    known = {name.upper() for name in Settings.model_fields}
    assert set(example_env()) - known == set()


def test_example_env_values_pass_the_agents_own_validation() -> None:
    overrides = {name.lower(): value for name, value in example_env().items()}
    settings = load_settings(overrides, prepare_watch_dir=False)
    assert settings.redis_url is not None  # the compose deployment uses Redis


def test_every_service_that_needs_the_s3_credentials_reads_them_from_example_env() -> None:
    for name in ("streamup", "minio", "minio-init"):
        assert env_files(services()[name]) == ["example.env"], name
    # `${VAR}` is filled from the shell or a `.env` file, not from example.env: a variable of
    # example.env spelled that way could silently disagree with what the agent gets.
    interpolated = set(re.findall(r"(?<!\$)\$\{?([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    assert interpolated & set(example_env()) == set()


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        if service.get("restart") == "no":  # a one-shot step (the bucket), not a server
            continue
        check = service.get("healthcheck", {}).get("test")
        assert check, f"{name} has no healthcheck"
    agent_check = " ".join(services()["streamup"]["healthcheck"]["test"])
    assert "/healthz" in agent_check and "PROM_PORT" in agent_check


def test_the_agent_starts_after_its_bucket_and_a_healthy_redis() -> None:
    depends = services()["streamup"]["depends_on"]
    assert depends["minio-init"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"
    assert services()["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_redis_keeps_checkpoints_with_append_only_persistence() -> None:
    redis = services()["redis"]
    command = redis["command"]
    words = command.split() if isinstance(command, str) else command
    assert words[words.index("--appendonly") + 1] == "yes"
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def test_the_agents_folders_and_port_match_example_env() -> None:
    env, agent = example_env(), services()["streamup"]
    targets = {str(volume).split(":")[1] for volume in agent["volumes"]}
    assert {env["WATCH_DIR"], env["STATE_DIR"]} <= targets
    assert any(str(port).endswith(f":{env['PROM_PORT']}") for port in agent["ports"])
    assert env["PROM_HOST"] == "0.0.0.0"  # inside the container; the host side binds loopback
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000" and env["REDIS_URL"].startswith(
        "redis://redis:"
    )


def test_the_image_is_slim_unprivileged_and_checks_its_own_health() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("FROM python:3.12-slim")
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert re.search(r'^ENTRYPOINT \["dumb-init"', text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz.*PROM_PORT", text, re.M)


def test_compose_file_passes_yamllint() -> None:
    config = YamlLintConfig(
        "extends: default\nrules: {line-length: {max: 100}, document-start: disable}"
    )
    problems = list(linter.run(COMPOSE.read_text(), config, str(COMPOSE)))
    assert problems == []
