"""Per-batch-item attention perturbations (the reference's `BatchedPerturbationConfig`).

`perturbations` passed to the transformer holds one entry per batch item, each a collection of
`LTX2Perturbation`. Everything here is decided from Python values, never from tensor contents, so a batched
guidance step (cond / negative / STG / isolated items in one forward) compiles with `fullgraph=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import torch


PERTURBATION_KINDS = ("skip_video_self_attn", "skip_audio_self_attn", "skip_a2v_cross_attn", "skip_v2a_cross_attn")


@dataclass(frozen=True)
class LTX2Perturbation:
    """Skip one kind of attention in `blocks` (None = every block).

    A skipped self-attention passes the value projection through (`to_v` -> gate -> `to_out`); a skipped
    audio<->video cross-attention contributes nothing to the residual stream.
    """

    kind: str
    blocks: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in PERTURBATION_KINDS:
            raise ValueError(f"LTX2Perturbation kind must be one of {PERTURBATION_KINDS}, got {self.kind!r}")
        if self.blocks is not None:
            blocks = tuple(self.blocks)
            if not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
                raise TypeError(f"LTX2Perturbation blocks must be integers or None, got {self.blocks!r}")
            object.__setattr__(self, "blocks", blocks)

    def applies(self, kind: str, block: int) -> bool:
        return self.kind == kind and (self.blocks is None or block in self.blocks)


class BlockPerturbation(NamedTuple):
    """What one block must skip for one modality path: `skip_all` for every item, or `keep` (B,1,1) per item."""

    skip_all: bool
    keep: torch.Tensor | None


NO_PERTURBATION = BlockPerturbation(False, None)


def validate_perturbations(
    perturbations: Sequence[Iterable[LTX2Perturbation]] | None, batch_size: int, num_layers: int
) -> list[tuple[LTX2Perturbation, ...]] | None:
    """Normalise `perturbations` to one tuple per batch item; `ValueError`/`TypeError` naming what is wrong."""
    if perturbations is None:
        return None
    items = list(perturbations)
    if len(items) != batch_size:
        raise ValueError(f"perturbations must have one entry per batch item ({batch_size}), got {len(items)} entries")
    normalised = []
    for i, item in enumerate(items):
        item = (item,) if isinstance(item, LTX2Perturbation) else tuple(item or ())
        for p in item:
            if not isinstance(p, LTX2Perturbation):
                raise TypeError(f"perturbations[{i}] must hold LTX2Perturbation objects, got {type(p).__name__}")
            bad = [b for b in (p.blocks or ()) if not 0 <= b < num_layers]
            if bad:
                raise ValueError(
                    f"perturbations[{i}]: block index {bad[0]} out of range for a model with {num_layers} blocks"
                )
        normalised.append(item)
    return normalised


def block_perturbation(
    perturbations: list[tuple[LTX2Perturbation, ...]] | None,
    kind: str,
    block: int,
    device: torch.device,
    dtype: torch.dtype,
) -> BlockPerturbation:
    """Skip decision of `kind` at `block`: none, all items, or a per-item keep mask."""
    if perturbations is None:
        return NO_PERTURBATION
    skipped = [any(p.applies(kind, block) for p in item) for item in perturbations]
    if not any(skipped):
        return NO_PERTURBATION
    if all(skipped):
        return BlockPerturbation(True, None)
    keep = torch.tensor([0.0 if s else 1.0 for s in skipped], device=device, dtype=dtype).view(-1, 1, 1)
    return BlockPerturbation(False, keep)
