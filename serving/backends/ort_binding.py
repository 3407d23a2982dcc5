"""Bound I/O for one ONNX Runtime session, with buffers kept per batch shape.

``session.run`` allocates every input copy and every output on each call. A
:class:`BoundRunner` keeps, per input signature (names, shapes, dtypes), one set of
input buffers on the session's device and the output buffers ONNX Runtime allocated on
the first run of that shape, all bound once to one ``IOBinding``; a batch then costs one
copy into each input buffer (``OrtValue.update_inplace``) and one copy of each output back
to the host. Fixed buffer addresses are also what CUDA graphs need. The same code runs on
CPU ``OrtValue`` s, which is how the tests check it against ``session.run``.

Only a few shapes are kept (least recently used first out): with shape buckets the set
is small and fixed; without them every new batch size would otherwise pin memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

Signature = tuple[tuple[str, tuple[int, ...], str], ...]


@dataclass
class _Bound:
    binding: ort.IOBinding
    inputs: dict[str, ort.OrtValue]
    outputs_bound: bool = False


class BoundRunner:
    """Runs batches of one session through I/O binding (see the module docstring).

    Not thread-safe: one runner belongs to one session, which one worker uses at a time.
    """

    def __init__(self, session: ort.InferenceSession, device: str = "cpu",
                 device_id: int = 0, shapes: int = 8) -> None:
        self._session = session
        self._device = device
        self._device_id = device_id
        self._shapes = shapes
        self._outputs = [o.name for o in session.get_outputs()]
        self._bound: OrderedDict[Signature, _Bound] = OrderedDict()

    @property
    def cached_shapes(self) -> int:
        """How many batch shapes have buffers now."""
        return len(self._bound)

    def run(self, inputs: Mapping[str, np.ndarray],
            options: ort.RunOptions | None = None) -> dict[str, np.ndarray]:
        """One batch; outputs are host arrays of their own (never views of the buffers).

        Raises:
            Exception: whatever ONNX Runtime raises for a bad batch (its own error types).
        """
        arrays = {name: np.ascontiguousarray(value) for name, value in inputs.items()}
        bound = self._buffers(arrays)
        for name, array in arrays.items():
            bound.inputs[name].update_inplace(array)
        self._session.run_with_iobinding(bound.binding, options)
        values = bound.binding.get_outputs()
        if not bound.outputs_bound:  # bind what ORT allocated on this shape's first run
            for name, value in zip(self._outputs, values, strict=True):
                bound.binding.bind_ortvalue_output(name, value)
            bound.outputs_bound = True
        return {name: np.array(value.numpy(), copy=True)
                for name, value in zip(self._outputs, values, strict=True)}

    def _buffers(self, arrays: Mapping[str, np.ndarray]) -> _Bound:
        key: Signature = tuple(sorted((n, a.shape, a.dtype.str) for n, a in arrays.items()))
        bound = self._bound.get(key)
        if bound is not None:
            self._bound.move_to_end(key)
            return bound
        binding = self._session.io_binding()
        buffers = {}
        for name, array in arrays.items():
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                array.shape, array.dtype, self._device, self._device_id)
            binding.bind_ortvalue_input(name, value)
            buffers[name] = value
        for name in self._outputs:
            binding.bind_output(name, self._device, self._device_id)
        bound = _Bound(binding, buffers)
        self._bound[key] = bound
        while len(self._bound) > self._shapes:
            self._bound.popitem(last=False)
        return bound
