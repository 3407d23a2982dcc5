"""What a tensor of a served model is: one spec type, one dtype table, one comparison.

A model's tensors are described in four places (the ONNX graph, ``config.pbtxt``, the model
card and Triton's metadata), each with its own dtype spelling. Everything is converted to
:class:`TensorSpec` in the KServe v2 spelling (``FP32``, ``INT64``) at the edge, so the
check of one against another (:func:`differences`) is written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from tritonclient.grpc import model_config_pb2 as mc


@dataclass(frozen=True)
class Dtype:
    """One element type in each spelling rankserve meets it in."""

    wire: str
    """KServe v2 / Triton metadata spelling, e.g. ``FP32``."""
    numpy: np.dtype[Any]
    config: int
    """``model_config_pb2.DataType`` value, e.g. ``TYPE_FP32``."""
    onnx: int
    """``onnx.TensorProto`` element type."""

    @property
    def config_name(self) -> str:
        return str(mc.DataType.Name(self.config))


_P = onnx.TensorProto
DTYPES: tuple[Dtype, ...] = (
    Dtype("BOOL", np.dtype(np.bool_), mc.TYPE_BOOL, _P.BOOL),
    Dtype("UINT8", np.dtype(np.uint8), mc.TYPE_UINT8, _P.UINT8),
    Dtype("UINT16", np.dtype(np.uint16), mc.TYPE_UINT16, _P.UINT16),
    Dtype("UINT32", np.dtype(np.uint32), mc.TYPE_UINT32, _P.UINT32),
    Dtype("UINT64", np.dtype(np.uint64), mc.TYPE_UINT64, _P.UINT64),
    Dtype("INT8", np.dtype(np.int8), mc.TYPE_INT8, _P.INT8),
    Dtype("INT16", np.dtype(np.int16), mc.TYPE_INT16, _P.INT16),
    Dtype("INT32", np.dtype(np.int32), mc.TYPE_INT32, _P.INT32),
    Dtype("INT64", np.dtype(np.int64), mc.TYPE_INT64, _P.INT64),
    Dtype("FP16", np.dtype(np.float16), mc.TYPE_FP16, _P.FLOAT16),
    Dtype("FP32", np.dtype(np.float32), mc.TYPE_FP32, _P.FLOAT),
    Dtype("FP64", np.dtype(np.float64), mc.TYPE_FP64, _P.DOUBLE),
)
"""The dtypes rankserve serves; strings (``BYTES``) are not among them."""

BY_WIRE = {d.wire: d for d in DTYPES}
BY_CONFIG = {d.config: d for d in DTYPES}
BY_ONNX = {d.onnx: d for d in DTYPES}
BY_NUMPY = {d.numpy: d for d in DTYPES}


def wire_of_config(config_type: int) -> str:
    """The wire spelling of a config ``DataType``; unknown ones keep their enum name."""
    known = BY_CONFIG.get(config_type)
    return known.wire if known else str(mc.DataType.Name(config_type))


def wire_of_onnx(elem_type: int) -> str:
    """The wire spelling of an ONNX element type; unknown ones are named ``onnx:<n>``."""
    known = BY_ONNX.get(elem_type)
    return known.wire if known else f"onnx:{elem_type}"


def wire_of_numpy(dtype: np.dtype[Any]) -> str:
    """The wire spelling of a numpy dtype.

    Raises:
        KeyError: a dtype rankserve does not serve.
    """
    return BY_NUMPY[np.dtype(dtype)].wire


def config_spelling(wire: str) -> str:
    """``TYPE_FP32`` for ``FP32``: how ``config.pbtxt`` and its error messages say it."""
    known = BY_WIRE.get(wire)
    return known.config_name if known else wire


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, wire dtype and shape (-1 for a dynamic dim).

    Where a model is batched (``max_batch_size > 0``) the shape includes the batch dim.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of the tensor.

        Raises:
            KeyError: a dtype rankserve does not serve.
        """
        return BY_WIRE[self.dtype].numpy

    def describe(self) -> str:
        return f"{self.dtype} {list(self.shape)}"

    def to_metadata(self) -> dict[str, object]:
        """The KServe v2 model-metadata entry."""
        return {"name": self.name, "datatype": self.dtype, "shape": list(self.shape)}

    def to_card(self) -> dict[str, object]:
        """The model card's JSON entry."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_card(cls, entry: Mapping[str, Any]) -> TensorSpec:
        return cls(entry["name"], entry["dtype"], tuple(entry["shape"]))


def specs_by_name(specs: Iterable[TensorSpec]) -> dict[str, TensorSpec]:
    return {s.name: s for s in specs}


@dataclass(frozen=True)
class Difference:
    """One way a signature differs from the one it should match."""

    kind: str
    """``input`` or ``output``."""
    name: str
    got: TensorSpec | None
    """None: the tensor is missing."""
    want: TensorSpec | None
    """None: the tensor should not be there."""


def differences(kind: str, expected: Mapping[str, TensorSpec],
                actual: Mapping[str, TensorSpec]) -> list[Difference]:
    """Every way ``actual`` differs from ``expected``: extra tensors, missing ones, then
    those whose dtype or shape differ, each group by name. Callers word them for their
    audience (a repository file, a Triton server)."""
    out = [Difference(kind, n, actual[n], None) for n in sorted(actual.keys() - expected.keys())]
    out += [Difference(kind, n, None, expected[n])
            for n in sorted(expected.keys() - actual.keys())]
    out += [Difference(kind, n, actual[n], expected[n])
            for n in sorted(expected.keys() & actual.keys())
            if (actual[n].dtype, actual[n].shape) != (expected[n].dtype, expected[n].shape)]
    return out
