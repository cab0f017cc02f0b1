"""deploy/kubernetes: every manifest passes the Kubernetes schemas (kubernetes-validate, strict,
offline with its bundled schemas) for the oldest and newest releases it knows, and the manifests
agree with the agent: settings it knows, the port it serves, the user the image runs as.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from streamup.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(K8S.rglob("*.yaml"))
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Environment variables of the pod that are not settings: inputs to AGENT_ID and REDIS_URL.
POD_HELPERS = {"NODE_NAME", "POD_NAME", "REDIS_PASSWORD"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(path: Path, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents(path) if doc["kind"] == kind]
    return found


def daemonsets() -> dict[str, dict[str, Any]]:
    return {
        "node-local": resource(K8S / "daemonset.yaml", "DaemonSet"),
        "shared-redis": resource(K8S / "shared-redis" / "daemonset.yaml", "DaemonSet"),
    }


def agent_container(daemonset: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in daemonset["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "streamup"]  # fmt: skip
    return container


def config() -> dict[str, str]:
    data: dict[str, str] = resource(K8S / "config.yaml", "ConfigMap")["data"]
    return data


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(K8S)) for p in MANIFESTS])
def test_every_manifest_passes_the_kubernetes_schemas(path: Path, version: str) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_rejects_a_misspelled_field() -> None:
    daemonset = daemonsets()["node-local"]
    daemonset["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)


def test_the_config_names_only_settings_and_passes_their_validation() -> None:
    data = config()
    assert set(data) - {name.upper() for name in Settings.model_fields} == set()
    load_settings({name.lower(): value for name, value in data.items()}, prepare_watch_dir=False)
    assert data["PROM_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("variant", ["node-local", "shared-redis"])
def test_the_agent_pod_is_wired_to_the_agents_own_settings(variant: str) -> None:
    daemonset = daemonsets()[variant]
    pod = daemonset["spec"]["template"]
    container = agent_container(daemonset)
    env = {item["name"]: item for item in container["env"]}
    assert set(env) - POD_HELPERS - {n.upper() for n in Settings.model_fields} == set()
    # Secrets only by reference: no literal secret in the pod spec.
    for name in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "streamup"
    assert container["envFrom"] == [{"configMapRef": {"name": "streamup"}}]
    # The agent's host is the node, which outlives its pods (ownership compares hosts).
    assert env["AGENT_ID"]["value"].startswith("$(NODE_NAME):")
    port = int(config()["PROM_PORT"])
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config()["WATCH_DIR"] in mounts
    grace_s = float(config()["SHUTDOWN_GRACE_SECONDS"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace_s
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize("variant", ["node-local", "shared-redis"])
def test_the_agent_runs_as_the_images_non_root_user_without_privileges(variant: str) -> None:
    daemonset = daemonsets()[variant]
    pod_security = daemonset["spec"]["template"]["spec"]["securityContext"]
    uid = re.search(r"useradd .*--uid (\d+) streamup", (ROOT / "Dockerfile").read_text())
    assert uid is not None
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == int(uid[1])
    container = agent_container(daemonset)["securityContext"]
    assert container == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_the_node_local_variant_keeps_watch_folder_and_state_on_the_node() -> None:
    daemonset = daemonsets()["node-local"]
    spec = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in agent_container(daemonset)["volumeMounts"]}
    assert "hostPath" in volumes["recordings"] and mounts["recordings"] == config()["WATCH_DIR"]
    assert "hostPath" in volumes["state"] and mounts["state"] == config()["STATE_DIR"]
    env = {item["name"] for item in agent_container(daemonset)["env"]}
    assert "REDIS_URL" not in env  # the embedded store, on the node's disk
    assert agent_container(daemonset)["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_shared_redis_variant_reaches_the_redis_service_with_the_secrets_password() -> None:
    daemonset = daemonsets()["shared-redis"]
    env = {item["name"]: item for item in agent_container(daemonset)["env"]}
    service = resource(K8S / "shared-redis" / "redis.yaml", "Service")
    url = env["REDIS_URL"]["value"]
    assert url == f"redis://:$(REDIS_PASSWORD)@{service['metadata']['name']}:6379/0"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"
    assert "REDIS_PASSWORD" in resource(K8S / "secret.example.yaml", "Secret")["stringData"]
    redis = resource(K8S / "shared-redis" / "redis.yaml", "StatefulSet")
    (server,) = redis["spec"]["template"]["spec"]["containers"]
    assert "--appendonly yes" in " ".join(server["args"])
    volumes = daemonset["spec"]["template"]["spec"]["volumes"]
    assert not any("hostPath" in v for v in volumes)
    claim = resource(K8S / "shared-redis" / "recordings.yaml", "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {"name": "recordings", "persistentVolumeClaim": {
        "claimName": claim["metadata"]["name"]}} in volumes  # fmt: skip


def test_the_two_variants_differ_only_where_redis_replaces_the_node_state() -> None:
    node, shared = daemonsets()["node-local"], daemonsets()["shared-redis"]
    for daemonset in (node, shared):
        spec = daemonset["spec"]["template"]["spec"]
        spec.pop("initContainers", None)
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in ("recordings", "state")]
        container = agent_container(daemonset)
        container["env"] = [e for e in container["env"] if not e["name"].startswith("REDIS_")]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "state"]
        container["livenessProbe"]["httpGet"].pop("path")
    assert node == shared


DEPLOY_YAML = sorted([*(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "deploy").rglob("*.yml")])


@pytest.mark.parametrize("path", DEPLOY_YAML, ids=[p.name for p in DEPLOY_YAML])
def test_every_deploy_yaml_file_passes_yamllint(path: Path) -> None:
    config = YamlLintConfig(
        "extends: default\nrules: {line-length: {max: 100}, document-start: disable,"
        " braces: {max-spaces-inside: 1}, truthy: {check-keys: false}}"
    )
    problems = [str(p) for p in linter.run(path.read_text(), config, str(path))]
    assert problems == []
