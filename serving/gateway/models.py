"""The served models: what a Triton-layout repository holds, as the gateway needs it.

Each model directory with a ``config.pbtxt`` and numbered version folders holding an ONNX
file is served at the versions its ``version_policy`` selects (:mod:`serving.rollout`).
A model card beside the ONNX file makes the model rankable (``/v1/rank``). The tensor
signature comes from ``config.pbtxt``, as in Triton, and decides how requests batch: the
ranker's per-request/per-candidate layout, a ``max_batch_size > 0`` model's row-wise
layout, or no merging at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from serving.batching.layout import CandidateLayout, Layout, WholeLayout
from serving.errors import ModelCardError
from serving.ranking.features import ITEM_INPUTS, ITEM_TO_USER, MODEL_INPUTS, USER_INPUTS
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard
from serving.repository.config import CONFIG_FILE, parse_config

# Triton config dtype -> (KServe wire name, numpy dtype). BYTES/strings are not served.
DTYPES: dict[int, tuple[str, np.dtype[np.generic]]] = {
    mc.TYPE_BOOL: ("BOOL", np.dtype(np.bool_)),
    mc.TYPE_UINT8: ("UINT8", np.dtype(np.uint8)),
    mc.TYPE_UINT16: ("UINT16", np.dtype(np.uint16)),
    mc.TYPE_UINT32: ("UINT32", np.dtype(np.uint32)),
    mc.TYPE_UINT64: ("UINT64", np.dtype(np.uint64)),
    mc.TYPE_INT8: ("INT8", np.dtype(np.int8)),
    mc.TYPE_INT16: ("INT16", np.dtype(np.int16)),
    mc.TYPE_INT32: ("INT32", np.dtype(np.int32)),
    mc.TYPE_INT64: ("INT64", np.dtype(np.int64)),
    mc.TYPE_FP16: ("FP16", np.dtype(np.float16)),
    mc.TYPE_FP32: ("FP32", np.dtype(np.float32)),
    mc.TYPE_FP64: ("FP64", np.dtype(np.float64)),
}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output as clients see it: shape includes the batch dim when batched."""

    name: str
    datatype: str
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: int
    onnx_path: Path
    config: mc.ModelConfig
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    card: ModelCard | None

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size)

    def layout(self) -> Layout:
        """How this model's requests merge into batches (see the module docstring)."""
        names = {t.name for t in self.inputs}
        if self.max_batch_size > 0:
            return CandidateLayout((), tuple(t.name for t in self.inputs))
        if names == set(MODEL_INPUTS):
            return CandidateLayout(USER_INPUTS, (*ITEM_INPUTS,), ITEM_TO_USER)
        return WholeLayout()


def _tensors(entries: list[mc.ModelInput] | list[mc.ModelOutput], batched: bool,
             where: str) -> tuple[TensorInfo, ...]:
    out = []
    for entry in entries:
        if entry.data_type not in DTYPES:
            raise ModelCardError(f"{where}: tensor '{entry.name}' has a datatype the gateway "
                                 f"does not serve ({mc.DataType.Name(entry.data_type)})",
                                 field=entry.name)
        wire, dtype = DTYPES[entry.data_type]
        dims = tuple(int(d) for d in entry.dims)
        out.append(TensorInfo(entry.name, wire, dtype, (-1, *dims) if batched else dims))
    return tuple(out)


def model_versions(model_dir: Path) -> tuple[mc.ModelConfig, list[int]]:
    """A model directory's config and the versions on disk (folders holding the ONNX
    file), ascending.

    Raises:
        ModelCardError: no config, no version with an ONNX file, or a name mismatch.
    """
    config = parse_config(model_dir / CONFIG_FILE)
    if config.name and config.name != model_dir.name:
        raise ModelCardError(f"{model_dir}: config name '{config.name}' differs from the "
                             f"directory name", field="name")
    filename = config.default_model_filename or ONNX_FILE
    versions = sorted(int(p.name) for p in model_dir.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / filename).is_file())
    if not versions:
        raise ModelCardError(f"{model_dir}: no version folder holds {filename}",
                             field=str(model_dir))
    return config, versions


def load_model(model_dir: Path, version: int | None = None) -> ServedModel:
    """Read one model directory at ``version`` (default: the newest on disk).

    Raises:
        ModelCardError: no config, no such version, or an unservable config.
    """
    config, versions = model_versions(model_dir)
    name = model_dir.name
    version = versions[-1] if version is None else version
    if version not in versions:
        raise ModelCardError(f"{model_dir}: no version {version} on disk (have {versions})",
                             field="version")
    version_dir = model_dir / str(version)
    card_path = version_dir / CARD_FILE
    card = ModelCard.load(card_path) if card_path.is_file() else None
    batched = config.max_batch_size > 0
    filename = config.default_model_filename or ONNX_FILE
    return ServedModel(name, version, version_dir / filename, config,
                       _tensors(list(config.input), batched, str(model_dir)),
                       _tensors(list(config.output), batched, str(model_dir)), card)
