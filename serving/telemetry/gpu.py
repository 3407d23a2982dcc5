"""GPU telemetry through NVML (pynvml), read at scrape time.

A collector rather than a background poller: values are fresh on every scrape and nothing
runs between scrapes. On machines without a GPU or without the NVML library the collector
yields nothing and logs the reason once at debug level; it never fails a scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class GpuCollector(Collector):
    """Utilization, memory, power and temperature per GPU, labelled by GPU index."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as e:  # no driver, no library, no GPU: all mean "nothing to report"
            log.debug("GPU telemetry off: %s", e)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            finally:
                self._nvml = None

    def collect(self) -> Iterator[Metric]:
        if self._nvml is None:
            return
        families = {
            "util": GaugeMetricFamily("rankserve_gpu_utilization_ratio",
                                      "GPU busy fraction over the last sample period.",
                                      labels=["gpu"]),
            "mem": GaugeMetricFamily("rankserve_gpu_memory_used_bytes",
                                     "GPU memory in use.", labels=["gpu"]),
            "power": GaugeMetricFamily("rankserve_gpu_power_watts", "GPU power draw.",
                                       labels=["gpu"]),
            "temp": GaugeMetricFamily("rankserve_gpu_temperature_celsius",
                                      "GPU core temperature.", labels=["gpu"]),
        }
        try:
            self._sample(families)
        except Exception as e:  # a GPU that vanished mid-scrape must not fail /metrics
            log.debug("GPU telemetry read failed: %s", e)
        yield from families.values()

    def _sample(self, families: dict[str, GaugeMetricFamily]) -> None:
        nv = self._nvml
        for index in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            gpu = [str(index)]
            families["util"].add_metric(gpu, nv.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
            families["mem"].add_metric(gpu, float(nv.nvmlDeviceGetMemoryInfo(handle).used))
            families["power"].add_metric(gpu, nv.nvmlDeviceGetPowerUsage(handle) / 1000)
            families["temp"].add_metric(
                gpu, float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)))
