"""A model's tensor signature, as Triton reports it and as its model card records it.

The Triton backend compares the two at start (a mismatch is a deployment error that must
stop the gateway from becoming ready) and uses the signature to lay out shared-memory
regions for a batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from serving.backends.shared_memory import aligned
from serving.repository.card import CARD_FILE, ModelCard


@dataclass(frozen=True)
class TensorSig:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.datatype} {list(self.shape)}"


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, from Triton's metadata or from a model card."""

    inputs: Mapping[str, TensorSig]
    outputs: Mapping[str, TensorSig]

    @classmethod
    def from_metadata(cls, metadata: Any) -> Signature:
        def sigs(tensors: Any) -> dict[str, TensorSig]:
            return {t.name: TensorSig(t.name, t.datatype, tuple(int(d) for d in t.shape))
                    for t in tensors}
        return cls(sigs(metadata.inputs), sigs(metadata.outputs))

    @classmethod
    def from_card(cls, card: ModelCard) -> Signature:
        return cls({t.name: TensorSig(t.name, t.dtype, tuple(t.shape)) for t in card.inputs},
                   {t.name: TensorSig(t.name, t.dtype, tuple(t.shape)) for t in card.outputs})

    def differences(self, expected: Signature) -> list[str]:
        """What in this (Triton's) signature differs from ``expected`` (the card's)."""
        problems = []
        for kind, ours, theirs in (("input", self.inputs, expected.inputs),
                                   ("output", self.outputs, expected.outputs)):
            for name, want in theirs.items():
                got = ours.get(name)
                if got is None:
                    problems.append(f"{kind} '{name}' is missing on Triton (card: {want})")
                elif (got.datatype, got.shape) != (want.datatype, want.shape):
                    problems.append(f"{kind} '{name}' is {got} on Triton, the card says {want}")
            problems += [f"{kind} '{name}' is on Triton but not in the card"
                         for name in ours.keys() - theirs.keys()]
        return problems

    def output_layout(self, rows: int) -> dict[str, tuple[int, int]] | None:
        """Offset and byte size of each output, packed for ``rows`` leading rows, or None
        if an output has another dynamic dimension (its size is unknown before the call)."""
        layout, offset = {}, 0
        for name, sig in self.outputs.items():
            trailing = sig.shape[1:]
            if any(d < 0 for d in trailing):
                return None
            itemsize = np.dtype(triton_to_np_dtype(sig.datatype)).itemsize
            nbytes = aligned(rows * math.prod(trailing) * itemsize)
            layout[name] = (offset, nbytes)
            offset += nbytes
        return layout


def rows_of(arrays: Mapping[str, np.ndarray]) -> int:
    """The largest leading dimension: outputs have at most that many rows."""
    return max((a.shape[0] for a in arrays.values() if a.ndim), default=0)


def find_cards(repository: Path) -> dict[str, ModelCard]:
    """The model card of each model's highest version that has one."""
    cards: dict[str, ModelCard] = {}
    if not repository.is_dir():
        return cards
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = sorted((v for v in model_dir.iterdir()
                           if v.name.isdigit() and (v / CARD_FILE).is_file()),
                          key=lambda v: int(v.name))
        if versions:
            cards[model_dir.name] = ModelCard.load(versions[-1] / CARD_FILE)
    return cards
