"""The chart lints, and every configuration an operator can choose renders manifests that
the Kubernetes schemas accept (strict), that hold no nulls, and whose objects point at each
other correctly (Service -> pods -> named ports, HPA -> Deployment, PDB -> pods)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CHART = Path(__file__).resolve().parents[2] / "helm" / "rankserve"
SM_API = ["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"]


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


# Every topology, both autoscaling states, every provisioning mode, the CRD capability.
SCENARIOS: dict[str, list[str]] = {
    "defaults": [],
    "sidecar": sets("topology=sidecar"),
    "separate": sets("topology=separate"),
    "sidecar-hpa": sets("autoscaling.enabled=true"),
    "separate-hpa": sets("topology=separate", "autoscaling.enabled=true"),
    "separate-hpa-cpu-only": sets("topology=separate", "autoscaling.enabled=true",
                                  "autoscaling.customMetrics.enabled=false"),
    "objectstore-credentials": sets("modelRepository.source=objectStore",
                                    "modelRepository.objectStore.credentialsSecret=s3-creds",
                                    "modelRepository.objectStore.env[0].name=AWS_REGION",
                                    "modelRepository.objectStore.env[0].value=eu-west-1"),
    "objectstore-separate": sets("topology=separate", "modelRepository.source=objectStore"),
    "pvc-sidecar": sets("modelRepository.source=pvc", "modelRepository.pvc.claimName=models",
                        "modelRepository.pvc.subPath=v3"),
    "pvc-separate": sets("topology=separate", "modelRepository.source=pvc",
                         "modelRepository.pvc.claimName=models"),
    "image-sidecar": sets("modelRepository.source=image",
                          "triton.image.repository=registry.example/triton-feed"),
    "image-separate": sets("topology=separate", "modelRepository.source=image"),
    "servicemonitor": SM_API,
    "gpu-h100": ["-f", str(CHART / "values-gpu.yaml")],
    "gpu-separate-emptydir": ["-f", str(CHART / "values-gpu.yaml"), *sets(
        "topology=separate", "triton.tensorrtCache.claimName=", "triton.instanceCount=3")],
    "everything": [*SM_API, *sets(
        "topology=separate", "autoscaling.enabled=true", "dashboard.enabled=true",
        "gateway.auth.enabled=true", "gateway.auth.token=s3cret",
        "networkPolicy.ingressFrom[0].namespaceSelector.matchLabels.team=feed",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
        "triton.nodeSelector.gpu=h100", "imagePullSecrets[0].name=regcred",
        "models.load={feed_ranker,feed_ranker_canary}")],
}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest, render: Any) -> tuple[str, Any]:
    return request.param, render(*SCENARIOS[request.param])


def test_lint_strict(helm: Any) -> None:
    for extra in ([], sets("topology=separate", "autoscaling.enabled=true")):
        result = helm.run("lint", "--strict", str(CHART), "--kube-version", "1.30.0", *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_every_manifest_validates(scenario: tuple[str, Any], problems: Any) -> None:
    name, rendered = scenario
    assert rendered.docs, f"{name}: nothing rendered"
    assert problems(rendered.docs) == []


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pods(rendered: Any) -> list[dict[str, Any]]:
    return [d["spec"]["template"] for d in rendered.by_kind.get("Deployment", [])]


def _port_names(pod: dict[str, Any]) -> set[str]:
    return {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}


def _services_reach_named_ports(name: str, rendered: Any) -> None:
    pods = _pods(rendered)
    for svc in rendered.by_kind["Service"]:
        chosen = [p for p in pods if _selects(svc["spec"]["selector"], p["metadata"]["labels"])]
        assert chosen, f"{name}: Service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            assert all(port["targetPort"] in _port_names(p) for p in chosen), (name, port)


def _policies_select_pods(name: str, rendered: Any) -> None:
    pods = _pods(rendered)
    for obj in rendered.by_kind.get("PodDisruptionBudget", []) + \
            rendered.by_kind.get("NetworkPolicy", []):
        sel = (obj["spec"].get("selector") or obj["spec"]["podSelector"])["matchLabels"]
        chosen = [p for p in pods if _selects(sel, p["metadata"]["labels"])]
        assert chosen, f"{name}: {obj['kind']} {obj['metadata']['name']} selects no pods"
        ports = [port for rule in obj["spec"].get("ingress", []) for port in rule["ports"]]
        for port in ports:
            assert all(port["port"] in _port_names(p) for p in chosen), (name, port)


def _pods_are_self_consistent(name: str, rendered: Any) -> None:
    for pod in _pods(rendered):
        volumes = {v["name"] for v in pod["spec"]["volumes"]}
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, (name, c["name"])
            names = {p["name"] for p in c.get("ports", [])}
            probes = [c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c]
            assert all(p["httpGet"]["port"] in names for p in probes), (name, c["name"])


def test_references_resolve(scenario: tuple[str, Any]) -> None:
    """What one object names in another exists in the same release."""
    name, rendered = scenario
    _services_reach_named_ports(name, rendered)
    _policies_select_pods(name, rendered)
    _pods_are_self_consistent(name, rendered)
    deployments = {d["metadata"]["name"] for d in rendered.by_kind["Deployment"]}
    for hpa in rendered.by_kind.get("HorizontalPodAutoscaler", []):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_objects_follow_the_switches(render: Any) -> None:
    kinds = {name: render(*args) for name, args in SCENARIOS.items()}
    assert "HorizontalPodAutoscaler" not in kinds["defaults"].kinds()
    assert len(kinds["sidecar-hpa"].by_kind["HorizontalPodAutoscaler"]) == 1
    assert len(kinds["separate-hpa"].by_kind["HorizontalPodAutoscaler"]) == 2
    assert len(kinds["sidecar"].by_kind["Deployment"]) == 1
    assert len(kinds["separate"].by_kind["Deployment"]) == 2
    assert "ServiceMonitor" not in kinds["defaults"].kinds()
    assert "ServiceMonitor" in kinds["servicemonitor"].kinds()
    assert "Secret" in kinds["everything"].kinds()
    # With autoscaling on, the HPA owns the replica count.
    for d in kinds["separate-hpa"].by_kind["Deployment"]:
        assert "replicas" not in d["spec"]


def _metric_names(hpa: dict[str, Any]) -> list[str]:
    return [m["pods"]["metric"]["name"] if m["type"] == "Pods" else m["resource"]["name"]
            for m in hpa["spec"]["metrics"]]


def test_hpa_scales_on_queue_time_with_cpu_fallback(render: Any) -> None:
    sidecar = render(*SCENARIOS["sidecar-hpa"]).one("HorizontalPodAutoscaler", "-triton")
    assert _metric_names(sidecar) == ["rankserve_queue_wait_seconds_avg", "cpu"]
    separate = render(*SCENARIOS["separate-hpa"])
    assert _metric_names(separate.one("HorizontalPodAutoscaler", "-gateway")) == [
        "rankserve_queue_wait_seconds_avg", "cpu"]
    assert _metric_names(separate.one("HorizontalPodAutoscaler", "-triton")) == [
        "nv_inference_queue_duration_us_avg", "cpu"]
    cpu_only = render(*SCENARIOS["separate-hpa-cpu-only"])
    for hpa in cpu_only.by_kind["HorizontalPodAutoscaler"]:
        assert _metric_names(hpa) == ["cpu"]


def test_service_monitor_scrapes_both_metrics_ports(render: Any) -> None:
    rendered = render(*SCENARIOS["servicemonitor"])
    sm = rendered.one("ServiceMonitor")
    ports = {e["port"]: e["path"] for e in sm["spec"]["endpoints"]}
    assert ports == {"http": "/metrics", "triton-metrics": "/metrics"}
    service_ports = {p["name"] for s in rendered.by_kind["Service"]
                     if _selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
                     for p in s["spec"]["ports"]}
    assert set(ports) <= service_ports
    assert sm["spec"]["namespaceSelector"]["matchNames"] == ["ranking"]


def test_gpu_scheduling(render: Any) -> None:
    rendered = render(*SCENARIOS["everything"])
    pod = rendered.one("Deployment", "-triton")["spec"]["template"]["spec"]
    triton = rendered.container("-triton", "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    gateway_pod = rendered.one("Deployment", "-gateway")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(gateway_pod["containers"])


def test_triton_flags_and_probes(render: Any) -> None:
    triton = render().container("-triton", "triton")
    args = triton["args"]
    assert "--model-control-mode=explicit" in args
    assert "--strict-readiness=true" in args
    assert [a for a in args if a.startswith("--load-model=")] == ["--load-model=feed_ranker"]
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert f"--http-port={ports['triton-http']}" in args
    assert f"--metrics-port={ports['triton-metrics']}" in args
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_provisioning_modes(render: Any) -> None:
    obj = render(*SCENARIOS["objectstore-credentials"])
    pod = obj.one("Deployment", "-triton")["spec"]["template"]["spec"]
    (sync,) = pod["initContainers"]
    assert sync["command"][-2:] == ["s3://rankserve-models/model_repository", "/models"]
    assert sync["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in sync["env"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["model-repository"]

    pvc = render(*SCENARIOS["pvc-sidecar"])
    pod = pvc.one("Deployment", "-triton")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-repository"]["persistentVolumeClaim"] == {
        "claimName": "models", "readOnly": True}
    mount = next(m for m in pvc.container("-triton", "triton")["volumeMounts"]
                 if m["name"] == "model-repository")
    assert mount == {"name": "model-repository", "mountPath": "/models", "readOnly": True,
                     "subPath": "v3"}

    image = render(*SCENARIOS["image-sidecar"])
    pod = image.one("Deployment", "-triton")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert "model-repository" not in {v["name"] for v in pod["volumes"]}
    triton = image.container("-triton", "triton")
    assert triton["image"].startswith("registry.example/triton-feed:")
    assert "--model-repository=/models" in triton["args"]


def test_helm_test_pod_sends_a_ranking_request(render: Any, problems: Any) -> None:
    rendered = render(*SCENARIOS["everything"])
    (pod,) = [p for p in rendered.by_kind["Pod"]
              if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert problems([pod]) == []
    (container,) = pod["spec"]["containers"]
    script = (CHART / "files" / "rank_smoke.py").read_text()
    assert container["command"] == ["python", "-c"]
    assert container["args"][0].strip() == script.strip()
    env = {e["name"]: e for e in container["env"]}
    gateway_svc = rendered.one("Service", "rel-rankserve")
    port = gateway_svc["spec"]["ports"][0]["port"]
    assert env["RANKSERVE_URL"]["value"] == f"http://rel-rankserve.ranking.svc:{port}"
    gateway_env = {e["name"]: e for e in rendered.container("-gateway", "gateway")["env"]}
    assert env["RANKSERVE_AUTH_TOKEN"] == gateway_env["RANKSERVE_AUTH_TOKEN"]
    # The NetworkPolicy that restricts the gateway still admits the test pod.
    policy = rendered.one("NetworkPolicy", "-gateway")
    peers = policy["spec"]["ingress"][0]["from"]
    assert any(_selects(p.get("podSelector", {}).get("matchLabels", {"x": "y"}),
                        pod["metadata"]["labels"]) for p in peers)


def test_notes_say_how_to_reach_the_service(helm: Any) -> None:
    def notes(*extra: str) -> str:
        result = helm.run("install", "rel", str(CHART), "--namespace", "ranking",
                          "--dry-run=client", *extra)
        assert result.returncode == 0, result.stderr
        text: str = result.stdout
        return text.split("NOTES:", 1)[1]

    default = notes()
    assert "http://rel-rankserve.ranking.svc:80/v1/rank" in default
    assert "port-forward svc/rel-rankserve 8080:80" in default
    assert "helm test rel -n ranking" in default
    assert "No ServiceMonitor was created" in default
    assert "custom.metrics.k8s.io" not in default
    scaled = notes("--set", "autoscaling.enabled=true", "--set", "gateway.auth.enabled=true",
                   "--set", "gateway.auth.existingSecret=t")
    assert "pods/*/rankserve_queue_wait_seconds_avg" in scaled
    assert 'Authorization: Bearer $TOKEN' in scaled
