"""The version split: shares respected, stable per user across processes, renormalised
when a version is not loaded; Triton version policies; rollout settings validation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from google.protobuf import text_format
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as mc

from serving.repository.versions import policy_versions
from serving.rollout.routing import Split, unit_hash
from serving.settings import Settings
from tests.gateway.conftest import REPOSITORY

USERS = [str(u) for u in range(20_000)]


@pytest.mark.parametrize("shares", [{1: 90.0, 2: 10.0}, {1: 50.0, 2: 50.0},
                                    {1: 20.0, 2: 30.0, 3: 50.0}])
def test_shares_are_respected_over_many_users(shares: dict[int, float]) -> None:
    split = Split.of("feed_ranker", shares, list(shares))
    assert split is not None
    counts = {v: 0 for v in shares}
    for user in USERS:
        counts[split.version_for(user)] += 1
    for version, share in shares.items():
        # 20,000 users: the binomial standard deviation of a share is at most 0.35 points.
        assert abs(100 * counts[version] / len(USERS) - share) < 1.5, counts


def test_the_hash_is_the_documented_one() -> None:
    """Any other service (a log join, a dashboard) can recompute who saw which version."""
    for user in USERS[:50]:
        digest = hashlib.blake2b(f"feed_ranker:{user}".encode(), digest_size=8).digest()
        assert unit_hash("feed_ranker", user) == int.from_bytes(digest, "big") / 2**64


def test_assignment_is_stable_across_processes() -> None:
    split = Split.of("feed_ranker", {1: 70.0, 2: 30.0}, [1, 2])
    assert split is not None
    code = ("import json, sys; from serving.rollout.routing import Split; "
            "s = Split.of('feed_ranker', {1: 70.0, 2: 30.0}, [1, 2]); "
            "print(json.dumps([s.version_for(str(u)) for u in range(500)]))")
    for seed in ("1", "2"):  # Python's own hash() would differ between these
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=REPOSITORY.parent,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert json.loads(out) == [split.version_for(str(u)) for u in range(500)]


def test_a_version_not_loaded_gives_its_share_to_the_others() -> None:
    only_two = Split.of("feed_ranker", {1: 90.0, 2: 10.0}, [2])
    assert only_two is not None
    assert {only_two.version_for(u) for u in USERS[:1000]} == {2}
    assert only_two.shares() == {2: 100.0}
    assert Split.of("feed_ranker", {1: 100.0}, [2]) is None  # the default version answers


def test_experiments_of_different_models_are_independent() -> None:
    first = [unit_hash("feed_ranker", u) < 0.5 for u in USERS[:4000]]
    second = [unit_hash("other_model", u) < 0.5 for u in USERS[:4000]]
    agree = sum(a == b for a, b in zip(first, second, strict=True)) / len(first)
    assert 0.45 < agree < 0.55


def _policy(text: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    if text:
        text_format.Parse(f"version_policy: {{ {text} }}", config)
    return config


@pytest.mark.parametrize(("policy", "expected"), [
    ("", [3]), ("latest { num_versions: 1 }", [3]), ("latest { num_versions: 2 }", [2, 3]),
    ("all {}", [1, 2, 3]), ("specific { versions: [1, 3, 9] }", [1, 3])])
def test_version_policies_select_as_triton_does(policy: str, expected: list[int]) -> None:
    assert policy_versions(_policy(policy), [1, 2, 3]) == expected


def test_rollout_settings_are_validated_and_read_from_json() -> None:
    with pytest.raises(ValidationError, match="sum to 100"):
        Settings.load(None, rollout={"feed_ranker": {"1": 90, "2": 20}})
    with pytest.raises(ValidationError, match="admin_token"):
        Settings.load(None, admin_enabled=True)
    settings = Settings.load(None, rollout='{"feed_ranker": {"1": 90, "2": 10}}',
                             shadow='{"feed_ranker": 2}')
    assert settings.rollout == {"feed_ranker": {1: 90.0, 2: 10.0}}
    assert settings.shadow == {"feed_ranker": 2}
