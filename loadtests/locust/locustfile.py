"""Locust scenario for rankserve: real held-out feed requests at a scheduled offered load.

Run it through ``python -m loadtests.locust.run`` (``make loadtest``), which builds the
request bank and the schedule, starts the gateway and writes the report. Direct use, for a
running gateway (the bank and schedule files come from a previous ``loadtests.locust.run
--prepare-only``)::

    locust -f loadtests/locust/locustfile.py --headless -H http://127.0.0.1:8000 \\
        --rankserve-bank DIR/bank --rankserve-schedule DIR/schedule.json \\
        --rankserve-results DIR
    python -m loadtests.locust.run --report DIR      # summary, verdict and plots

Distributed: start ``locust -f loadtests/locust/locustfile.py --master --expect-workers N
--headless ...`` with the options above, and N times ``locust -f
loadtests/locust/locustfile.py --worker --master-host HOST``; every worker reads the bank
from the same path (copy the bank folder to each worker machine). Workers send their
per-request samples to the master once a second (a custom message), and the master writes
them all to ``samples.csv``.

Each simulated user sends ``per_user_rps`` requests per second (constant throughput, set by
the schedule), so the shape class turns the schedule's rates into user counts.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtests.bank import Bank, Shot, check_response
from loadtests.locust.samples import SampleBuffer
from loadtests.locust.shapes import Schedule

SAMPLES_MESSAGE = "rankserve_samples"
FLUSH_INTERVAL_S = 1.0
SPAWN_RATE = 100.0  # users per second: a step change in load is a step, not a ramp

_samples = SampleBuffer()
_state: dict[str, Any] = {}


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("rankserve")
    group.add_argument("--rankserve-bank", default="", help="folder of a saved request bank")
    group.add_argument("--rankserve-schedule", default="", help="schedule JSON (shapes.py)")
    group.add_argument("--rankserve-results", default="",
                       help="folder for samples.csv and timeline.json (master or local)")
    group.add_argument("--rankserve-budget-ms", type=float, default=50.0,
                       help="sent as X-Request-Budget-Ms")


def _option(environment: Environment, name: str) -> Any:
    return getattr(environment.parsed_options, name)


def _schedule() -> Schedule:
    schedule: Schedule = _state["schedule"]
    return schedule


def _bank(environment: Environment) -> Bank:
    if "bank" not in _state:
        path = _option(environment, "rankserve_bank")
        if not path:
            raise RuntimeError("--rankserve-bank is required (see loadtests/locust/run.py)")
        _state["bank"] = Bank.load(Path(path))
    bank: Bank = _state["bank"]
    return bank


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    path = _option(environment, "rankserve_schedule")
    if not path:
        raise RuntimeError("--rankserve-schedule is required (see loadtests/locust/run.py)")
    _state["schedule"] = Schedule.from_dict(json.loads(Path(path).read_text()))
    _state["results"] = _option(environment, "rankserve_results")
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(SAMPLES_MESSAGE, lambda msg, **__: _samples.extend(msg.data))
    if isinstance(runner, WorkerRunner):
        gevent.spawn(_flush_forever, runner)


def _flush(runner: WorkerRunner) -> None:
    if len(_samples):
        runner.send_message(SAMPLES_MESSAGE, _samples.drain())


def _flush_forever(runner: WorkerRunner) -> None:
    while True:
        gevent.sleep(FLUSH_INTERVAL_S)
        _flush(runner)


@events.request.add_listener
def _on_request(response: Any, context: dict[str, Any], exception: BaseException | None,
                response_time: float, start_time: float = 0.0, **_: Any) -> None:
    status = int(getattr(response, "status_code", 0) or 0)
    _samples.add(start_time, response_time, status, exception is None,
                 int(context.get("rows", 0)))


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        _flush(environment.runner)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    """Master or local runner: write every sample."""
    if isinstance(environment.runner, WorkerRunner):
        return
    if _state["results"]:
        _samples.write_csv(Path(_state["results"]) / "samples.csv")


def _write_timeline() -> None:
    """``timeline.json``: the wall time the shape started (the runner's progress clock and
    the report's time origin)."""
    if _state["results"]:
        (Path(_state["results"]) / "timeline.json").write_text(json.dumps({"t0": _state["t0"]}))


class RankUser(FastHttpUser):
    """A feed backend asking for one ranking after another at a fixed per-user rate."""

    def on_start(self) -> None:
        bank = _bank(self.environment)
        self._pace_s = 1.0 / _schedule().per_user_rps
        first = random.randrange(len(bank))
        self._shots = itertools.cycle(bank.shots[first:] + bank.shots[:first])
        budget = _option(self.environment, "rankserve_budget_ms")
        self._headers = {"Content-Type": bank.content_type, "Accept": "application/json",
                         "X-Request-Budget-Ms": f"{budget:g}"}
        self._name = f"/v1/rank [{bank.encoding}]"
        self._last_start = time.perf_counter()
        gevent.sleep(random.random() * self._pace_s)  # spread users over the pace period

    def wait_time(self) -> float:
        """Constant throughput: the next request starts one pace after the last began."""
        return max(0.0, self._pace_s - (time.perf_counter() - self._last_start))

    @task
    def rank(self) -> None:
        self._last_start = time.perf_counter()
        shot: Shot = next(self._shots)
        # FastHttpSession sends bytes as they are; its annotation only lists str and dict.
        with self.client.post("/v1/rank", data=shot.body,  # type: ignore[arg-type]
                              headers=self._headers,
                              name=self._name, catch_response=True,
                              context={"rows": shot.rows}) as response:
            problem = check_response(response.status_code, response.content, shot)
            if problem is None:
                response.success()
            else:
                response.failure(problem)


class ScheduleShape(LoadTestShape):
    """Replays the schedule: users = rate / per-user rate, phase by phase, then a drain."""

    def tick(self) -> tuple[int, float] | None:
        now = time.monotonic()
        if "start" not in _state:
            _state["start"], _state["t0"] = now, time.time()
            _write_timeline()
        users = _schedule().users_at(now - _state["start"])
        return None if users is None else (users, SPAWN_RATE)
