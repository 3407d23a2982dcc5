"""GPU pods: RuntimeClass and node selector, a TensorRT engine cache volume at the path
config.pbtxt names, the gateway's instances equal to Triton's instance group, and enough
gateway CPU for its workers (values-gpu.yaml, the H100 example)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from serving.repository.config import TENSORRT_CACHE, parse_config
from serving.settings import Settings
from tests.helm.conftest import all_problems

ROOT = Path(__file__).resolve().parents[2]
GPU_VALUES = ROOT / "helm" / "rankserve" / "values-gpu.yaml"
CONFIG = ROOT / "model_repository" / "feed_ranker" / "config.pbtxt"


def gateway_settings(rendered: Any) -> dict[str, Any]:
    config = rendered.one("ConfigMap", "-gateway-config")["data"]["config.yaml"]
    settings: dict[str, Any] = yaml.safe_load(config)
    return settings


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_the_h100_example_renders_valid_gpu_pods(render: Any) -> None:
    rendered = render("-f", str(GPU_VALUES))
    assert all_problems(rendered.docs) == []
    pod = rendered.one("Deployment", "-triton")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    triton = rendered.container("-triton", "triton")
    mounts = {m["name"]: m["mountPath"] for m in triton["volumeMounts"]}
    assert mounts["tensorrt-cache"] == TENSORRT_CACHE
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tensorrt-cache"]["persistentVolumeClaim"]["claimName"] == "tensorrt-engines"
    settings = gateway_settings(rendered)
    assert settings["profile"] == "gpu"
    loaded = Settings.load(None, **settings)  # the gateway accepts what the chart writes
    assert loaded.batch_rows == 8192
    assert loaded.buckets
    gateway = rendered.container("-triton", "gateway")
    assert cpu_cores(gateway["resources"]["requests"]["cpu"]) >= settings["workers"]


def test_gateway_instances_follow_tritons_instance_group(render: Any) -> None:
    (group,) = parse_config(CONFIG).instance_group
    default = render()
    assert gateway_settings(default)["instances"] == group.count  # values.yaml matches
    assert gateway_settings(render("-f", str(GPU_VALUES)))["instances"] == group.count
    assert gateway_settings(render("--set", "triton.instanceCount=4"))["instances"] == 4


def test_without_a_claim_the_engine_cache_is_an_empty_dir(render: Any) -> None:
    rendered = render("--set", "triton.tensorrtCache.sizeLimit=8Gi")
    volumes = {v["name"]: v for v in
               rendered.one("Deployment", "-triton")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tensorrt-cache"] == {"name": "tensorrt-cache",
                                         "emptyDir": {"sizeLimit": "8Gi"}}
    off = render("--set", "triton.tensorrtCache.enabled=false")
    pod = off.one("Deployment", "-triton")["spec"]["template"]["spec"]
    assert "tensorrt-cache" not in {v["name"] for v in pod["volumes"]}
    assert "runtimeClassName" not in pod
