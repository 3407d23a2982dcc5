"""The gateway and Triton, as rendered, agree: the gateway dials the address Triton listens
on, uses shared memory only where both share one memory-backed /dev/shm, scores with a model
Triton is told to load, and reads the same model repository. The gateway's rendered config
file is loaded with the real ``Settings`` class, so a key it does not know fails here."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "helm" / "rankserve"
NAMESPACE = "ranking"

TOPOLOGIES_AND_SOURCES = [
    (topology, source)
    for topology in ("sidecar", "separate")
    for source in ("objectStore", "pvc", "image")
]


def _render(render: Any, topology: str, source: str, *extra: str) -> Any:
    args = ["--set", f"topology={topology}", "--set", f"modelRepository.source={source}",
            "--set", "modelRepository.pvc.claimName=models",
            "--set", "models.load={feed_ranker,feed_ranker_v2}",
            "--set", "models.default=feed_ranker_v2", *extra]
    return render(*args)


def _gateway_settings(rendered: Any, tmp_path: Path) -> Settings:
    """The gateway's config as ``rankserve serve`` would load it from RANKSERVE_CONFIG."""
    config_map = rendered.one("ConfigMap", "-gateway-config")
    gateway = _gateway_container(rendered)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "gateway-config")
    config_path = Path(env["RANKSERVE_CONFIG"])
    assert config_path.parent == Path(mount["mountPath"])
    file = tmp_path / config_path.name
    file.write_text(config_map["data"][config_path.name])
    return Settings.load(file)


def _gateway_deployment(rendered: Any) -> dict[str, Any]:
    for deployment in rendered.by_kind["Deployment"]:
        names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
        if "gateway" in names:
            return typing.cast(dict[str, Any], deployment)
    raise AssertionError("no Deployment runs the gateway")


def _gateway_container(rendered: Any) -> dict[str, Any]:
    pod = _gateway_deployment(rendered)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "gateway")


def _flag(args: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


@pytest.mark.parametrize(("topology", "source"), TOPOLOGIES_AND_SOURCES)
def test_gateway_and_triton_agree(render: Any, tmp_path: Path, topology: str,
                                  source: str) -> None:
    rendered = _render(render, topology, source)
    settings = _gateway_settings(rendered, tmp_path)
    triton = rendered.container("-triton", "triton")
    triton_pod = rendered.one("Deployment", "-triton")["spec"]["template"]["spec"]
    gateway = _gateway_container(rendered)
    gateway_pod = _gateway_deployment(rendered)["spec"]["template"]["spec"]

    assert settings.backend == "triton"
    # Models: the gateway's model is one Triton loads, and Triton loads exactly the list.
    loaded = _flag(triton["args"], "load-model")
    assert loaded == ["feed_ranker", "feed_ranker_v2"]
    assert settings.default_model in loaded
    assert settings.default_model == "feed_ranker_v2"  # the chosen default, not just any
    assert _flag(triton["args"], "model-control-mode") == ["explicit"]

    # Address: the gateway dials the port Triton's gRPC server binds.
    grpc_port = int(_flag(triton["args"], "grpc-port")[0])
    host, port = settings.triton_url.rsplit(":", 1)
    if topology == "sidecar":
        assert gateway_pod is triton_pod
        assert (host, int(port)) == ("127.0.0.1", grpc_port)
        assert _flag(triton["args"], "grpc-address") == ["127.0.0.1"]
    else:
        service = rendered.one("Service", "-triton")
        assert host == f"{service['metadata']['name']}.{NAMESPACE}.svc"
        svc_port = next(p for p in service["spec"]["ports"] if p["port"] == int(port))
        container_port = next(p for p in triton["ports"] if p["name"] == svc_port["targetPort"])
        assert container_port["containerPort"] == grpc_port

    # Shared memory: on only when both containers mount one memory-backed /dev/shm.
    assert settings.triton_shared_memory is (topology == "sidecar")
    if settings.triton_shared_memory:
        shm = {m["name"] for c in (triton, gateway) for m in c["volumeMounts"]
               if m["mountPath"] == "/dev/shm"}
        assert len(shm) == 1
        volume = next(v for v in triton_pod["volumes"] if v["name"] in shm)
        assert volume["emptyDir"]["medium"] == "Memory"
        assert triton_pod["securityContext"]["runAsUser"] is not None  # one uid for both
        assert "runAsUser" not in gateway.get("securityContext", {})
        assert "runAsUser" not in triton.get("securityContext", {})

    # Model repository: the gateway reads the cards of the repository Triton serves.
    repository = _flag(triton["args"], "model-repository")[0]
    if source == "image":
        assert str(settings.model_repository) == "/app/model_repository"
    else:
        assert str(settings.model_repository) == repository
        triton_mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == repository)
        gateway_mount = next(m for m in gateway["volumeMounts"]
                             if m["mountPath"] == repository)
        volume_of = {v["name"]: {k: v2 for k, v2 in v.items() if k != "name"}
                     for v in triton_pod["volumes"] + gateway_pod["volumes"]}
        assert volume_of[triton_mount["name"]] == volume_of[gateway_mount["name"]]

    # Ports: the gateway listens where its container port and probes say.
    http = next(p for p in gateway["ports"] if p["name"] == "http")
    assert settings.port == http["containerPort"]
    assert settings.host == "0.0.0.0"
    if topology == "sidecar":
        triton_ports = {p["containerPort"] for p in triton["ports"]}
        assert settings.port not in triton_ports | {grpc_port}


