"""Providers load or refuse loudly; their options are data from the settings.

Real ONNX Runtime (this environment's build, the CPU wheel): a GPU provider asked for
first and missing makes the backend refuse to start with the reason; the built-in list
serves on the CPU and says so for each provider it skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort
import pytest

from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.backends.ort_providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderPlan,
    provider_options,
    why_not_loaded,
)
from serving.errors import Unavailable
from serving.settings import Settings, default
from tests.batching.tiny_models import GATHER_ADD_CONFIG, gather_add, write_model

CPU_BUILD = CUDA not in ort.get_available_providers()
cpu_build_only = pytest.mark.skipif(not CPU_BUILD, reason="needs ONNX Runtime's CPU build")


@pytest.fixture
def model(tmp_path: Path) -> dict[str, Path]:
    return {"gather_add": write_model(tmp_path, "gather_add", gather_add(), GATHER_ADD_CONFIG)}


@cpu_build_only
async def test_a_gpu_provider_asked_for_first_and_missing_refuses_to_start(
        model: dict[str, Path]) -> None:
    backend = OnnxRuntimeBackend(model, plan=ProviderPlan((CUDA, CPU)))
    with pytest.raises(Unavailable) as refused:
        await backend.start()
    message = refused.value.message
    assert "CUDAExecutionProvider" in message
    assert "not in this ONNX Runtime build" in message
    assert ort.__version__ in message
    assert not backend.healthy()
    await backend.aclose()


@cpu_build_only
async def test_the_built_in_list_on_a_cpu_build_serves_on_cpu_and_warns(
        model: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="serving.backends.ort_providers")
    backend = OnnxRuntimeBackend(model, instances=2)
    await backend.start()
    try:
        assert backend.healthy()
        assert backend.session_providers() == {"gather_add": [[CPU], [CPU]]}
    finally:
        await backend.aclose()
    for provider in (TENSORRT, CUDA):
        assert any(r.levelno == logging.WARNING and provider in r.getMessage()
                   and "not in this ONNX Runtime build" in r.getMessage()
                   for r in caplog.records), provider


@cpu_build_only
async def test_with_cpu_allowed_it_serves_and_reports_the_cpu(
        model: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="serving.backends.ort_providers")
    backend = OnnxRuntimeBackend(model, plan=ProviderPlan((CUDA, CPU), "none"))
    await backend.start()
    try:
        assert backend.providers("gather_add") == [CPU]
    finally:
        await backend.aclose()
    assert any(CUDA in r.getMessage() for r in caplog.records)


@cpu_build_only
async def test_require_all_refuses_a_missing_provider_anywhere_in_the_list(
        model: dict[str, Path]) -> None:
    lenient = OnnxRuntimeBackend(model, plan=ProviderPlan((CPU, CUDA)))
    await lenient.start()  # auto: the CPU comes first, nothing required
    await lenient.aclose()
    strict = OnnxRuntimeBackend(model, plan=ProviderPlan((CPU, CUDA), "all"))
    with pytest.raises(Unavailable, match="CUDAExecutionProvider"):
        await strict.start()
    await strict.aclose()


def test_auto_requires_a_gpu_when_one_is_asked_for_first() -> None:
    built_in = tuple(default("providers"))
    assert ProviderPlan((CUDA, CPU)).mode == "gpu"
    assert ProviderPlan((TENSORRT, CUDA)).mode == "gpu"
    assert ProviderPlan((CPU, CUDA)).mode == "none"
    assert ProviderPlan((CPU,)).mode == "none"
    assert ProviderPlan(built_in).mode == ("none" if CPU_BUILD else "gpu")
    assert ProviderPlan(built_in, "gpu").mode == "gpu"
    assert ProviderPlan((CUDA, CPU), "none").mode == "none"


def test_the_reason_names_the_build_for_a_provider_it_lacks() -> None:
    reason = why_not_loaded("NoSuchExecutionProvider")
    assert "not in this ONNX Runtime build" in reason
    assert all(p in reason for p in ort.get_available_providers())


def test_provider_options_default_to_fp32_and_device_0() -> None:
    options = provider_options(Settings())
    assert options[CUDA] == {"device_id": "0", "use_tf32": "0", "enable_cuda_graph": "0",
                             "arena_extend_strategy": "kNextPowerOfTwo"}
    assert options[TENSORRT] == {"device_id": "0", "trt_fp16_enable": "0",
                                 "trt_cuda_graph_enable": "0"}


def test_provider_options_follow_the_settings(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSERVE_PROVIDER_OPTIONS",
                       '{"CUDAExecutionProvider": {"gpu_mem_limit": 8000000000, '
                       '"use_tf32": false}, '
                       '"TensorrtExecutionProvider": {"trt_max_workspace_size": "1073741824"}}')
    settings = Settings.load(None, cuda_device_id=1, cuda_tf32=True, cuda_graphs=True,
                             buckets="1024,2048", tensorrt_fp16=True,
                             tensorrt_cache_dir=str(tmp_path))  # graphs need buckets
    options = provider_options(settings)
    assert options[CUDA] == {"device_id": "1", "use_tf32": "false",  # the JSON wins
                             "enable_cuda_graph": "1",
                             "arena_extend_strategy": "kNextPowerOfTwo",
                             "gpu_mem_limit": "8000000000"}
    assert options[TENSORRT] == {
        "device_id": "1", "trt_fp16_enable": "1", "trt_cuda_graph_enable": "1",
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(tmp_path),
        "trt_max_workspace_size": "1073741824"}


def test_the_session_chain_carries_each_providers_options() -> None:
    plan = ProviderPlan((TENSORRT, CUDA, CPU), "none",
                        {CUDA: {"device_id": "3"}, TENSORRT: {"trt_fp16_enable": "1"}})
    names, options = plan.chain()
    assert names[-1] == CPU
    assert len(names) == len(options)
    for name, opts in zip(names, options, strict=True):
        assert opts == dict(plan.options.get(name, {}))
    assert [n for n in names if n != CPU] == [p for p in (TENSORRT, CUDA)
                                              if p in ort.get_available_providers()]


def test_from_settings_passes_the_plan_to_the_backend() -> None:
    settings = Settings(providers=[CUDA, CPU], require_providers="all", cuda_device_id=2)
    plan = ProviderPlan.from_settings(settings)
    assert plan.requested == (CUDA, CPU)
    assert plan.mode == "all"
    assert plan.options[CUDA]["device_id"] == "2"


def test_tensorrt_profiles_come_from_the_buckets_as_in_config_pbtxt() -> None:
    from serving.backends.ort_providers import tensorrt_profile
    from serving.repository.config import parse_config
    from serving.settings import PROFILES

    model_dir = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker"
    gpu = PROFILES["gpu"]
    profile = tensorrt_profile(model_dir / "1" / "model.onnx", gpu["buckets"],
                               gpu["user_buckets"])
    (trt,) = parse_config(model_dir / "config.pbtxt").optimization \
        .execution_accelerators.gpu_execution_accelerator
    assert profile == {k: trt.parameters[k] for k in profile}  # embedded = Triton's engine
    assert set(profile) == {"trt_profile_min_shapes", "trt_profile_opt_shapes",
                            "trt_profile_max_shapes"}
    assert tensorrt_profile(model_dir / "1" / "model.onnx", [], []) == {}  # no buckets
