"""Which version of a model answers a user: a stable split by a hash of the user id.

The hash is BLAKE2b of ``"<model>:<user id>"``, never Python's ``hash()`` (salted per
process): every gateway replica, and the same replica after a restart, sends a user to the
same version, so a user sees one model for the whole experiment. Salting with the model
name keeps the experiments of different models independent.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_SCALE = float(2**64)


def unit_hash(model: str, user: str) -> float:
    """A uniform number in [0, 1) fixed by ``model`` and ``user``."""
    digest = hashlib.blake2b(f"{model}:{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class Split:
    """Versions and their cumulative shares of traffic (ending at 1.0)."""

    model: str
    versions: tuple[int, ...]
    bounds: tuple[float, ...]

    @classmethod
    def of(cls, model: str, shares: Mapping[int, float], loaded: Sequence[int]) -> Split | None:
        """The split over the ``loaded`` versions among ``shares``, renormalised (a version
        unloaded by an operator gives its share to the others); ``None`` when no loaded
        version has a share, and the model's default version answers everyone."""
        kept = sorted((v, s) for v, s in shares.items() if v in loaded and s > 0)
        total = sum(s for _, s in kept)
        if not kept or total <= 0:
            return None
        bounds = [b / total for b in itertools.accumulate(s for _, s in kept)]
        bounds[-1] = 1.0
        return cls(model, tuple(v for v, _ in kept), tuple(bounds))

    def version_for(self, user: str) -> int:
        """The version serving ``user``."""
        return self.versions[bisect.bisect_right(self.bounds, unit_hash(self.model, user))]

    def shares(self) -> dict[int, float]:
        """Percentages per version, as applied now."""
        previous = 0.0
        out = {}
        for version, bound in zip(self.versions, self.bounds, strict=True):
            out[version] = round((bound - previous) * 100, 6)
            previous = bound
        return out


def split_drift(model: str, shares: Mapping[int, float], loaded: Sequence[int]) -> str | None:
    """Why the split in force for ``model`` differs from the configured ``shares`` (a
    version with a share is not loaded, so its traffic goes to the others or to the
    default version), as a sentence for the operator; ``None`` when it is as configured."""
    missing = sorted(v for v, s in shares.items() if s > 0 and v not in loaded)
    if not missing:
        return None
    configured = {v: s for v, s in sorted(shares.items()) if s > 0}
    split = Split.of(model, shares, loaded)
    applied = (f"split in force {split.shares()}" if split is not None
               else "no split in force: the default version answers everyone")
    return (f"rollout split of model '{model}' configured as {configured} (percent), but "
            f"version(s) {missing} not loaded (loaded: {sorted(loaded)}); {applied}")
