"""Load shapes as plain schedules of offered request rates.

A schedule is a list of phases, each holding one offered rate (requests/s) for a while. The
Locust shape class (in ``locustfile.py``) replays it, the report uses the same phases to cut
the run into windows, so "offered load" means one thing everywhere. Keeping it free of
Locust makes it testable and lets the runner print the plan before starting.

Three shapes:

* ``constant``: one rate for the whole run (the SLO check at an expected production rate).
* ``step``: rising rates, one step after another, to find the knee: the highest offered
  load whose p99 stays within the budget. Steps grow geometrically (``factor``) so that a
  run of a minute reaches past the capacity of the machine (a knee can only be found by
  going beyond it), or by a fixed increment.
* ``spike``: a base rate, a short burst, then the base rate again (does the gateway shed
  cleanly and recover?).

Locust controls users, not rates: every simulated user sends ``per_user_rps`` requests per
second (``constant_throughput``), so a rate becomes ``ceil(rate / per_user_rps)`` users and
the offered load is quantised to multiples of ``per_user_rps``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

ShapeName = Literal["constant", "step", "spike"]
SHAPES: tuple[ShapeName, ...] = ("constant", "step", "spike")


@dataclass(frozen=True)
class Phase:
    """One offered rate held from ``start_s`` for ``duration_s`` seconds of the run."""

    name: str
    start_s: float
    duration_s: float
    rate: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class Schedule:
    """Phases back to back, then ``drain_s`` seconds with no users.

    The drain lets in-flight requests finish and distributed workers report their last
    samples before Locust quits.
    """

    shape: ShapeName
    phases: tuple[Phase, ...]
    per_user_rps: float = 1.0
    drain_s: float = 1.5

    @property
    def load_s(self) -> float:
        """Seconds of load (the phases), without the drain."""
        return self.phases[-1].end_s if self.phases else 0.0

    @property
    def total_s(self) -> float:
        return self.load_s + self.drain_s

    def phase_at(self, t: float) -> Phase | None:
        """The phase running ``t`` seconds into the run; ``None`` in the drain or after."""
        for phase in self.phases:
            if phase.start_s <= t < phase.end_s:
                return phase
        return None

    def users_for(self, rate: float) -> int:
        """Simulated users that offer ``rate`` requests/s."""
        return math.ceil(rate / self.per_user_rps - 1e-9) if rate > 0 else 0

    def offered_rate(self, phase: Phase) -> float:
        """The rate the users of ``phase`` really offer (quantised to ``per_user_rps``)."""
        return self.users_for(phase.rate) * self.per_user_rps

    def users_at(self, t: float) -> int | None:
        """Users to run at ``t``; 0 in the drain, ``None`` once the run is over."""
        if t >= self.total_s:
            return None
        phase = self.phase_at(t)
        return 0 if phase is None else self.users_for(phase.rate)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "per_user_rps": self.per_user_rps,
                "drain_s": self.drain_s, "phases": [asdict(p) for p in self.phases]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        return cls(data["shape"], tuple(Phase(**p) for p in data["phases"]),
                   float(data["per_user_rps"]), float(data["drain_s"]))


def constant(rate: float, duration_s: float, per_user_rps: float = 1.0) -> Schedule:
    """One rate for ``duration_s`` seconds.

    Raises:
        ValueError: a non-positive rate or duration.
    """
    _check_positive(rate=rate, duration_s=duration_s, per_user_rps=per_user_rps)
    return Schedule("constant", (Phase("constant", 0.0, duration_s, rate),), per_user_rps)


def step(start_rate: float, step_rate: float, step_s: float, max_rate: float,
         duration_s: float | None = None, per_user_rps: float = 1.0,
         factor: float | None = None) -> Schedule:
    """Rates ``start_rate, start_rate + step_rate, ...`` (or, with ``factor``,
    ``start_rate, start_rate * factor, ...``) up to ``max_rate``, ``step_s`` each; steps that
    would not fit in ``duration_s`` are dropped.

    Raises:
        ValueError: non-positive values, a factor not above 1, or not even one step fits in
            ``duration_s``.
    """
    _check_positive(start_rate=start_rate, step_s=step_s, max_rate=max_rate,
                    per_user_rps=per_user_rps)
    if factor is None:
        _check_positive(step_rate=step_rate)
        rates = [start_rate + i * step_rate
                 for i in range(math.floor((max_rate - start_rate) / step_rate + 1e-9) + 1)]
    else:
        if not factor > 1:
            raise ValueError(f"factor must be > 1, got {factor}")
        rates = []
        while not rates or rates[-1] * factor <= max_rate * (1 + 1e-9):
            rates.append(start_rate * factor ** len(rates))
        rates = [round(r, 2) for r in rates]
    count = len(rates)
    if duration_s is not None:
        count = min(count, int(duration_s // step_s))
    if count < 1:
        raise ValueError(f"no step of {step_s} s fits in a run of {duration_s} s")
    phases = tuple(Phase(f"step{i + 1}", i * step_s, step_s, rates[i]) for i in range(count))
    return Schedule("step", phases, per_user_rps)


def spike(base_rate: float, spike_rate: float, duration_s: float, spike_at_s: float,
          spike_s: float, per_user_rps: float = 1.0) -> Schedule:
    """``base_rate``, then ``spike_rate`` from ``spike_at_s`` for ``spike_s`` seconds, then
    ``base_rate`` again until ``duration_s`` (the recovery window).

    Raises:
        ValueError: non-positive values, or the spike does not end before the run does.
    """
    _check_positive(base_rate=base_rate, spike_rate=spike_rate, duration_s=duration_s,
                    spike_at_s=spike_at_s, spike_s=spike_s, per_user_rps=per_user_rps)
    if spike_at_s + spike_s >= duration_s:
        raise ValueError(f"spike ({spike_at_s} s + {spike_s} s) must end before the run "
                         f"({duration_s} s) to leave a recovery window")
    phases = (Phase("base", 0.0, spike_at_s, base_rate),
              Phase("spike", spike_at_s, spike_s, spike_rate),
              Phase("recovery", spike_at_s + spike_s, duration_s - spike_at_s - spike_s,
                    base_rate))
    return Schedule("spike", phases, per_user_rps)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
