"""Bound I/O for one ONNX Runtime session: packed, pre-allocated buffers per batch shape.

``session.run`` allocates every input copy and every output on each call, and on a GPU
copies each input from pageable memory on its own. A :class:`BoundRunner` keeps, per input
signature (names, shapes, dtypes: with shape buckets, one per bucket), one packed host
buffer (page-locked where the device is CUDA, so the copy is a real DMA), one device
buffer of the same size, every input bound at its offset in the device buffer, and the
output buffers ONNX Runtime allocated on the first run of that shape, bound once. A batch
then costs one copy of each input into the host buffer, ONE host-to-device copy of the
whole packed buffer (``OrtValue.update_inplace``), the run, and one copy of each output
back to the host.

Fixed buffer addresses are also what CUDA graphs need: with ``graphs`` on, each shape
gets its own graph id (ONNX Runtime's ``gpu_graph_id`` run option), so the CUDA and
TensorRT providers capture one graph per bucket and replay it. The same code runs on CPU
``OrtValue`` s (the "device" buffer is then host memory), which is how the tests check it
against ``session.run``.

Only a few shapes are kept (least recently used first out): with buckets the set is small
and fixed; without them every new batch size would otherwise pin memory. Graph ids are
never reused: a shape seen after ``shapes`` graphs were handed out runs without a graph.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, tuple[int, ...], str], ...]
ALIGN = 256
"""Byte alignment of each input inside the packed buffers (what CUDA kernels expect)."""
GRAPH_ID = "gpu_graph_id"
"""ONNX Runtime's run option naming the CUDA graph a run captures or replays (-1: none)."""
_CUDART = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


@dataclass
class _Bound:
    binding: ort.IOBinding
    host: np.ndarray  # the packed host buffer (uint8)
    device: ort.OrtValue  # the packed device buffer, same size
    views: dict[str, np.ndarray]  # each input's place in ``host``
    graph_id: int
    pinned: bool
    outputs_bound: bool = False


class BoundRunner:
    """Runs batches of one session through bound, packed I/O (see the module docstring).

    Not thread-safe: one runner belongs to one session, which one worker uses at a time.
    """

    def __init__(self, session: ort.InferenceSession, device: str = "cpu",
                 device_id: int = 0, shapes: int = 8, graphs: bool = False) -> None:
        self._session = session
        self._device = device
        self._device_id = device_id
        self._shapes = shapes
        self._graphs = graphs
        self._next_graph = 0
        self._outputs = [o.name for o in session.get_outputs()]
        self._bound: OrderedDict[Signature, _Bound] = OrderedDict()

    @property
    def cached_shapes(self) -> int:
        """How many batch shapes have buffers now."""
        return len(self._bound)

    @property
    def pinned(self) -> bool:
        """Whether every cached shape's host buffer is page-locked (CUDA only)."""
        return bool(self._bound) and all(b.pinned for b in self._bound.values())

    def graph_ids(self) -> dict[Signature, int]:
        """The CUDA graph id of each cached shape (-1: runs without a graph)."""
        return {key: b.graph_id for key, b in self._bound.items()}

    def run(self, inputs: Mapping[str, np.ndarray],
            options: ort.RunOptions | None = None) -> dict[str, np.ndarray]:
        """One batch; outputs are host arrays of their own (never views of the buffers).

        Raises:
            Exception: whatever ONNX Runtime raises for a bad batch (its own error types).
        """
        bound = self._buffers(inputs)
        for name, value in inputs.items():
            np.copyto(bound.views[name], value, casting="no")
        bound.device.update_inplace(bound.host)  # the one host-to-device copy
        if self._graphs:
            options = options or ort.RunOptions()
            options.add_run_config_entry(GRAPH_ID, str(bound.graph_id))
        self._session.run_with_iobinding(bound.binding, options)
        values = bound.binding.get_outputs()
        if not bound.outputs_bound:  # bind what ORT allocated on this shape's first run
            for name, value in zip(self._outputs, values, strict=True):
                bound.binding.bind_ortvalue_output(name, value)
            bound.outputs_bound = True
        return {name: np.array(value.numpy(), copy=True)
                for name, value in zip(self._outputs, values, strict=True)}

    def _buffers(self, inputs: Mapping[str, np.ndarray]) -> _Bound:
        key: Signature = tuple(sorted((n, tuple(a.shape), a.dtype.str)
                                      for n, a in inputs.items()))
        bound = self._bound.get(key)
        if bound is not None:
            self._bound.move_to_end(key)
            return bound
        offsets, size = {}, 0
        for name, shape, dtype in key:
            offsets[name] = size
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            size += -(-max(nbytes, 1) // ALIGN) * ALIGN
        host, pinned = _host_buffer(size, self._device == "cuda")
        device = ort.OrtValue.ortvalue_from_shape_and_type(
            [size], np.uint8, self._device, self._device_id)
        binding = self._session.io_binding()
        views = {}
        for name, shape, dtype in key:
            count = int(np.prod(shape, dtype=np.int64))
            start = offsets[name]
            views[name] = host[start:start + count * np.dtype(dtype).itemsize] \
                .view(dtype).reshape(shape)
            binding.bind_input(name, self._device, self._device_id, np.dtype(dtype).type,
                               list(shape), device.data_ptr() + start)
        for name in self._outputs:
            binding.bind_output(name, self._device, self._device_id)
        graph_id = -1
        if self._graphs and self._next_graph < self._shapes:
            graph_id, self._next_graph = self._next_graph, self._next_graph + 1
        bound = _Bound(binding, host, device, views, graph_id, pinned)
        self._bound[key] = bound
        while len(self._bound) > self._shapes:
            self._bound.popitem(last=False)
        return bound


def _host_buffer(size: int, pin: bool) -> tuple[np.ndarray, bool]:
    """A ``size``-byte host buffer; page-locked (``cudaHostRegister``) when ``pin``, so the
    host-to-device copy is one DMA instead of a staged copy. Falls back to pageable memory
    (with a warning) where the CUDA runtime cannot be found or refuses."""
    host = np.zeros(max(size, 1), dtype=np.uint8)
    if not pin:
        return host, False
    cudart = _cudart()
    if cudart is None:
        return host, False
    pointer = ctypes.c_void_p(host.ctypes.data)
    status = cudart.cudaHostRegister(pointer, ctypes.c_size_t(host.nbytes), 0)
    if status != 0:
        log.warning("cudaHostRegister failed (error %d): bound I/O copies from pageable "
                    "memory", status)
        return host, False
    weakref.finalize(host, cudart.cudaHostUnregister, pointer)
    return host, True


_cudart_lib: ctypes.CDLL | None = None
_cudart_tried = False


def _cudart() -> ctypes.CDLL | None:
    """The CUDA runtime library ONNX Runtime's CUDA provider loaded (once per process)."""
    global _cudart_lib, _cudart_tried
    if not _cudart_tried:
        _cudart_tried = True
        for name in _CUDART:
            try:
                _cudart_lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            log.warning("no CUDA runtime library found (%s): bound I/O copies from pageable "
                        "memory", ", ".join(_CUDART))
    return _cudart_lib
