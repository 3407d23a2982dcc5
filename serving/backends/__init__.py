"""Scoring backends: embedded ONNX Runtime and Triton over gRPC, behind one interface."""
