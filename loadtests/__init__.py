"""Load tests and benchmarks for rankserve: Locust scenarios replaying real held-out KuaiRand
traffic, the headless runner that turns a run into an SLO report with plots
(``python -m loadtests.run``, ``make loadtest``) and the benchmark harness (``make bench``).
"""
