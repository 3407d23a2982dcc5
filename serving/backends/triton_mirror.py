"""Generate the python-backend mirror of a model repository for the local ``tritonserver``.

The committed ``model_repository/`` is the production one: ``platform: "onnxruntime_onnx"``
with GPU instances. The ``tritonserver`` inside the ``nvidia-pytriton`` wheel has only the
python backend, so ``rankserve triton`` serves a mirror: for every ONNX model the same
``config.pbtxt`` (same tensor names, dtypes, shapes and ``max_batch_size``) with the backend
switched to ``python`` and CPU instances, the same ``model.onnx`` (linked, not copied), and
:mod:`serving.backends.triton_python_model` as ``model.py``. Clients cannot tell the
difference except by speed.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.errors import ModelCardError
from serving.repository.config import parse_config

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
ONNX_PLATFORMS = frozenset({"onnxruntime_onnx"})


def mirror_config(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """The python-backend twin of an onnxruntime config: same signature, CPU instances."""
    mirrored = model_config_pb2.ModelConfig()
    mirrored.CopyFrom(config)
    mirrored.platform = ""
    mirrored.backend = "python"
    mirrored.ClearField("optimization")  # execution accelerators (TensorRT) mean nothing here
    mirrored.ClearField("model_warmup")
    del mirrored.instance_group[:]
    count = sum(max(g.count, 1) for g in config.instance_group) or 1
    group = mirrored.instance_group.add()
    group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
    group.count = min(count, os.cpu_count() or 1)
    return mirrored


def _is_onnx_model(config: model_config_pb2.ModelConfig) -> bool:
    return config.platform in ONNX_PLATFORMS or config.backend == "onnxruntime"


def build_mirror(source: Path, target: Path) -> list[str]:
    """Write the mirror of ``source`` into the (empty or absent) directory ``target``.

    Returns the names of the mirrored models; models that are not ONNX are skipped with a
    logged reason.

    Raises:
        ModelCardError: a config.pbtxt does not parse, or the repository holds no ONNX model.
    """
    target.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for model_dir in sorted(p for p in source.iterdir() if (p / CONFIG_FILE).is_file()):
        config = parse_config(model_dir / CONFIG_FILE)
        if not _is_onnx_model(config):
            log.info("not mirroring %s: platform %r is not ONNX", model_dir.name,
                     config.platform or config.backend)
            continue
        versions = [v for v in model_dir.iterdir()
                    if v.name.isdigit() and (v / ONNX_FILE).is_file()]
        if not versions:
            log.info("not mirroring %s: no <version>/%s", model_dir.name, ONNX_FILE)
            continue
        out_dir = target / model_dir.name
        out_dir.mkdir()
        (out_dir / CONFIG_FILE).write_text(text_format.MessageToString(mirror_config(config)))
        for version in versions:
            (out_dir / version.name).mkdir()
            (out_dir / version.name / ONNX_FILE).symlink_to((version / ONNX_FILE).resolve())
            shutil.copyfile(PYTHON_MODEL, out_dir / version.name / "model.py")
        names.append(model_dir.name)
    if not names:
        raise ModelCardError(f"no ONNX model with a {CONFIG_FILE} in {source}", field=str(source))
    return names
