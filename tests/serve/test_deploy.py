"""The deployment files parse and wire `deltadit serve` to Triton's health endpoints (not run: no cluster)."""

from pathlib import Path

import pytest

DEPLOY = Path(__file__).parents[2] / "deltadit" / "serve" / "deploy"


def test_kubernetes_runs_serve_replicas_with_triton_probes():
    yaml = pytest.importorskip("yaml")
    deployment, service = yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text())
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(container["args"][container["args"].index("--exit-timeout") + 1])
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_dockerfile_serves_on_every_interface_of_the_container():
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["deltadit", "serve", "--host", "0.0.0.0"' in text and "onnxruntime-gpu" in text
