"""Per-batch-item attention perturbations (the reference's `BatchedPerturbationConfig`).

`perturbations` passed to the transformer holds one entry per batch item, each a collection of
`LTX2Perturbation`. Everything here is decided from Python values, never from tensor contents, so a batched
guidance step (cond / negative / STG / isolated items in one forward) compiles with `fullgraph=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import torch

from .device_cache import device_constant


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
    """What one block must skip for one modality path: `skip_all` for every item, or `keep` (B,1,1) per item.

    `kept`: where `keep` is a 0/1 mask decided from Python values (`block_perturbation`), the indices of the items
    it keeps, so that a block can compute a skipped cross-attention for those items only (None: not known)."""

    skip_all: bool
    keep: torch.Tensor | None
    kept: tuple[int, ...] | None = None


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
    keep = device_constant(tuple(0.0 if s else 1.0 for s in skipped), device, dtype).view(-1, 1, 1)
    return BlockPerturbation(False, keep, tuple(i for i, s in enumerate(skipped) if not s))


def item_runs(items: Sequence[int]) -> list[tuple[int, int]]:
    """`[(start, stop), ...]`: the sorted batch indices `items` as runs of consecutive indices."""
    runs: list[tuple[int, int]] = []
    for i in items:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def take_items(x, items: Sequence[int] | None, batch: int):
    """`x` restricted to the batch items `items` (sorted), by slicing (a view where they are consecutive): tensors
    whose first dimension is `batch`; broadcast tensors (first dimension 1), None and `items=None` pass through;
    tuples are restricted element by element."""
    if isinstance(x, tuple):
        return tuple(take_items(t, items, batch) for t in x)
    if items is None or not isinstance(x, torch.Tensor) or x.ndim == 0 or x.shape[0] != batch:
        return x
    runs = item_runs(items)
    return torch.cat([x[a:b] for a, b in runs]) if len(runs) > 1 else x[runs[0][0] : runs[0][1]]


def add_to_items(x: torch.Tensor, update: torch.Tensor, items: Sequence[int]) -> torch.Tensor:
    """`x` with `update` (one row per entry of the sorted `items`) added to those batch items; the others unchanged."""
    pieces, row, start = [], 0, 0
    for a, b in item_runs(items):
        if start < a:
            pieces.append(x[start:a])
        pieces.append(x[a:b] + update[row : row + b - a])
        row, start = row + b - a, b
    if start < x.shape[0]:
        pieces.append(x[start:])
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


@dataclass(frozen=True)
class SharedPrefix:
    """Batch item `item` has the same inputs (latents, contexts, timesteps, positions) as item `source` and the
    same perturbations in blocks `0 .. until-1`: the transformer computes those blocks for `source` only and starts
    `item` from a copy of `source`'s hidden states at block `until` (the STG pass of a guidance step shares the
    conditional pass's prefix up to its perturbed block). The caller vouches that the inputs are equal; the
    perturbation condition is checked."""

    item: int
    source: int
    until: int


def _differs(a: tuple[LTX2Perturbation, ...], b: tuple[LTX2Perturbation, ...], block: int) -> bool:
    return any(any(p.applies(kind, block) for p in a) != any(p.applies(kind, block) for p in b) for kind in
               PERTURBATION_KINDS)  # fmt: skip


def first_divergent_block(
    perturbations: Sequence[Iterable[LTX2Perturbation]] | None, item: int, source: int, num_layers: int
) -> int:
    """The first block where items `item` and `source` are perturbed differently (`num_layers` if never)."""
    if perturbations is None:
        return num_layers
    a, b = tuple(perturbations[item] or ()), tuple(perturbations[source] or ())
    return next((block for block in range(num_layers) if _differs(a, b, block)), num_layers)


def shared_prefixes(
    perturbations: Sequence[Iterable[LTX2Perturbation]] | None, sources: dict[int, int], num_layers: int
) -> tuple[SharedPrefix, ...]:
    """`SharedPrefix` entries for `{item: source}` pairs of equal inputs, each sharing as many blocks as their
    perturbations allow; pairs that diverge at block 0 share nothing and are left out."""
    shared = (SharedPrefix(i, s, first_divergent_block(perturbations, i, s, num_layers)) for i, s in sources.items())
    return tuple(p for p in shared if p.until > 0)


def validate_shared_prefix(
    shared: Sequence[SharedPrefix] | None,
    batch_size: int,
    num_layers: int,
    perturbations: list[tuple[LTX2Perturbation, ...]] | None,
) -> tuple[SharedPrefix, ...]:
    """Checked `shared_prefix` entries (`ValueError`/`TypeError` naming the entry and what is wrong)."""
    if not shared:
        return ()
    entries = tuple(shared)
    items = [p.item for p in entries if isinstance(p, SharedPrefix)]
    for p in entries:
        if not isinstance(p, SharedPrefix):
            raise TypeError(f"shared_prefix must hold SharedPrefix entries, got {type(p).__name__}")
        for name in ("item", "source", "until"):
            value = getattr(p, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"shared_prefix {p}: {name} must be an integer")
        if not (0 <= p.item < batch_size and 0 <= p.source < batch_size) or p.item == p.source:
            raise ValueError(f"shared_prefix {p}: item and source must be two different items of the batch "
                             f"(0..{batch_size - 1})")  # fmt: skip
        if p.source in items:
            raise ValueError(f"shared_prefix {p}: the source is itself a sharing item (no chains)")
        if not 0 <= p.until <= num_layers:
            raise ValueError(f"shared_prefix {p}: until must lie in 0..{num_layers}")
        limit = first_divergent_block(perturbations, p.item, p.source, num_layers)
        if p.until > limit:
            raise ValueError(
                f"shared_prefix {p}: items {p.item} and {p.source} are perturbed differently from block {limit}"
            )
    if len(set(items)) != len(items):
        raise ValueError("shared_prefix names an item twice")
    return tuple(p for p in entries if p.until > 0)
