"""Overload report: the gateway far past its measured capacity, what it promised, and how
fast it recovers from a step in load.

``python -m loadtests.experiments.overload`` (about a minute; ``--factor 10 --seconds 60``
for the 10x report in docs/reliability.md):

1. starts ``rankserve serve`` (embedded ONNX Runtime) pinned to one core, and pins this
   process, the load generator, to another (``taskset`` / ``sched_setaffinity``, where the
   machine has two cores);
2. measures capacity with a short open-loop ramp (:func:`loadtests.loadgen.offer`): rates
   rising by ``RAMP_FACTOR`` per step until a step misses its bound (p99 of 200s over the
   budget, or over 1% not 200); the capacity is the highest 200s/s of a step that met it;
3. offers ``--factor`` (3) times that capacity for ``--seconds`` (30), open loop (requests
   start on schedule whatever the answers), every request with ``X-Request-Budget-Ms``;
4. reports: offered and accepted (200) requests/s, p50/p99 of accepted requests against
   1.5x their budget, statuses, how fast the excess was refused (429 latency, from the
   moment the request was sent) and whether every 429 carried ``Retry-After``, the
   generator's own lag, and the gateway's RSS before, during (peak) and after the load;
5. with ``--step-seconds`` > 0, a step: ``STEP_LOW`` (0.7x) of capacity, then at once
   ``STEP_HIGH`` (1.4x), open loop; the recovery time is from the step until the p99 of
   accepted requests, over windows of ``RECOVERY_WINDOW_S`` (by send time), is back under
   the budget for good (0 when it never left it).

Figures go to stdout, ``loadtests/results/overload.json`` and ``overload.md``. The
reliability tests call :func:`run` with shorter phases and assert the same promises.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import RESULTS
from loadtests.bank import Bank
from loadtests.loadgen import Outcome, offer
from loadtests.server import GatewayProcess, pinned
from loadtests.traffic import CandidateCounts, HeldOutTraffic

RAMP_START_RPS, RAMP_FACTOR, RAMP_STEPS = 10.0, 1.4, 12
ACCEPTED_P99_FACTOR = 1.5
REJECT_WITHIN_MS = 5.0
STEP_LOW, STEP_HIGH = 0.7, 1.4
RECOVERY_WINDOW_S = 0.25
"""Short enough to resolve a recovery under 1 s, long enough for a p99 of tens of requests
at the rates a 2-core machine serves."""


@dataclass
class Phase:
    """The outcomes of one offered rate, and the gateway's RSS sampled meanwhile (MiB).
    Latencies here count from the moment a request was sent (``response_ms``): they judge
    the gateway, not the generator, whose lag is reported on its own."""

    offered_rps: float
    seconds: float
    outcomes: list[Outcome]
    rss_mib: list[float] = field(default_factory=list)

    def status(self, code: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == code]

    def percentile(self, code: int, q: float) -> float | None:
        values = [o.response_ms for o in self.status(code)]
        return float(np.percentile(values, q)) if values else None

    def within(self, budget_ms: float) -> bool:
        p99 = self.percentile(200, 99)
        return p99 is not None and p99 <= budget_ms \
            and len(self.status(200)) >= 0.99 * len(self.outcomes)


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` (Linux ``/proc``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def offer_phase(url: str, bank: Bank, rate: float, seconds: float, budget_ms: float,
                      pid: int | None = None) -> Phase:
    """Send the bank's shots in turn at ``rate`` per second for ``seconds``, open loop with
    no connection limit, sampling the RSS of ``pid`` every 100 ms when given."""
    phase = Phase(rate, seconds, [])
    sampler = asyncio.create_task(_sample_rss(pid, phase.rss_mib)) if pid else None
    try:
        phase.outcomes = await offer(f"{url}/v1/rank", bank.shots, bank.content_type, rate,
                                     seconds, budget_ms=budget_ms, max_in_flight=0,
                                     timeout_s=max(10.0, budget_ms / 1e3 * 4))
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    return phase


async def _sample_rss(pid: int, into: list[float]) -> None:
    while True:
        into.append(rss_mib(pid))
        await asyncio.sleep(0.1)


async def measure_capacity(url: str, bank: Bank, budget_ms: float, step_s: float,
                           start_rps: float = RAMP_START_RPS) -> tuple[float, list[Phase]]:
    """The highest 200s/s of a ramp step whose p99 stayed within the budget with at most
    1% of requests not 200; the steps, for the report."""
    steps: list[Phase] = []
    capacity, rate = 0.0, start_rps
    for _ in range(RAMP_STEPS):
        step = await offer_phase(url, bank, rate, step_s, budget_ms)
        steps.append(step)
        if not step.within(budget_ms):
            break
        capacity = max(capacity, len(step.status(200)) / step_s)
        rate *= RAMP_FACTOR
    if capacity == 0:
        raise RuntimeError(f"the gateway met its budget at no rate (first step: "
                           f"{Counter(o.status for o in steps[0].outcomes)})")
    return capacity, steps


@dataclass(frozen=True)
class Step:
    """A step from ``STEP_LOW`` to ``STEP_HIGH`` of capacity and how the gateway took it."""

    low_rps: float
    high_rps: float
    seconds_each: float
    statuses_after: dict[str, int]
    accepted_p99_before_ms: float | None
    accepted_p99_after_ms: float | None
    worst_window_p99_ms: float | None
    recovery_s: float
    """From the step to the end of the last window whose accepted p99 was over budget."""


def recovery_time(outcomes: Sequence[Outcome], step_at: float, budget_ms: float,
                  window_s: float = RECOVERY_WINDOW_S) -> tuple[float, float | None]:
    """(seconds from ``step_at`` until the accepted p99 stays under ``budget_ms``, the worst
    window's p99): accepted requests sent after the step, in windows of ``window_s`` by
    send time."""
    windows: dict[int, list[float]] = {}
    for o in outcomes:
        if o.status == 200 and o.scheduled >= step_at:
            windows.setdefault(int((o.scheduled - step_at) // window_s), []).append(
                o.response_ms)
    p99 = {i: float(np.percentile(v, 99)) for i, v in windows.items()}
    late = [i for i, value in p99.items() if value > budget_ms]
    return ((max(late) + 1) * window_s if late else 0.0), max(p99.values(), default=None)


async def step_phase(url: str, bank: Bank, capacity: float, seconds_each: float,
                     budget_ms: float) -> Step:
    """``STEP_LOW`` x capacity for ``seconds_each``, then ``STEP_HIGH`` x for as long: one
    open loop at the low rate throughout, and a second one adding the difference from the
    step on (both schedule on the same loop clock)."""
    low, high = STEP_LOW * capacity, STEP_HIGH * capacity

    async def extra() -> list[Outcome]:
        await asyncio.sleep(seconds_each)
        return await offer(f"{url}/v1/rank", bank.shots, bank.content_type, high - low,
                           seconds_each, budget_ms=budget_ms, max_in_flight=0,
                           timeout_s=max(10.0, budget_ms / 1e3 * 4))

    base, added = await asyncio.gather(
        offer(f"{url}/v1/rank", bank.shots, bank.content_type, low, 2 * seconds_each,
              budget_ms=budget_ms, max_in_flight=0, timeout_s=max(10.0, budget_ms / 1e3 * 4)),
        extra())
    step_at = min(o.scheduled for o in added)
    before = Phase(low, seconds_each, [o for o in base if o.scheduled < step_at])
    after = Phase(high, seconds_each, [o for o in [*base, *added] if o.scheduled >= step_at])
    recovery, worst = recovery_time(after.outcomes, step_at, budget_ms)
    return Step(low_rps=low, high_rps=high, seconds_each=seconds_each,
                statuses_after={str(k): v for k, v in sorted(
                    Counter(o.status for o in after.outcomes).items())},
                accepted_p99_before_ms=before.percentile(200, 99),
                accepted_p99_after_ms=after.percentile(200, 99),
                worst_window_p99_ms=worst, recovery_s=recovery)


@dataclass(frozen=True)
class Report:
    budget_ms: float
    candidates: str
    encoding: str
    capacity_rps: float
    offered_rps: float
    seconds: float
    sent: int
    statuses: dict[str, int]
    accepted_rps: float
    accepted_p50_ms: float | None
    accepted_p99_ms: float | None
    accepted_p99_limit_ms: float
    rejected_p50_ms: float | None
    rejected_p99_ms: float | None
    rejected_max_ms: float | None
    rejected_within_5ms: float | None
    retry_after_on_every_429: bool
    generator_lag_p99_ms: float
    rss_before_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    ramp: list[dict[str, Any]]
    step: Step | None = None

    def lines(self) -> list[str]:
        """The figures as a markdown table."""
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"
        rows = [
            ("capacity (ramp, p99 <= budget, <= 1% not 200)", f"{self.capacity_rps:.0f} req/s"),
            ("offered (open loop)", f"{self.offered_rps:.0f} req/s for {self.seconds:g} s"),
            ("accepted (200)", f"{self.accepted_rps:.0f} req/s"),
            ("statuses", ", ".join(f"{k}: {v}" for k, v in self.statuses.items())),
            ("accepted p50 / p99", f"{ms(self.accepted_p50_ms)} / {ms(self.accepted_p99_ms)} "
                                   f"ms (limit {self.accepted_p99_limit_ms:g} ms)"),
            ("429 latency p50 / p99 / max", f"{ms(self.rejected_p50_ms)} / "
                                            f"{ms(self.rejected_p99_ms)} / "
                                            f"{ms(self.rejected_max_ms)} ms"),
            ("429s answered within 5 ms", "-" if self.rejected_within_5ms is None
             else f"{self.rejected_within_5ms:.1%}"),
            ("Retry-After on every 429", "yes" if self.retry_after_on_every_429 else "NO"),
            ("generator lag p99", f"{self.generator_lag_p99_ms:.1f} ms"),
            ("gateway RSS before / peak / after", f"{self.rss_before_mib:.0f} / "
             f"{self.rss_peak_mib:.0f} / {self.rss_after_mib:.0f} MiB"),
        ]
        if self.step is not None:
            s = self.step
            rows += [
                ("step (open loop)", f"{s.low_rps:.0f} -> {s.high_rps:.0f} req/s ({STEP_LOW:g}x "
                                     f"-> {STEP_HIGH:g}x), {s.seconds_each:g} s each"),
                ("accepted p99 before / after the step", f"{ms(s.accepted_p99_before_ms)} / "
                                                         f"{ms(s.accepted_p99_after_ms)} ms"),
                (f"worst {RECOVERY_WINDOW_S * 1e3:g} ms window p99 after the step",
                 f"{ms(s.worst_window_p99_ms)} ms"),
                ("time until p99 back under budget", f"{s.recovery_s:.2f} s"),
                ("statuses after the step", ", ".join(f"{k}: {v}"
                                                      for k, v in s.statuses_after.items())),
            ]
        return ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def summarise(phase: Phase, capacity: float, steps: Sequence[Phase], budget_ms: float,
              bank: Bank, rss_before: float, rss_after: float,
              step: Step | None = None) -> Report:
    rejected = [o.response_ms for o in phase.status(429)]
    return Report(
        budget_ms=budget_ms, candidates=bank.candidates, encoding=bank.encoding,
        capacity_rps=capacity, offered_rps=phase.offered_rps, seconds=phase.seconds,
        sent=len(phase.outcomes),
        statuses={str(k): v for k, v in sorted(Counter(o.status for o in phase.outcomes)
                                                .items())},
        accepted_rps=len(phase.status(200)) / phase.seconds,
        accepted_p50_ms=phase.percentile(200, 50), accepted_p99_ms=phase.percentile(200, 99),
        accepted_p99_limit_ms=ACCEPTED_P99_FACTOR * budget_ms,
        rejected_p50_ms=phase.percentile(429, 50), rejected_p99_ms=phase.percentile(429, 99),
        rejected_max_ms=max(rejected) if rejected else None,
        rejected_within_5ms=float(np.mean(np.asarray(rejected) <= REJECT_WITHIN_MS))
        if rejected else None,
        retry_after_on_every_429=all(o.retry_after for o in phase.status(429)),
        generator_lag_p99_ms=float(np.percentile([o.lag_ms for o in phase.outcomes], 99)),
        rss_before_mib=rss_before, rss_peak_mib=max(phase.rss_mib, default=rss_before),
        rss_after_mib=rss_after,
        ramp=[{"offered_rps": round(s.offered_rps, 1), "ok": len(s.status(200)),
               "sent": len(s.outcomes), "p99_ms": s.percentile(200, 99)} for s in steps],
        step=step)


def cores() -> tuple[str | None, set[int] | None]:
    """(server cpus for taskset, generator cpus), or ``(None, None)`` on one core."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(available) < 2:
        return None, None
    return str(available[0]), set(available[1:])


def run(bank: Bank, log_path: Path, budget_ms: float = 50.0, factor: float = 3.0,
        seconds: float = 30.0, step_s: float = 2.0, settle_s: float = 2.0,
        start_rps: float = RAMP_START_RPS, settings: dict[str, str] | None = None,
        step_seconds: float = 0.0) -> Report:
    """Start a pinned gateway, measure its capacity, overload it, then (``step_seconds``
    > 0) step the load from 0.7x to 1.4x of capacity; the figures.

    Raises:
        loadtests.server.GatewayError: the gateway did not start.
        RuntimeError: the gateway met its budget at no rate of the ramp.
    """
    server_cpus, generator_cpus = cores()
    with GatewayProcess(log_path, settings=settings, cpus=server_cpus) as gateway, \
            pinned(generator_cpus):
        assert gateway.process is not None
        pid = gateway.process.pid
        capacity, steps = asyncio.run(measure_capacity(gateway.url, bank, budget_ms, step_s,
                                                       start_rps))
        rss_before = rss_mib(pid)
        phase = asyncio.run(offer_phase(gateway.url, bank, factor * capacity, seconds,
                                        budget_ms, pid))
        if gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway exited under overload "
                               f"(status {gateway.process.returncode})")
        asyncio.run(asyncio.sleep(settle_s))
        rss_after = rss_mib(pid)
        step = (asyncio.run(step_phase(gateway.url, bank, capacity, step_seconds, budget_ms))
                if step_seconds > 0 else None)
    return summarise(phase, capacity, steps, budget_ms, bank, rss_before, rss_after, step)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.experiments.overload",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=30.0, help="overload duration")
    parser.add_argument("--factor", type=float, default=3.0, help="offered / capacity")
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--candidates", type=int, default=1000,
                        help="candidates per request (fixed)")
    parser.add_argument("--encoding", choices=["json", "columnar", "binary"], default="binary")
    parser.add_argument("--step-s", type=float, default=2.0, help="seconds per ramp step")
    parser.add_argument("--step-seconds", type=float, default=0.0,
                        help="seconds at 0.7x and then at 1.4x of capacity (0: no step)")
    args = parser.parse_args(argv)
    bank = Bank.build(HeldOutTraffic.load(users=200), CandidateCounts.fixed(args.candidates),
                      200, args.encoding)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = RESULTS / f"overload-{stamp}"
    folder.mkdir()
    report = run(bank, folder / "gateway.log", args.budget_ms, args.factor, args.seconds,
                 args.step_s, step_seconds=args.step_seconds)
    title = (f"# Overload report {stamp} UTC\n\n{args.candidates} candidates per request "
             f"({args.encoding}), budget {args.budget_ms:g} ms (X-Request-Budget-Ms), "
             f"{os.cpu_count()} cores; gateway and load generator pinned to different cores "
             f"where there are two.\n")
    text = "\n".join([title, *report.lines(), ""])
    print(text)
    (RESULTS / "overload.md").write_text(text)
    (RESULTS / "overload.json").write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
