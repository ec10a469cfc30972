"""What the Kubernetes tests share: where the manifests are, the schema version they are
validated against, the CRD kinds without a bundled schema, and the server's view of a
rendered Deployment."""

from __future__ import annotations

from typing import Any

from support import REPO
from zopilot_server.config import ServerConfig, build_parser, load_config

ROOT = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}


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