def _pre_stop_sleep(container: dict[str, Any]) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_triton_outlives_its_gateway_on_shutdown(render: Any) -> None:
    """Pods leave the endpoints before SIGTERM, and in a sidecar pod Triton keeps serving
    while the gateway drains its queue through it; the grace period covers both."""
    rendered = render()
    pod = rendered.one("Deployment", "-triton")["spec"]["template"]["spec"]
    gateway = _pre_stop_sleep(rendered.container("-triton", "gateway"))
    triton = _pre_stop_sleep(rendered.container("-triton", "triton"))
    assert 0 < gateway < triton < pod["terminationGracePeriodSeconds"]


def test_config_change_restarts_pods(render: Any) -> None:
    """The pod template carries the config's checksum, so a settings change rolls pods."""
    before = render().one("Deployment", "-triton")["spec"]["template"]["metadata"]
    after = render("--set", "gateway.settings.max_queue_rows=1000").one(
        "Deployment", "-triton")["spec"]["template"]["metadata"]
    key = "checksum/gateway-config"
    assert before["annotations"][key] != after["annotations"][key]


def test_auth_token_comes_from_a_secret(render: Any) -> None:
    created = render("--set", "gateway.auth.enabled=true", "--set", "gateway.auth.token=t0k")
    secret = created.one("Secret", "-auth")
    env = {e["name"]: e for e in created.container("-triton", "gateway")["env"]}
    ref = env["RANKSERVE_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["data"]
    assert "auth_token" not in created.one("ConfigMap", "-gateway-config")["data"]["config.yaml"]

    existing = render("--set", "gateway.auth.enabled=true",
                      "--set", "gateway.auth.existingSecret=feed-token")
    assert "Secret" not in existing.kinds()
    env = {e["name"]: e for e in existing.container("-triton", "gateway")["env"]}
    assert env["RANKSERVE_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "feed-token"


def test_settings_schema_matches_the_settings_class() -> None:
    """values.schema.json offers only real gateway settings, with the same choices."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    offered = schema["$defs"]["gatewaySettings"]["properties"]
    fields = Settings.model_fields
    assert set(offered) <= set(fields), set(offered) - set(fields)
    owned = {"host", "port", "backend", "model_repository", "default_model", "triton_url",
             "triton_shared_memory", "auth_token", "instances"}
    assert not owned & set(offered)
    for name, spec in offered.items():
        if "enum" in spec and name != "log_level":
            assert set(spec["enum"]) == set(typing.get_args(fields[name].annotation)), name


# Names the dashboard may use: Triton's, from its metrics documentation, and the gateway's
# GPU gauges, which exist only where NVML finds a GPU (so they cannot be read off a registry
# on this machine).
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
    "nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption",
}
GATEWAY_GPU_METRICS = {"rankserve_gpu_utilization_ratio", "rankserve_gpu_memory_used_bytes",
                       "rankserve_gpu_power_watts", "rankserve_gpu_temperature_celsius"}


def _gateway_series() -> set[str]:
    """Series names the gateway's metrics registry exports."""
    metrics = pytest.importorskip("serving.telemetry.metrics")
    names: set[str] = set()
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",),
                "gauge": ("",)}
    for family in metrics.Metrics().registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_dashboard_uses_real_metric_names(render: Any) -> None:
    rendered = render("--set", "dashboard.enabled=true")
    config_map = rendered.one("ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["rankserve.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = {word for e in exprs for word in re.findall(r"\b(?:rankserve|nv)_[a-z_]+\b", e)}
    known = _gateway_series() | TRITON_METRICS | GATEWAY_GPU_METRICS
    assert used <= known, sorted(used - known)
    # Every family the gateway exports appears on the dashboard.
    families = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in _gateway_series()
                if n.startswith("rankserve_")}  # process_* are the standard collector's
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in used}
    assert families <= shown, sorted(families - shown)


def test_prometheus_adapter_rules_serve_the_hpa_metrics(render: Any) -> None:
    """The adapter rules shipped in helm/ produce exactly the metrics the HPAs ask for,
    computed from series the gateway and Triton really export."""
    rules = yaml.safe_load((CHART.parent / "prometheus-adapter-values.yaml").read_text())
    served = {r["name"]["as"]: r for r in rules["rules"]["custom"]}
    rendered = render("--set", "topology=separate", "--set", "autoscaling.enabled=true")
    wanted = {m["pods"]["metric"]["name"]
              for hpa in rendered.by_kind["HorizontalPodAutoscaler"]
              for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted == set(served)
    known = _gateway_series() | TRITON_METRICS
    for name, rule in served.items():
        series = set(re.findall(r"\b(?:rankserve|nv)_[a-z_]+\b",
                                rule["seriesQuery"] + rule["metricsQuery"]))
        assert series <= known, (name, sorted(series - known))
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
