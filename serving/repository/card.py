"""The model card: the JSON file beside each ``model.onnx`` that says what the model is.

It records the tasks (names and order of the ``probs`` columns), the tensor signature, the
feature schema (whole, as its schema file says it: docs/schema.md), the feature encoder's
fitted state, default value-model weights, the training data range, offline metrics (the
ranker's and the logistic-regression baseline's), the ONNX/PyTorch parity error, the opset
and the sha256 of the ONNX file. Training writes it; the gateway, ``check-repo`` and the
Triton backend read it. Only ``/v1/rank`` needs one: ``/v2`` serves any ONNX model in the
repository.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import ModelCardError
from serving.repository.tensors import TensorSpec

CARD_FILE = "model_card.json"
ONNX_FILE = "model.onnx"


@dataclass
class ModelCard:
    name: str
    version: int
    tasks: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    features: dict[str, Any]
    value_weights: dict[str, float]
    opset: int
    onnx_sha256: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)
    """The model's feature schema, whole (docs/schema.md); empty in a card written before
    schemas existed, whose ``features`` section then implies it."""

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read a card file.

        Raises:
            ModelCardError: the file is missing, not JSON, or lacks a field.
        """
        try:
            raw = json.loads(path.read_text())
            raw["inputs"] = [TensorSpec.from_card(t) for t in raw["inputs"]]
            raw["outputs"] = [TensorSpec.from_card(t) for t in raw["outputs"]]
            return cls(**raw)
        except FileNotFoundError:
            raise ModelCardError(f"model card not found: {path.name}", field=str(path)) from None
        except (ValueError, KeyError, TypeError) as e:
            raise ModelCardError(f"model card {path.name} is malformed: {e}",
                                 field=str(path)) from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=False) + "\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
