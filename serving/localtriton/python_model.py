"""The ``model.py`` of the python-backend mirror that ``rankserve triton`` serves.

The ``nvidia-pytriton`` wheel ships a real ``tritonserver`` but no onnxruntime backend, so
the local server runs each ONNX model of ``model_repository/`` through ONNX Runtime inside
Triton's python backend. This file is copied verbatim next to the model's ``model.onnx`` in
the generated mirror; it runs in the Triton environment (``.venv-triton``), never in the
gateway's, and imports nothing from ``serving``.

Tensor names and dtypes come from the model's ``config.pbtxt`` (the same as the production
config), so a client sees exactly the signature the onnxruntime platform would expose.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One ONNX Runtime session per model instance (Triton runs each in its own process)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        # Triton runs one process per instance; each uses one core like the gateway's sessions.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score each request on its own; a failure answers that request with an error."""
        responses = []
        for request in requests:
            try:
                feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                         for name in self.input_names}
                values = self.session.run(self.output_names, feeds)
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value))
                           for name, value in zip(self.output_names, values, strict=True)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as e:  # reported to this request's client, not raised
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
        return responses

    def finalize(self) -> None:
        self.session = None
