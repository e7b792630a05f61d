"""Memory tiers: where the pipeline's components live for a given accelerator memory budget.

A `MemoryTier` names one placement, with diffusers' own mechanisms: everything resident (`pipe.to`), model CPU
offload (`enable_model_cpu_offload`: the transformer leaves the device before the decode, the VAE and the others
during denoising), group offload by transformer block or by leaf layer with CUDA streams (`enable_group_offload`),
plus whether the video VAE decodes in tiles (`enable_vae_tiling`) and where the distilled LoRA's factors live (on
the device, or in pinned host memory, copied to each weight's device as stage 2 uses them).

`measure_memory_sizes(pipe, ...)` measures what a call needs (the bytes of every component's parameters and
buffers, and activation estimates for the call's shape from the transformer and VAE configs);
`choose_memory_tier(budget_bytes, sizes)` (pure) returns the fastest tier whose estimated peak fits the budget
(the activation estimates: `memory_estimates.py`, re-exported here).
Tiers, fastest first (`TIERS`):

| tier | offload | decode | distilled LoRA |
|---|---|---|---|
| resident | none | whole | device |
| stream | `BlockStreamer`: K blocks resident, the others streamed from pinned host memory; the text encoder and connectors on the device only from their use to the next transformer forward (or layer by layer) | whole, else tiled | host, streamed with its block |
| model | `enable_model_cpu_offload` | tiled | device, then host |
| group-block | block-level group offload, one block per group, CUDA stream | tiled | device, then host |
| group-leaf | leaf-level group offload, CUDA stream | tiled | device, then host |

Estimated peaks (`estimated_peak`; W = weight bytes, A = activation bytes, L = the LoRA factors when on the
device, T = `lora_transient`):

- resident: `W_transformer + W_others + W_unchained + L + max(A_stage_1, A_stage_2 + T, A_decode)`;
- stream with K resident blocks: `W_transformer_outside_blocks + K * W_block + W_kept + max(STREAM_SLOTS *
  (W_block + L / N) + max(A_stage_1, A_stage_2 + T), W_text, A_decode)`. N is the number of blocks; `W_text` the
  larger of the text encoder and the connectors (each on the device only from its use to the other's, or to the
  next transformer forward); `W_kept` the other components and `W_unchained` (resident). The slots are freed at
  the end of each stage. K is the largest count that fits (`stream_resident_blocks`). Streaming costs at most
  3.2 % per forward on an H200: a block's copy (15 ms at 49 GiB/s) hides under its 26 ms of stage-1 compute
  (`benchmarks/block_streaming.py`). So the stream tier with a whole decode, even with no block resident, comes
  before its tiled-decode variant and before the offloading tiers. Its variants with `text_offload="layers"` count
  `W_text = W_others_held_by_parents + 2 * W_largest_other_leaf` (leaf-level group offload of the text encoder and
  connectors: for a text encoder, such as Gemma's 23 GiB, larger than the budget leaves);
- model: `L + W_unchained + max(largest chained W_other, W_transformer + max(A_stage_1, A_stage_2 + T,
  W_upsampler), W_vae + A_decode_tiled)` (each model of `model_cpu_offload_seq` is on the device only while it
  runs, except that the upsampler runs before the transformer leaves; models outside the chain stay once used);
- group-block: `L + max(W_transformer_outside_blocks + 2 * W_largest_block + max(A_stage_1, A_stage_2 + T),
  W_others_held_by_parents + 2 * W_largest_other_leaf + A_decode_tiled)` (with a stream one group computes while
  the next is copied);
- group-leaf: as group-block with `W_transformer_held_by_parents + 2 * W_largest_transformer_leaf`.

A tier fits when its peak is at most `(1 - MEMORY_MARGIN)` of the budget: the margin covers the caching
allocator's fragmentation and what the estimates leave out (text-encoder, audio-VAE and upsampler activations).
Every tier computes the same latents. The frames are the same too, except that a tiled decode (ltx-core's,
`enable_vae_tiling`) blends overlapping tiles and so differs from the whole decode near the tile seams when the video
is larger than a tile, and that on CUDA a tier with offload hooks on the video VAE decodes through `vae.decode`
while the others use the channels-last walk of the same decoder (`models.video_vae_decode`; equal up to rounding).
So `A_decode` is the walk's in the tiers that leave the VAE unhooked (resident, stream) where calls on the placement's
device will walk it (`LTX2PipelineBase._channels_last_decode_on`; `walk_activation_bytes`: 12.1 GiB at 121 x 1024 x
1536 with LTX-2.3), else `vae.decode`'s (19.9 GiB); a tiled decode counts `vae.decode`'s per tile (an upper bound).
Tiling the user set (`enable_vae_tiling`, or the video VAE's own `vae.enable_tiling`) is kept by every tier and is
what the tiled decode's estimate counts.
A `reference_arithmetic=True` call (which decodes through `vae.decode`) under a budget that counted the walk is
refused before it computes (`check_decode_budget`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from ..models.video_vae_tiling import VideoTilingConfig
from ..utils.hooks import placed_by_offload
from ..validation import check_real
from . import ltx2_stages as stages
from .memory_estimates import (  # noqa: F401 (the estimates are part of this module's interface)
    DECODER_LIVE_TENSORS,
    FLOAT32_BYTES,
    WALK_LIVE_TENSORS,
    decode_bytes,
    decoder_activation_bytes,
    ltx_tiled_decode_bytes,
    transformer_activation_bytes,
    walk_activation_bytes,
)


GIB = 2**30
MEMORY_MARGIN = 0.1
#: The CLI's budget on CUDA without `--memory-budget-gib` / `--offload`: at most this, or the free memory if less.
#: Streaming blocks costs at most 3.2 % per forward (module docstring), so the default holds the peak to the reference's
#: (ltx-pipelines 1.0 peaks at 40.4 GiB) instead of filling the GPU.
DEFAULT_MEMORY_BUDGET_GIB = 40.0
#: The largest `memory_budget_gib` accepted (1 PiB, far above any accelerator's memory); a larger one is refused
#: (ValueError) instead of overflowing the byte count.
MAX_MEMORY_BUDGET_GIB = 2.0**20
OFFLOAD_KINDS = ("none", "stream", "model", "group-block", "group-leaf")
STREAM_SLOTS = 2  # device slots of a streaming transformer (one computes while the next is copied)
#: Used once per call, before the denoising: a streaming tier brings them to the device for that only.
TEXT_COMPONENTS = ("text_encoder", "connectors")
#: How a stream tier places them: "hook" (each whole on the device from its use to the other's or the next
#: transformer forward), "layers" (diffusers' leaf-level group offload: for a text encoder larger than the room).
TEXT_OFFLOADS = ("hook", "layers")
LORA_LOCATIONS = ("device", "host")
#: Offloads that leave the video VAE unhooked: their whole decode walks channels-last where the pipeline would.
VAE_UNHOOKED_OFFLOADS = ("none", "stream")


@dataclass(frozen=True)
class MemoryTier:
    """One placement of the pipeline's components.

    `offload`: "none" (everything on the device), "stream" (`resident_blocks` transformer blocks on the device, the
    others streamed from pinned host memory, `block_streaming`), "model" (diffusers' model CPU offload),
    "group-block" / "group-leaf" (diffusers' group offload by transformer block or by leaf layer, with a CUDA stream
    on CUDA);
    `tiled_decode`: the video VAE decodes in tiles; `lora_location`: the distilled LoRA's factors on the "device"
    or on the "host" (pinned, copied to each weight's device when stage 2 forms `W + delta`)."""

    name: str
    offload: str
    tiled_decode: bool
    lora_location: str = "device"
    resident_blocks: int | None = None
    text_offload: str = "hook"

    def __post_init__(self):
        if self.offload not in OFFLOAD_KINDS:
            raise ValueError(f"offload must be one of {OFFLOAD_KINDS}, got {self.offload!r}")
        if self.lora_location not in LORA_LOCATIONS:
            raise ValueError(f"lora_location must be one of {LORA_LOCATIONS}, got {self.lora_location!r}")
        if self.offload == "stream" and self.lora_location != "host":
            raise ValueError("a streaming tier keeps the distilled LoRA on the host (streamed with its block)")
        if self.resident_blocks is not None and (
            self.offload != "stream" or isinstance(self.resident_blocks, bool)
            or not isinstance(self.resident_blocks, int) or self.resident_blocks < 0
        ):  # fmt: skip
            raise ValueError(f"resident_blocks is a count >= 0 of a streaming tier, got {self.resident_blocks!r}")
        if self.text_offload not in TEXT_OFFLOADS or (self.text_offload != "hook" and self.offload != "stream"):
            raise ValueError(
                f"text_offload is one of {TEXT_OFFLOADS} (layers: stream tiers only), got {self.text_offload!r}"
            )

    def __str__(self) -> str:
        decode = "tiled decode" if self.tiled_decode else "whole decode"
        if self.offload == "stream":
            kept = "K blocks (to choose)" if self.resident_blocks is None else f"{self.resident_blocks} blocks"
            text = "; text encoder and connectors offloaded layer by layer" if self.text_offload == "layers" else ""
            return f"{self.name} ({kept} resident, the others streamed; {decode}, distilled LoRA streamed{text})"
        return f"{self.name} ({decode}, distilled LoRA on the {self.lora_location})"


TIERS = (
    MemoryTier("resident", "none", tiled_decode=False),
    MemoryTier("stream", "stream", tiled_decode=False, lora_location="host"),
    MemoryTier("stream", "stream", tiled_decode=True, lora_location="host"),
    MemoryTier("stream", "stream", tiled_decode=False, lora_location="host", text_offload="layers"),
    MemoryTier("stream", "stream", tiled_decode=True, lora_location="host", text_offload="layers"),
    MemoryTier("model", "model", tiled_decode=True),
    MemoryTier("model", "model", tiled_decode=True, lora_location="host"),
    MemoryTier("group-block", "group-block", tiled_decode=True),
    MemoryTier("group-block", "group-block", tiled_decode=True, lora_location="host"),
    MemoryTier("group-leaf", "group-leaf", tiled_decode=True),
    MemoryTier("group-leaf", "group-leaf", tiled_decode=True, lora_location="host"),
)


@dataclass(frozen=True)
class MemorySizes:
    """Bytes one call needs on the accelerator, by part (`measure_memory_sizes`).

    Weights: `transformer` (all of it), `transformer_block` (its largest block), `transformer_outside_blocks`
    (what a block-level offload keeps on the device for the whole forward), `transformer_blocks` (how many),
    `transformer_leaf` (its largest
    leaf layer), `transformer_held_by_parents` (parameters of non-leaf modules); `others`: the other components
    of `model_cpu_offload_seq` by name; `unchained`: the components outside it (the distilled LoRA excluded);
    `others_leaf` / `others_held_by_parents`: largest leaf and non-leaf parameters of all non-transformer
    components; `lora`: the distilled LoRA's factors;
    `lora_transient`: the largest `W + delta` pair stage 2 forms at once. Activations: `stage_1`, `stage_2`,
    `decode` (`vae.decode`, as the user set the VAE up: whole, or tiled where they turned tiling on), `decode_tiled`
    (the user's tiling where they set one, `enable_vae_tiling` or the VAE's own; else ltx-core's default tiles),
    `decode_walk` (whole through the channels-last walk, where `VAE_UNHOOKED_OFFLOADS` tiers walk; else None)."""

    transformer: int
    transformer_block: int
    transformer_outside_blocks: int
    transformer_leaf: int
    transformer_held_by_parents: int
    transformer_blocks: int = 0
    others: Mapping[str, int] = field(default_factory=dict)
    others_leaf: int = 0
    others_held_by_parents: int = 0
    unchained: int = 0
    lora: int = 0
    lora_transient: int = 0
    stage_1: int = 0
    stage_2: int = 0
    decode: int = 0
    decode_tiled: int = 0
    decode_walk: int | None = None

    def __post_init__(self):
        for name, value in vars(self).items():
            if name == "decode_walk" and value is None:
                continue
            values = value.values() if isinstance(value, Mapping) else [value]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"MemorySizes.{name} must hold byte counts (ints >= 0), got {value!r}")


def walk_decode_budgeted(sizes: MemorySizes, offload: str, tiled_decode: bool) -> bool:
    """Whether a tier's estimate counts the channels-last walk's whole decode (`sizes.decode_walk`): a whole
    decode, measured as walked, by a tier that leaves the VAE unhooked."""
    return not tiled_decode and sizes.decode_walk is not None and offload in VAE_UNHOOKED_OFFLOADS


def _decode(sizes: MemorySizes, offload: str, tiled_decode: bool) -> int:
    """`A_decode` of a tier (module docstring): tiled, the walk's where it leaves the VAE unhooked, or vae.decode's."""
    if tiled_decode:
        return sizes.decode_tiled
    return sizes.decode_walk if walk_decode_budgeted(sizes, offload, tiled_decode) else sizes.decode


def _stream_base(sizes: MemorySizes, tiled_decode: bool, text_layers: bool = False) -> int:
    """Peak bytes of a streaming tier besides its resident blocks (module docstring)."""
    stages_peak = max(sizes.stage_1, sizes.stage_2 + sizes.lora_transient)
    decode = _decode(sizes, "stream", tiled_decode)
    text = max((v for k, v in sizes.others.items() if k in TEXT_COMPONENTS), default=0)  # one at a time
    if text_layers:  # leaf-level group offload: two leaves (one computes, the next is copied) and the parents
        text = sizes.others_held_by_parents + 2 * sizes.others_leaf
    kept = sum(v for k, v in sizes.others.items() if k not in TEXT_COMPONENTS) + sizes.unchained
    slot = sizes.transformer_block + -(-sizes.lora // max(sizes.transformer_blocks, 1))
    return sizes.transformer_outside_blocks + kept + max(STREAM_SLOTS * slot + stages_peak, text, decode)


def stream_resident_blocks(
    budget_bytes: float, sizes: MemorySizes, tiled_decode: bool, text_layers: bool = False
) -> int | None:
    """The most blocks a streaming tier keeps resident within `budget_bytes` (None: not even with none)."""
    room = budget_bytes - _stream_base(sizes, tiled_decode, text_layers)
    if room < 0:
        return None
    if sizes.transformer_block == 0:
        return sizes.transformer_blocks
    return min(sizes.transformer_blocks, int(room // sizes.transformer_block))


def estimated_peak(tier: MemoryTier, sizes: MemorySizes) -> int:
    """Peak accelerator bytes of one call under `tier` (the formulas in the module docstring; a streaming tier
    without `resident_blocks` counts none)."""
    lora = sizes.lora if tier.lora_location == "device" else 0
    stages_peak = max(sizes.stage_1, sizes.stage_2 + sizes.lora_transient)
    decode = _decode(sizes, tier.offload, tier.tiled_decode)
    others = dict(sizes.others)
    if tier.offload == "stream":
        base = _stream_base(sizes, tier.tiled_decode, tier.text_offload == "layers")
        return base + (tier.resident_blocks or 0) * sizes.transformer_block
    if tier.offload == "none":
        weights = sizes.transformer + sum(others.values()) + sizes.unchained
        return weights + lora + max(stages_peak, decode)
    if tier.offload == "model":
        chained = [v for k, v in others.items() if k not in ("vae", "latent_upsampler")]
        return (
            lora
            + sizes.unchained
            + max(
                max(chained, default=0),
                sizes.transformer + max(stages_peak, others.get("latent_upsampler", 0)),
                others.get("vae", 0) + decode,
            )
        )
    if tier.offload == "group-block":
        transformer = sizes.transformer_outside_blocks + 2 * sizes.transformer_block
    else:
        transformer = sizes.transformer_held_by_parents + 2 * sizes.transformer_leaf
    return lora + max(transformer + stages_peak, sizes.others_held_by_parents + 2 * sizes.others_leaf + decode)


def choose_memory_tier(
    budget_bytes: int, sizes: MemorySizes, margin: float = MEMORY_MARGIN, *, compile_blocks: bool = False
) -> MemoryTier:
    """The first of `TIERS` (fastest first) whose `estimated_peak` is at most `(1 - margin) * budget_bytes`.
    ValueError naming `memory_budget_gib` and the smallest budget that fits when none does; with
    `compile_blocks` (`compile=True`: group offload's hooks inside the blocks cannot be compiled) also when only a
    group-offload tier fits."""
    usable = budget_bytes * (1 - margin)
    for tier in TIERS:
        if tier.offload == "stream" and tier.resident_blocks is None:
            resident = stream_resident_blocks(usable, sizes, tier.tiled_decode, tier.text_offload == "layers")
            if resident is not None:
                return replace(tier, resident_blocks=resident)
            continue
        if estimated_peak(tier, sizes) <= usable:
            if compile_blocks and tier.offload.startswith("group"):
                raise ValueError(
                    f"memory_budget_gib={budget_bytes / GIB:.4g} fits only group offload ({tier}), whose hooks sit "
                    "inside the transformer blocks, which compile=True cannot compile; use "
                    "set_transformer_acceleration(compile='auto') (eager there) or a larger budget"
                )
            return tier
    smallest = min(TIERS, key=lambda tier: estimated_peak(tier, sizes))
    needed = estimated_peak(smallest, sizes) / (1 - margin)
    raise ValueError(
        f"memory_budget_gib={budget_bytes / GIB:.4g} fits no memory tier: the smallest, {smallest}, needs "
        f"memory_budget_gib >= {math.ceil(needed / GIB * 100) / 100:.2f} for this call (its estimated peak "
        f"{estimated_peak(smallest, sizes) / GIB:.2f} GiB plus a {margin:.0%} margin); lower height, width, "
        "num_frames or guidance_batch_size"
    )


def check_memory_budget(memory_budget_gib, name: str = "memory_budget_gib") -> int:
    """The budget in bytes: a finite real number of GiB in `(0, MAX_MEMORY_BUDGET_GIB]` (TypeError / ValueError
    naming `name`)."""
    integral = isinstance(memory_budget_gib, numbers.Integral) and not isinstance(memory_budget_gib, bool)
    value = (
        float("inf") if integral and memory_budget_gib > MAX_MEMORY_BUDGET_GIB else check_real(name, memory_budget_gib)
    )
    if value <= 0:
        raise ValueError(f"{name} must be > 0 GiB, got {memory_budget_gib!r}")
    if value > MAX_MEMORY_BUDGET_GIB:  # (an int too large for a float included)
        raise ValueError(
            f"{name} must be at most {MAX_MEMORY_BUDGET_GIB:.0f} GiB (1 PiB, above any accelerator's memory), "
            f"got {memory_budget_gib!r}"
        )
    return int(value * GIB)


def check_device(device, name: str = "device") -> torch.device:
    """A `torch.device` from a device or its name, not "meta" (TypeError / ValueError naming `name`)."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a torch device or its name such as 'cuda', got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{name} must be a torch device or its name such as 'cuda', got {device!r}") from None
    if device.type == "meta":
        raise ValueError(
            f"{name}='meta' holds no values: placing the components there would drop their weights; pass a device "
            "such as 'cuda' or 'cpu'"
        )
    return device


def check_placement_device(device, name: str = "device") -> torch.device:
    """`check_device`, and a device this process can place the components on: the CPU, or an available
    accelerator of that type with that index (ValueError naming `name`)."""
    device = check_device(device, name)
    if device.type == "cpu":
        return device
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    count = torch.accelerator.device_count() if accelerator is not None else 0
    if accelerator is None or accelerator.type != device.type or (device.index or 0) >= count:
        here = "no accelerator" if accelerator is None else f"{count} {accelerator.type} device(s)"
        raise ValueError(
            f"{name}={str(device)!r} is not available in this process ({here}); pass 'cpu' or one of them"
        )
    return device


def check_count(name: str, value) -> int:
    """A positive int (TypeError / ValueError naming `name`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def check_call_size(height, width, num_frames, stage_2: bool) -> None:
    """The output size of the calls a budget is for, as the pipelines' `check_inputs` accepts it: `height` and
    `width` positive multiples of 64 with `stage_2` (32 without), `num_frames` 8k + 1 (TypeError / ValueError
    naming the argument and the valid values)."""
    multiple = 64 if stage_2 else 32
    for name, value in (("height", height), ("width", width)):
        check_count(name, value)
        if value % multiple:
            raise ValueError(
                f"{name} must be a positive multiple of {multiple} ({'two stages' if stage_2 else 'one stage'}), "
                f"got {value!r}"
            )
    check_count("num_frames", num_frames)
    if (num_frames - 1) % 8:
        raise ValueError(f"num_frames must be 8k + 1 (1, 9, 17, ..., 121), got {num_frames!r}")


# ---------------------------------------------------------------------------------------------------- measuring
def module_bytes(module: torch.nn.Module | None) -> int:
    """Bytes of a module's parameters and buffers (0 for None or a non-module)."""
    if not isinstance(module, torch.nn.Module):
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _own_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _leaf_sizes(modules) -> tuple[int, int]:
    """`(largest leaf layer, bytes held by modules with children)` over `modules`."""
    leaf = held = 0
    for module in modules:
        for sub in module.modules():
            if any(True for _ in sub.children()):
                held += _own_bytes(sub)
            else:
                leaf = max(leaf, _own_bytes(sub))
    return leaf, held


def _block_sizes(transformer: torch.nn.Module) -> tuple[int, int]:
    """`(largest block, bytes outside the block lists)`: diffusers' block-level groups are the entries of the
    module's direct `ModuleList` / `Sequential` children."""
    blocks = [
        block
        for child in transformer.children()
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential))
        for block in child
    ]
    largest = max((module_bytes(block) for block in blocks), default=0)
    return largest, module_bytes(transformer) - sum(module_bytes(block) for block in blocks)


def _lora_transient(store, dtype_bytes: int) -> int:
    """Bytes of the largest `delta` and `W + delta` pair, plus its factors copied in the weight dtype."""
    largest = 0
    for a, b in store.pairs().values():
        out_features, rank, in_features = b.shape[0], a.shape[0], a.shape[1]
        largest = max(largest, (2 * out_features * in_features + rank * (in_features + out_features)) * dtype_bytes)
    return largest


def guidance_pass_count(pipe) -> int:
    """Passes of a stage-1 step of the pipeline's default recipe (`version_defaults`)."""
    from ..guidance import guidance_passes

    defaults = pipe.version_defaults()
    if defaults.video_guidance is None and defaults.audio_guidance is None:
        return 1
    from ..guidance import MultiModalGuidance

    video = defaults.video_guidance or MultiModalGuidance.disabled()
    return len(guidance_passes(video, defaults.audio_guidance, step_index=0))


def measure_memory_sizes(
    pipe, *, height: int, width: int, num_frames: int, frame_rate: float = 24.0, stage_2: bool = True,
    passes_per_forward: int = 4, text_tokens: int = 1024, device=None, reference_arithmetic: bool = False,
) -> MemorySizes:  # fmt: skip
    """`MemorySizes` of a call of `pipe` at this output size: its components' bytes as they are now (dtype,
    quantization, user adapters included) and the activation estimates (stage 1 at half size with `stage_2`,
    `passes_per_forward` guidance passes batched; stage 2 one pass at full size; `decode_walk` where calls on
    `device` with that `reference_arithmetic` walk the decoder, as `pipe._channels_last_decode_on` says)."""
    transformer, vae = pipe.transformer, pipe.vae
    act_bytes = max(2, transformer.dtype.itemsize)  # float8 weights compute in bfloat16
    audio_tokens = stages.audio_latent_frames(num_frames / frame_rate)
    full = stages.video_latent_size(num_frames, height, width)
    first = stages.video_latent_size(num_frames, height // 2, width // 2) if stage_2 else full
    config = transformer.config
    stage_1 = transformer_activation_bytes(
        config, passes_per_forward, math.prod(first), audio_tokens, text_tokens, act_bytes
    )
    stage_2_bytes = transformer_activation_bytes(config, 1, math.prod(full), audio_tokens, text_tokens, act_bytes)
    lora = pipe.distilled_lora if stage_2 else None
    chain = set(pipe.model_cpu_offload_seq.split("->"))
    other_modules = {
        name: module
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module) and name not in ("transformer", "distilled_lora")
    }
    others_leaf, others_held = _leaf_sizes(other_modules.values())
    block, outside = _block_sizes(transformer)
    leaf, held = _leaf_sizes([transformer])
    user_tiling = getattr(pipe, "vae_tiling", None)
    # The video VAE's own (diffusers') tiling the user turned on is kept by every tier (`enable_memory_tier`).
    vae_tiling = user_tiling is None and bool(getattr(vae, "use_tiling", False))
    if vae_tiling:
        tiled_decode = decode_bytes(vae, *full, tiled=True)
    else:
        tiled_decode = ltx_tiled_decode_bytes(vae, *full, user_tiling or VideoTilingConfig())
    # A tier without a tiled decode of its own decodes as the user set it up (tiled, if they turned tiling on).
    if user_tiling is not None or vae_tiling:
        whole_decode = tiled_decode
    else:
        whole_decode = decode_bytes(vae, *full, tiled=False)
    walk = None
    if user_tiling is None and device is not None:
        with torch.no_grad():  # as the call decodes
            if pipe._channels_last_decode_on(check_device(device), reference_arithmetic):
                walk = decode_bytes(vae, *full, tiled=False, walk=True)
    return MemorySizes(
        transformer=module_bytes(transformer),
        transformer_block=block,
        transformer_outside_blocks=outside,
        transformer_leaf=leaf,
        transformer_held_by_parents=held,
        transformer_blocks=len(transformer.transformer_blocks),
        others={name: module_bytes(m) for name, m in other_modules.items() if name in chain},
        others_leaf=others_leaf,
        others_held_by_parents=others_held,
        unchained=sum(module_bytes(m) for name, m in other_modules.items() if name not in chain),
        lora=module_bytes(pipe.distilled_lora),
        lora_transient=0 if lora is None else _lora_transient(lora, act_bytes),
        stage_1=stage_1,
        stage_2=stage_2_bytes if stage_2 else 0,
        decode=whole_decode,
        decode_tiled=tiled_decode,
        decode_walk=walk,
    )


# ---------------------------------------------------------------------------------------------------- placing
def has_offload_hooks(pipe) -> list[str]:
    """Names of the components that carry accelerate or diffusers offload hooks (model, sequential, group)."""
    hooked = []
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        if placed_by_offload(module):
            hooked.append(name)
    return hooked


def place_distilled_lora(store, location: str, device: torch.device) -> None:
    """The distilled LoRA's factors on `device`, or on the host (pinned when `device` is CUDA, so that their
    copies to each weight's device are asynchronous)."""
    if store is None:
        return
    if location == "device":
        store.to(device)
        return
    store.to("cpu")
    if device.type == "cuda":
        for name, tensor in list(store.named_buffers()):
            if not tensor.is_pinned():
                setattr(store, name, tensor.pin_memory())
