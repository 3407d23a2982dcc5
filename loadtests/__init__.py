"""Load tests and benchmarks for rankserve, one subpackage per job.

* :mod:`loadtests.locust`: Locust scenarios replaying real held-out KuaiRand traffic and
  the headless runner that turns a run into an SLO report with plots
  (``python -m loadtests.locust.run``, ``make loadtest``);
* :mod:`loadtests.bench`: the benchmark against raw ONNX Runtime (``python -m
  loadtests.bench``, ``make bench``), the Triton hop and the GPU check;
* :mod:`loadtests.experiments`: the overload and rollout reports.

Shared by all of them, at this level: :mod:`~loadtests.traffic` (real requests),
:mod:`~loadtests.bank` (pre-encoded requests and the response check),
:mod:`~loadtests.loadgen` (the one open-loop and closed-loop load generator) and
:mod:`~loadtests.server` (a real gateway process, CPU pinning). Committed reports live in
``loadtests/results/`` (:data:`RESULTS`).
"""

import os
from pathlib import Path

_CHECKOUT_RESULTS = Path(__file__).with_name("results")
RESULTS = Path(os.environ.get("RANKSERVE_RESULTS") or (
    _CHECKOUT_RESULTS if _CHECKOUT_RESULTS.is_dir() else Path.cwd() / "loadtest-results"))
"""Where every job writes its reports: ``RANKSERVE_RESULTS`` if set; in a source checkout
``loadtests/results/`` (committed markdown and JSON of real runs); from an installed package
(``rankserve loadtest`` / ``bench``), ``./loadtest-results``."""
