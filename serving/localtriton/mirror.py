"""Generate the python-backend mirror of a model repository for the local ``tritonserver``.

The committed ``model_repository/`` is the production one: ``platform: "onnxruntime_onnx"``
with GPU instances. The ``tritonserver`` inside the ``nvidia-pytriton`` wheel has only the
python backend, so ``rankserve triton`` serves a mirror: for every ONNX model the same
``config.pbtxt`` (same tensor names, dtypes, shapes and ``max_batch_size``) with the backend
switched to ``python`` and CPU instances, the same ``model.onnx`` (linked, not copied), and
:mod:`serving.localtriton.python_model` as ``model.py``. Clients cannot tell the
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
from serving.repository.card import ONNX_FILE
from serving.repository.config import CONFIG_FILE, parse_config
from serving.repository.versions import servable_model_dirs, versions_on_disk

log = logging.getLogger(__name__)

PYTHON_MODEL = Path(__file__).with_name("python_model.py")
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
    for model_dir in servable_model_dirs(source):
        config = parse_config(model_dir / CONFIG_FILE)
        if not _is_onnx_model(config):
            log.info("not mirroring %s: platform %r is not ONNX", model_dir.name,
                     config.platform or config.backend)
            continue
        versions = versions_on_disk(model_dir, ONNX_FILE)
        if not versions:
            log.info("not mirroring %s: no <version>/%s", model_dir.name, ONNX_FILE)
            continue
        out_dir = target / model_dir.name
        out_dir.mkdir()
        (out_dir / CONFIG_FILE).write_text(text_format.MessageToString(mirror_config(config)))
        for version in versions:
            folder = out_dir / str(version)
            folder.mkdir()
            (folder / ONNX_FILE).symlink_to((model_dir / str(version) / ONNX_FILE).resolve())
            shutil.copyfile(PYTHON_MODEL, folder / "model.py")
        names.append(model_dir.name)
    if not names:
        raise ModelCardError(f"no ONNX model with a {CONFIG_FILE} in {source}", field=str(source))
    return names
