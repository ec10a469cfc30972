"""deploy/kubernetes/overlays/gateway and overlays/inference-pool, offline.

Rendered by the real ``kubectl kustomize`` (the overlays use a ``$patch: delete`` that
test_kubernetes.py's own merge does not model), then: Kubernetes schemas
(kubernetes-validate), smg's arguments parsed by smg's own parser (the pinned wheel),
discovery selector / port / RBAC / NetworkPolicy agreeing with the replicas they target,
and the InferencePool checked against the Gateway API Inference Extension's CRD
(vendored under tests/schemas).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_render import CRD_KINDS, K8S_VERSION, ROOT, container, server_config
from support import REPO

CRD_FILE = REPO / "tests" / "schemas" / "inferencepools-crd-v1.6.0.yaml"
GATEWAY_LABELS = {"app.kubernetes.io/name": "zopilot-gateway"}


def render(overlay: str) -> list[dict[str, Any]]:
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
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in resources if (r["kind"], r["metadata"]["name"]) == (kind, name)]
    return found


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def gateway() -> list[dict[str, Any]]:
    return render("gateway")


def smg_args(deployment: dict[str, Any], namespace: str = "inference"):
    """The gateway container's arguments through smg's own parser, with the namespace
    Kubernetes substitutes for $(POD_NAMESPACE)."""
    from smg.launch_router import parse_router_args

    main = container(deployment)
    env = {e["name"]: e for e in main["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    args = [a.replace("$(POD_NAMESPACE)", namespace) for a in main["args"]]
    assert not [a for a in args if "$(" in a], args  # every variable reference resolves
    return parse_router_args(args)


def test_gateway_overlay_validates(gateway: list[dict[str, Any]]) -> None:
    kinds = {r["kind"] for r in gateway}
    assert {"ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"} <= kinds
    for resource in gateway:
        if resource["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_smg_discovers_the_replicas_grpc_port_by_label(gateway: list[dict[str, Any]]) -> None:
    replicas = find(gateway, "Deployment", "zopilot")
    smg = find(gateway, "Deployment", "zopilot-gateway")
    args = smg_args(smg)
    assert args.selected_discovery_provider() == "kubernetes"
    assert (args.backend, args.policy) == ("vllm", "cache_aware")
    assert args.service_discovery_namespace == "inference"  # its own namespace: a Role does
    assert selects(args.selector, pod_labels(replicas))
    assert not selects(args.selector, pod_labels(smg))  # never routes to itself
    grpc_port = {p["name"]: p["containerPort"] for p in container(replicas)["ports"]}["grpc"]
    assert args.service_discovery_port == grpc_port == server_config(replicas).port
    args.enable_igw = True  # what smg's launcher sets when discovery is on
    args._validate_router_args()  # smg's own consistency checks pass
    # The image is the smg release the tests run (requirements-dev.txt pins it).
    image = container(smg)["image"]
    assert image == f"docker.io/lightseekorg/smg:{importlib.metadata.version('smg')}"
    pins = (REPO / "requirements-dev.txt").read_text()
    assert f"smg=={importlib.metadata.version('smg')}" in pins.split()


def test_gateway_ports_probes_and_shutdown_agree(gateway: list[dict[str, Any]]) -> None:
    smg = find(gateway, "Deployment", "zopilot-gateway")
    args = smg_args(smg)
    main = container(smg)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"http": args.port, "metrics": args.prometheus_port}
    assert args.host == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    pod = smg["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > args.shutdown_grace_period_secs
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = find(gateway, "Service", "zopilot-gateway")
    assert service["spec"]["selector"] == pod_labels(smg) == GATEWAY_LABELS
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "metrics": "metrics",
    }


def test_rbac_lets_the_gateway_watch_pods_and_nothing_more(gateway: list[dict[str, Any]]) -> None:
    smg = find(gateway, "Deployment", "zopilot-gateway")
    account = smg["spec"]["template"]["spec"]["serviceAccountName"]
    find(gateway, "ServiceAccount", account)
    binding = find(gateway, "RoleBinding", account)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    assert binding["roleRef"]["kind"] == "Role"  # namespaced, not a ClusterRole
    role = find(gateway, "Role", binding["roleRef"]["name"])
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]


def test_replicas_trust_only_the_gateway_on_grpc(gateway: list[dict[str, Any]]) -> None:
    """smg 1.13.0 sends no API key to gRPC workers, so the replicas run without one and a
    NetworkPolicy admits only the gateway's pods to the gRPC port (metrics stay open)."""
    replicas = find(gateway, "Deployment", "zopilot")
    config = server_config(replicas)
    assert (config.api_key, config.api_key_file) == ("", "")
    assert config.device == "cpu"  # the cpu overlay underneath
    policy = find(gateway, "NetworkPolicy", "zopilot-only-from-gateway")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(replicas))
    assert policy["policyTypes"] == ["Ingress"]
    grpc_rule, metrics_rule = policy["ingress"]
    assert [p["port"] for p in grpc_rule["ports"]] == ["grpc"]
    (source,) = grpc_rule["from"]
    assert source["podSelector"]["matchLabels"] == GATEWAY_LABELS
    assert "from" not in metrics_rule and [p["port"] for p in metrics_rule["ports"]] == ["metrics"]


# --- InferencePool (Gateway API Inference Extension)


def crd_schema() -> dict[str, Any]:
    (crd,) = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the CRD does not declare (the API server would prune or, strict, refuse)."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def check_inference_pool(pool: dict[str, Any]) -> None:
    schema = crd_schema()
    jsonschema.validate(pool, schema)
    assert unknown_fields({k: v for k, v in pool.items() if k != "metadata"}, schema) == []


def test_inference_pool_targets_the_replicas_over_h2c() -> None:
    resources = render("inference-pool")
    pool = find(resources, "InferencePool", "zopilot")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    check_inference_pool(pool)
    replicas = find(resources, "Deployment", "zopilot")
    assert selects(pool["spec"]["selector"]["matchLabels"], pod_labels(replicas))
    config = server_config(replicas)
    assert pool["spec"]["targetPorts"] == [{"number": config.port}]
    assert pool["spec"]["appProtocol"] == "kubernetes.io/h2c"  # gRPC is cleartext HTTP/2
    assert config.tls_cert == ""  # h2c only holds without TLS
    assert pool["spec"]["endpointPickerRef"]["name"] == "zopilot-epp"
    for resource in resources:
        if resource["kind"] not in CRD_KINDS | {"InferencePool"}:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "change",
    [
        {"appProtocol": "grpc"},  # not one of the CRD's two protocols
        {"targetPorts": []},  # at least one
        {"targetPorts": [{"number": 70000}]},
        {"selector": {"matchLabels": {}}},  # selects everything: refused
        {"targetPort": [{"number": 50051}]},  # a misspelt field
    ],
    ids=["protocol", "no-ports", "port-range", "empty-selector", "typo"],
)
def test_the_pool_check_refuses_a_broken_pool(change: dict[str, Any]) -> None:
    pool = find(render("inference-pool"), "InferencePool", "zopilot")
    pool["spec"].update(change)
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        check_inference_pool(pool)


def test_the_vendored_crd_is_the_released_v1() -> None:
    header = CRD_FILE.read_text().splitlines()[0]
    assert "v1.6.0" in header and "992e5c292afb248801ce8d9234eb5b9d28eea231" in header
    assert (
        "kubernetes.io/h2c"
        in crd_schema()["properties"]["spec"]["properties"]["appProtocol"]["enum"]
    )
