"""Scrape the gateway's ``/metrics`` during a run: batch sizes, queue depth, sheds.

Client-side latency says *that* the gateway slowed down; these series say *why* (batches
stopped growing, the queue filled up, requests were shed). The scraper is a thread of the
runner process, one GET per interval, and never fails the run: a missed scrape is a gap.
"""

from __future__ import annotations

import csv
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Prometheus sample name -> column; values are summed over label sets.
SERIES: dict[str, str] = {
    "rankserve_batch_rows_sum": "batch_rows_sum",
    "rankserve_batch_rows_count": "batches",
    "rankserve_queue_rows": "queue_rows",
    "rankserve_inflight_batches": "inflight_batches",
    "rankserve_shed_total": "shed_total",
    "rankserve_deadline_exceeded_total": "deadline_exceeded_total",
}
COLUMNS = ("t", *SERIES.values())


def parse_metrics(text: str) -> dict[str, float]:
    """The :data:`SERIES` columns from a Prometheus text page (absent series are left out)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            column = SERIES.get(sample.name)
            if column is not None:
                values[column] = values.get(column, 0.0) + float(sample.value)
    return values


class MetricsScraper:
    """Polls ``<base_url>/metrics`` every ``interval_s`` seconds in a daemon thread."""

    def __init__(self, base_url: str, interval_s: float = 1.0) -> None:
        self.url = base_url.rstrip("/") + "/metrics"
        self.interval_s = interval_s
        self.rows: list[dict[str, float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def latest(self) -> dict[str, float] | None:
        return self.rows[-1] if self.rows else None

    def scrape_once(self) -> dict[str, float] | None:
        """One scrape, stamped with the wall clock; ``None`` if the gateway did not answer."""
        try:
            with urllib.request.urlopen(self.url, timeout=2.0) as response:
                text = response.read().decode()
        except OSError:
            self.errors += 1
            return None
        return {"t": time.time(), **parse_metrics(text)}

    def _loop(self) -> None:
        while not self._stop.is_set():
            row = self.scrape_once()
            if row is not None:
                self.rows.append(row)
            self._stop.wait(self.interval_s)

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
