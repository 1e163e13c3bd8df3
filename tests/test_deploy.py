"""The scoring service's Kubernetes manifests: valid against the Kubernetes schemas (kubernetes-validate, strict:
no unknown field), and keeping their promises: probes on /ready and /health, the Service and the autoscaler on the
Deployment, API keys only from a Secret, a command the service accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_usecase
from pipelines.serving.server import add_arguments

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # the oldest minor version we promise (autoscaling/v2, seccompProfile)


def _documents() -> list[dict]:
    files = sorted(MANIFESTS.glob("*.yaml"))
    assert files, f"no manifests under {MANIFESTS}"
    return [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, "1.37.0"])
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    import kubernetes_validate

    for document in _documents():
        kubernetes_validate.validate(document, version, strict=True)


def test_the_deployment_keeps_its_promises() -> None:
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in _documents()}
    deployment = by_kind[("Deployment", "mlops-serve")]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["securityContext"]["runAsNonRoot"] is True

    # the arguments are ones `mlops serve` accepts, for a use case that exists, with API keys required
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(container["args"])
    assert load_usecase(args.usecase).name == args.usecase
    assert not args.no_auth
    # the keys come from a Secret mounted where MLOPS_API_KEYS_FILE points, never from the manifest
    env = {e["name"]: e.get("value") for e in container["env"]}
    keys_file = Path(env["MLOPS_API_KEYS_FILE"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (secret_volume,) = [name for name, v in volumes.items() if "secret" in v]
    assert keys_file.parent == Path(mounts[secret_volume])
    assert "MLOPS_API_KEYS" not in env
    assert not any(d["kind"] == "Secret" for d in _documents()), (
        "secrets are created with kubectl, not shipped"
    )

    service = by_kind[("Service", "mlops-serve")]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    autoscaler = by_kind[("HorizontalPodAutoscaler", "mlops-serve")]
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mlops-serve",
    }
    assert autoscaler["spec"]["minReplicas"] >= 2
