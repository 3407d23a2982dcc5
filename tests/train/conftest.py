"""Shared fixtures: the real KuaiRand log, loaded once per test session, and a small
synthetic multi-format log."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.train.data import DataNotFound, Log, load_log
from serving.train.synthetic import Config, generate, write


@pytest.fixture(scope="session")
def log() -> Log:
    try:
        return load_log()
    except DataNotFound as e:  # a clone without ../shared/data: say what is missing
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic multi-format log (serving/train/synthetic.py) as CSV and Parquet."""
    out = tmp_path_factory.mktemp("synthetic")
    frame = generate(Config(users=120, items=400, creators=30, days=8, candidates=6))
    write(frame, out, "csv")
    write(frame, out, "parquet")
    return out
