"""Shared fixtures: the real KuaiRand log, loaded once per test session."""

from __future__ import annotations

import pytest

from serving.train.data import DataNotFound, Log, load_log


@pytest.fixture(scope="session")
def log() -> Log:
    try:
        return load_log()
    except DataNotFound as e:  # a clone without ../shared/data: say what is missing
        pytest.skip(str(e))
