"""deploy/kubernetes, offline: schema validation and agreement with the server's flags.

No cluster and no kustomize binary here: the base resources are validated against the
Kubernetes schemas (kubernetes-validate); the CRDs (ServiceMonitor, KEDA ScaledObject)
have no bundled schema and are checked field by field; overlays are merged the way
kustomize's strategic merge does for the fields they touch (containers and env by name).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from zopilot_server.config import ServerConfig, build_parser, load_config

ROOT = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}
PRESTOP_MARGIN_S = 10  # engine close + parser workers + slack after the grace period


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def base_resources() -> list[dict[str, Any]]:
    base = ROOT / "base"
    return [doc for name in _kustomization(base)["resources"] for doc in _load(base / name)]


def _by_kind(kind: str, resources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    (found,) = [r for r in resources or base_resources() if r["kind"] == kind]
    return found


def _merge_named(base: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = {item["name"]: item for item in base}
    for item in patch:
        merged[item["name"]] = _merge(merged.get(item["name"], {}), item)
    return list(merged.values())


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge, as far as our patches need it: maps merge, named lists by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all("name" in i for i in patch):
        return _merge_named(base, patch)
    return patch


def overlay_deployment(name: str) -> dict[str, Any]:
    directory = ROOT / "overlays" / name
    kustomization = _kustomization(directory)
    assert kustomization["resources"] == ["../../base"]
    deployment = copy.deepcopy(_by_kind("Deployment"))
    for patch in kustomization["patches"]:
        (doc,) = _load(directory / patch["path"])
        assert (doc["kind"], doc["metadata"]["name"]) == ("Deployment", "zopilot")
        deployment = _merge(deployment, doc)
    return deployment


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def server_config(deployment: dict[str, Any]) -> ServerConfig:
    """The ServerConfig the pod's environment produces (every variable must be a flag)."""
    env = {e["name"]: e["value"] for e in container(deployment)["env"]}
    flags = {a.dest for a in build_parser({})._actions}
    for name in env:
        assert name.startswith("ZOPILOT_") and name[8:].lower() in flags, name
    return load_config([], env=env)


@pytest.mark.parametrize("resource", base_resources(), ids=lambda r: r["kind"])
def test_base_resources_validate(resource: dict[str, Any]) -> None:
    if resource["kind"] in CRD_KINDS:
        pytest.skip("CRD: no bundled schema (checked by the tests below)")
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_validate_and_set_the_device(overlay: str) -> None:
    deployment = overlay_deployment(overlay)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    config = server_config(deployment)
    assert config.device == {"cpu": "cpu", "gpu": "cuda"}[overlay]
    limits = container(deployment)["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")


def test_probes_ports_and_grace_agree_with_the_server_flags() -> None:
    deployment = _by_kind("Deployment")
    config = server_config(deployment)
    main = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    assert config.host == "0.0.0.0"  # probes and peers reach the pod IP
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # service "" = the overall health the server sets (NOT_SERVING while loading).
        assert main[probe]["grpc"] == {"port": config.port}, probe
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load
    sleep = main["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    grace_total = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_total >= int(sleep[1]) + config.grace_period_s + PRESTOP_MARGIN_S
    # The key comes from the Secret as a file, never as a flag or variable value.
    assert config.api_key == ""
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    secret = _by_kind("Secret")
    assert config.api_key_file == f"{mounts['api-key']}/{next(iter(secret['stringData']))}"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-key"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_service_is_headless_and_monitoring_targets_match() -> None:
    resources = base_resources()
    service, monitor, scaled = (
        _by_kind(k, resources) for k in ("Service", "ServiceMonitor", "ScaledObject")
    )
    config = server_config(_by_kind("Deployment", resources))
    assert service["spec"]["clusterIP"] == "None"  # DNS lists pods: client round_robin
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "zopilot"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "zopilot_num_requests_waiting" in trigger["metadata"]["query"]
    from zopilot_server import metrics  # the gauge the trigger reads exists

    names = {m.name for m in metrics.REGISTRY.collect()}
    assert "zopilot_num_requests_waiting" in names
    pdb = _by_kind("PodDisruptionBudget", resources)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert _by_kind("Deployment", resources)["spec"]["replicas"] >= 2
