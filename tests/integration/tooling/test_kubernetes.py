"""deploy/kubernetes, offline: schema validation and agreement with the server's flags.

No cluster and no kustomize binary here: the base resources are validated against the
Kubernetes schemas (kubernetes-validate); the CRDs (ServiceMonitor, KEDA ScaledObject)
have no bundled schema and are checked field by field; overlays are merged the way
kustomize's strategic merge does for the fields they touch (containers and env by name).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_render import CRD_KINDS, K8S_VERSION, ROOT, container, server_config

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
            if value is None:  # strategic merge: `key: null` deletes the key
                out.pop(key, None)
            else:
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


# --- TLS: components/tls (a kustomize Component any overlay can add), used by gpu-tls.


def render(directory: Path) -> list[dict[str, Any]]:
    """kustomize's output for ``directory`` as far as our files need: resources (the base
    or another overlay), then patches, then components' patches, matched by kind + name."""
    kustomization = _kustomization(directory)
    if directory == ROOT / "base":
        resources = copy.deepcopy(base_resources())
    else:
        resources = [r for entry in kustomization.get("resources", []) for r in render(
            (directory / entry).resolve()
        )]  # fmt: skip
    layers = [(directory, kustomization)] + [
        ((directory / c).resolve(), _kustomization((directory / c).resolve()))
        for c in kustomization.get("components", [])
    ]
    for layer_dir, layer in layers:
        for entry in layer.get("patches", []) if layer_dir != ROOT / "base" else []:
            (patch,) = _load(layer_dir / entry["path"])
            key = (patch["kind"], patch["metadata"]["name"])
            (index,) = [
                i for i, r in enumerate(resources) if (r["kind"], r["metadata"]["name"]) == key
            ]
            resources[index] = _merge(resources[index], patch)
    return resources


TLS_OVERLAY = ROOT / "overlays" / "gpu-tls"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def test_rendering_matches_the_overlays_own_merge() -> None:
    """render() (which components need) agrees with overlay_deployment() on cpu and gpu."""
    for name in ("cpu", "gpu"):
        assert _by_kind("Deployment", render(ROOT / "overlays" / name)) == overlay_deployment(name)


def test_tls_overlay_validates_and_serves_tls_from_the_secret() -> None:
    resources = render(TLS_OVERLAY)
    for resource in resources:
        if resource["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    deployment = _by_kind("Deployment", resources)
    config = server_config(deployment)  # load_config also checks cert and key go together
    assert config.device == "cuda"  # still the gpu overlay underneath
    main = container(deployment)
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["tls"]["readOnly"] is True
    tls_dir = mounts["tls"]["mountPath"]
    # cert-manager's Secret layout: tls.crt, tls.key, ca.crt.
    assert config.tls_cert == f"{tls_dir}/tls.crt"
    assert config.tls_key == f"{tls_dir}/tls.key"
    assert config.tls_client_ca == ""  # TLS, not mTLS (the probe has no client certificate)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["tls"]["secret"]
    assert secret["secretName"] == "zopilot-tls"
    assert secret["defaultMode"] == 0o440  # the private key: owner and the pod's fsGroup
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001
    # The API key Secret and everything else of the base are still there.
    assert config.api_key_file and "api-key" in volumes
    (grpc_port,) = [
        p for p in _by_kind("Service", resources)["spec"]["ports"] if p["name"] == "grpc"
    ]
    assert "appProtocol" not in grpc_port  # no longer cleartext h2c


def probe_args(probe: dict[str, Any]):
    """A TLS probe's command, parsed by the real `zopilot` CLI parser."""
    from zopilot_client.cli import build_parser as cli_parser

    command = probe["exec"]["command"]
    assert command[0] == "zopilot"  # on the image's PATH (/opt/venv/bin)
    return cli_parser().parse_args(command[1:])


def test_tls_probes_run_the_cli_health_check_within_their_timeout() -> None:
    deployment = _by_kind("Deployment", render(TLS_OVERLAY))
    config = server_config(deployment)
    main = container(deployment)
    tls_dir = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}["tls"]
    for name in PROBES:
        probe = main[name]
        assert "grpc" not in probe, f"{name}: a native gRPC probe cannot do TLS"
        args = probe_args(probe)
        assert args.command == "health" and args.service == ""  # the server's overall health
        host, port = args.target.rsplit(":", 1)
        assert (host, int(port)) == ("localhost", config.port), name
        assert args.tls_ca == f"{tls_dir}/ca.crt"
        assert args.no_retry and not args.wait  # one quick check per period
        assert float(args.timeout) < probe["timeoutSeconds"], name
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load


def test_tls_probe_command_passes_against_the_real_tls_server(make_server, pki) -> None:
    """The probe, as written, against the server with a certificate for localhost: 0 when
    SERVING; and it refuses a server whose certificate its CA did not sign."""
    deployment = _by_kind("Deployment", render(TLS_OVERLAY))
    probe = container(deployment)["readinessProbe"]
    server = make_server(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    port = server.target.rsplit(":", 1)[1]

    def run_probe(ca: Path) -> subprocess.CompletedProcess[str]:
        command = [
            part.replace(":50051", f":{port}").replace("/etc/zopilot/tls/ca.crt", str(ca))
            for part in probe["exec"]["command"]
        ]
        command[0] = str(Path(sys.executable).parent / "zopilot")
        return subprocess.run(
            command, capture_output=True, text=True, timeout=probe["timeoutSeconds"] + 30
        )

    ok = run_probe(pki.ca)
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout
    wrong_ca = run_probe(pki.other_cert)  # a CA bundle that does not vouch for the server
    assert wrong_ca.returncode != 0


def _normalized(value: Any) -> Any:
    """Named lists sorted by name (kustomize and render() may order merged items apart)."""
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_normalized(v) for v in value]
        if all(isinstance(i, dict) and "name" in i for i in items):
            return sorted(items, key=lambda i: i["name"])
        return items
    return value


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "gpu-tls"])
def test_kubectl_kustomize_renders_the_same(overlay: str) -> None:
    """Where kubectl (with its bundled kustomize) is installed, its rendering of the pod
    spec and Service ports equals the one the tests above check."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    ours = render(ROOT / "overlays" / overlay)
    for kind, path in (("Deployment", ("spec", "template", "spec")), ("Service", ("spec",))):
        theirs_part, ours_part = _by_kind(kind, rendered), _by_kind(kind, ours)
        for key in path:
            theirs_part, ours_part = theirs_part[key], ours_part[key]
        assert _normalized(theirs_part) == _normalized(ours_part), kind
