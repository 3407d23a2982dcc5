"""tritonclient request objects, built once per (model, tensor) and reused on every call."""

from __future__ import annotations

from tritonclient.grpc import InferInput, InferRequestedOutput


class RequestObjects:
    """Reusable ``InferInput`` / ``InferRequestedOutput`` objects.

    Building them per batch is pure overhead on the hot path; each call only resets their
    shape and data (or shared-memory binding), so one object per tensor is enough.
    """

    def __init__(self) -> None:
        self._inputs: dict[tuple[str, str, str], InferInput] = {}
        self._outputs: dict[tuple[str, str], InferRequestedOutput] = {}

    def input(self, model: str, name: str, datatype: str) -> InferInput:
        key = (model, name, datatype)
        if key not in self._inputs:
            self._inputs[key] = InferInput(name, [0], datatype)
        return self._inputs[key]

    def output(self, model: str, name: str) -> InferRequestedOutput:
        if (model, name) not in self._outputs:
            self._outputs[(model, name)] = InferRequestedOutput(name)
        return self._outputs[(model, name)]
