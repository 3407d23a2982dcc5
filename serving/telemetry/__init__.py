"""Prometheus metrics, GPU telemetry and structured logs; a leaf every other part imports."""
