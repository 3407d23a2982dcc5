"""The online latency model learns fixed + per-row cost and reports its error."""

from __future__ import annotations

import numpy as np
import pytest

from serving.batching.latency import LatencyModel


def test_learns_fixed_and_per_row_cost() -> None:
    model = LatencyModel(fixed_s=0.005, per_row_s=1e-6)  # a wrong prior
    rng = np.random.default_rng(0)
    for _ in range(300):
        rows = int(rng.integers(1, 2048))
        model.observe(rows, 0.0008 + 20e-6 * rows + rng.normal(0, 2e-5))
    fixed, per_row = model.coefficients
    assert fixed == pytest.approx(0.0008, abs=3e-4)  # the prior said 5 ms
    assert per_row == pytest.approx(20e-6, rel=0.05)
    assert model.predict(1000) == pytest.approx(0.0208, rel=0.05)
    assert model.bound(1000) > model.predict(1000)


def test_returns_the_error_of_its_prediction() -> None:
    model = LatencyModel(fixed_s=0.001, per_row_s=1e-5)
    assert model.observe(100, 0.005) == pytest.approx(0.005 - 0.002)


def test_stays_sane_when_every_batch_has_the_same_size() -> None:
    model = LatencyModel()
    for _ in range(500):
        model.observe(512, 0.01)
    assert model.predict(512) == pytest.approx(0.01, rel=0.01)
    assert 0 <= model.predict(1) < 0.01 < model.predict(2048)


def test_follows_a_backend_that_slows_down() -> None:
    model = LatencyModel()
    for _ in range(100):
        model.observe(256, 0.004)
    for _ in range(100):
        model.observe(256, 0.008)
    assert model.predict(256) == pytest.approx(0.008, rel=0.05)


def _trained(**kwargs: float) -> LatencyModel:
    model = LatencyModel(**kwargs)
    rng = np.random.default_rng(1)
    for _ in range(200):
        rows = int(rng.integers(1, 2048))
        model.observe(rows, 0.001 + 5e-6 * rows + rng.normal(0, 1e-4))
    return model


def test_one_ten_second_build_does_not_poison_later_predictions() -> None:
    model = _trained()
    normal = model.predict(2000)
    error = model.observe(2000, 10.0)  # a TensorRT engine build for a new shape
    assert error == pytest.approx(10.0 - normal, rel=1e-6)  # reported as it was
    assert model.predict(2000) < 2 * normal
    for _ in range(3):
        model.observe(2000, normal)
    assert model.predict(2000) == pytest.approx(normal, rel=0.2)
    assert model.bound(2000) < 0.1


def test_without_the_clip_the_same_build_would_poison_it() -> None:
    # The test above can fail: unclipped least squares predicts seconds afterwards.
    model = _trained(clip_sigmas=float("inf"))
    model.observe(2000, 10.0)
    for _ in range(3):
        model.observe(2000, 0.011)
    assert model.predict(2000) > 0.5  # vs 11 ms


def test_a_first_slow_run_of_a_fresh_model_stays_bounded() -> None:
    model = LatencyModel()
    model.observe(2000, 9.7)
    assert model.predict(2000) < 0.05


def test_a_pessimistic_model_learns_a_fast_backend_at_once() -> None:
    model = LatencyModel(fixed_s=0.001, per_row_s=10.0)  # 40 s for 4 rows
    model.observe(4, 0.001)
    assert model.predict(4) < 4.0
