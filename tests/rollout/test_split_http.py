"""The A/B split over HTTP: each user's answer comes from the version the hash assigns, is
scored by that version's model, and names it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tests.gateway.conftest import Reference
from tests.rollout.conftest import MODEL, GatewayFactory, make_repository


def assigned(user: Any, share_of_v1: float) -> int:
    """The documented assignment, recomputed here independently of the gateway's code."""
    digest = hashlib.blake2b(f"{MODEL}:{user}".encode(), digest_size=8).digest()
    return 1 if int.from_bytes(digest, "big") / 2**64 < share_of_v1 / 100 else 2


async def test_each_user_gets_the_assigned_version_scored_by_that_version(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]], versions_dir: Path,
        tmp_path: Path) -> None:
    repository = make_repository(tmp_path, [1, 2], versions_dir)
    gateway = await start_gateway(model_repository=repository,
                                  rollout={MODEL: {"1": 70, "2": 30}})
    references = {v: Reference.load(versions_dir / str(v)) for v in (1, 2)}
    seen: dict[Any, int] = {}
    for document in heldout[:60]:
        status, answer = await gateway.rank({**document, "return_tasks": True})
        assert status == 200, answer
        user = document["user"]["user_id"]
        version = answer["model"]["version"]
        assert answer["model"]["name"] == MODEL
        assert version == assigned(user, 70.0)
        assert seen.setdefault(user, version) == version  # stable per user
        references[version].check(document, answer)  # really scored by that version
    assert set(seen.values()) == {1, 2}
    # The same user again, any number of times: the same version.
    document = heldout[0]
    versions = {(await gateway.rank(document))[1]["model"]["version"] for _ in range(5)}
    assert versions == {assigned(document["user"]["user_id"], 70.0)}
