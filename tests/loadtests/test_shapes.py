"""Load shapes: the schedules Locust replays and the report cuts into phases."""

from __future__ import annotations

import pytest

from loadtests.locust.shapes import Schedule, constant, spike, step


def test_constant_holds_one_rate_then_drains_then_ends() -> None:
    schedule = constant(12, 10, per_user_rps=1.0)
    assert schedule.users_at(0) == 12
    assert schedule.users_at(9.9) == 12
    assert schedule.users_at(10.5) == 0  # drain: users stop, samples get reported
    assert schedule.users_at(schedule.total_s) is None


def test_step_rises_until_max_rate_or_duration() -> None:
    schedule = step(10, 10, step_s=5, max_rate=35)
    assert [p.rate for p in schedule.phases] == [10, 20, 30]
    assert schedule.users_at(7) == 20
    bounded = step(10, 10, step_s=5, max_rate=1000, duration_s=22)
    assert len(bounded.phases) == 4
    assert bounded.load_s == 20


def test_spike_has_base_spike_and_recovery() -> None:
    schedule = spike(5, 50, duration_s=30, spike_at_s=10, spike_s=5)
    assert [(p.name, p.rate) for p in schedule.phases] == [
        ("base", 5), ("spike", 50), ("recovery", 5)]
    assert schedule.phase_at(12) is not None
    assert schedule.phase_at(12).name == "spike"
    assert schedule.phases[-1].end_s == 30


def test_rates_are_quantised_to_the_per_user_rate() -> None:
    schedule = constant(25, 10, per_user_rps=2.0)
    assert schedule.users_for(25) == 13
    assert schedule.offered_rate(schedule.phases[0]) == 26


def test_schedule_round_trips_through_json_dict() -> None:
    schedule = step(5, 5, 2, 15, per_user_rps=0.5)
    assert Schedule.from_dict(schedule.to_dict()) == schedule


@pytest.mark.parametrize("make", [
    lambda: constant(0, 10),
    lambda: step(10, 10, step_s=20, max_rate=50, duration_s=10),
    lambda: spike(5, 50, duration_s=10, spike_at_s=8, spike_s=5),
])
def test_impossible_shapes_are_refused(make: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        make()  # type: ignore[operator]
