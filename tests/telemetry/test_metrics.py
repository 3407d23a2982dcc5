"""Metrics live on the app's own registry; GPU telemetry is silent without a GPU."""

from __future__ import annotations

import json
import logging

import pytest

from serving.telemetry.gpu import GpuCollector
from serving.telemetry.logs import JsonFormatter, TextFormatter, configure_logging, request_id_var
from serving.telemetry.metrics import Metrics

NAMES = ("rankserve_request_latency_seconds", "rankserve_queue_wait_seconds",
         "rankserve_batch_rows", "rankserve_backend_latency_seconds", "rankserve_queue_rows",
         "rankserve_inflight_batches", "rankserve_shed_total",
         "rankserve_deadline_exceeded_total", "rankserve_latency_model_error_seconds")


def test_two_instances_coexist_and_expose_every_metric() -> None:
    first, second = Metrics(), Metrics()
    first.shed.inc()
    first.request_latency.labels("/v1/rank", "200", "2xx", "feed_ranker", "1").observe(0.004)
    first.backend_latency.labels("onnxruntime").observe(0.002)
    first.latency_model_error.labels("onnxruntime").observe(0.0001)
    first.batch_rows.labels("feed_ranker").observe(300)
    text = first.render().decode()
    for name in NAMES:
        assert name in text, name
    assert first.registry.get_sample_value("rankserve_shed_total") == 1
    assert second.registry.get_sample_value("rankserve_shed_total") == 0
    assert first.registry.get_sample_value(
        "rankserve_request_latency_seconds_bucket",
        {"route": "/v1/rank", "status": "200", "status_class": "2xx", "model": "feed_ranker",
         "version": "1", "le": "0.005"}) == 1


def test_gpu_collector_reports_only_real_gpus() -> None:
    metrics = Metrics()
    collector = GpuCollector()
    metrics.register(collector)
    text = metrics.render().decode()  # never raises, GPU or not
    if collector.available:
        assert 'rankserve_gpu_utilization_ratio{gpu="0"}' in text
        assert "rankserve_gpu_memory_used_bytes" in text
    else:
        assert "rankserve_gpu_utilization_ratio{" not in text
    collector.close()
    collector.close()  # safe twice


def test_json_logs_carry_the_request_id_and_extras() -> None:
    record = logging.LogRecord("rankserve.access", logging.INFO, __file__, 1, "POST %s",
                               ("/v1/rank",), None)
    record.status = 200
    token = request_id_var.set("req-7")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert entry["msg"] == "POST /v1/rank"
    assert entry["request_id"] == "req-7"
    assert entry["status"] == 200
    assert entry["level"] == "INFO"


def test_text_logs_are_readable_lines_with_the_same_fields() -> None:
    record = logging.LogRecord("rankserve.serve", logging.WARNING, __file__, 1,
                               "listening on %s", ("http://127.0.0.1:8000",), None)
    record.backend = "embedded"
    token = request_id_var.set("req-9")
    try:
        line = TextFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert "WARNING rankserve.serve: listening on http://127.0.0.1:8000" in line
    assert line.endswith("backend=embedded  [req-9]")
    assert not line.startswith("{")


def test_log_format_auto_is_json_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info", "auto")  # stderr is captured: not a terminal
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        configure_logging("INFO", "text")
        assert isinstance(root.handlers[0].formatter, TextFormatter)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
