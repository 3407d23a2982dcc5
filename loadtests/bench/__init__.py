"""Benchmarks: gateway vs raw ONNX Runtime (``python -m loadtests.bench``), Triton hop, GPU."""
