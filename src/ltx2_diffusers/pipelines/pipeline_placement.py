"""Placement behaviour shared by every pipeline of the family (`LTX2PipelineBase`): diffusers' group offloading,
the memory budgets and tiers (`memory.py`), the decode budget check, and the execution device of a streaming
transformer."""

from __future__ import annotations

import torch


class LTX2PlacementMixin:
    """Offloading and memory placement of the pipelines' components (methods of `LTX2PipelineBase`)."""

    def enable_group_offload(
        self,
        onload_device: torch.device,
        offload_device: torch.device = torch.device("cpu"),
        offload_type: str = "block_level",
        num_blocks_per_group: int | None = None,
        **kwargs,
    ):
        """diffusers' group offloading. `"block_level"` groups the transformer's blocks; the other components are
        offloaded leaf by leaf, since their `encode`/`decode`/`encode_waveform` entry points are not `forward`
        and would bypass a block-level group's onload hook."""
        from diffusers.hooks import apply_group_offloading

        for name, component in self.components.items():
            if not isinstance(component, torch.nn.Module) or name in self._exclude_from_cpu_offload:
                continue
            blocks = offload_type == "block_level" and name == "transformer"
            options = dict(onload_device=onload_device, offload_device=offload_device, **kwargs)
            if blocks:
                options.update(offload_type="block_level", num_blocks_per_group=num_blocks_per_group or 1)
            else:
                options.update(offload_type="leaf_level")
            if hasattr(component, "enable_group_offload"):
                component.enable_group_offload(**options)
            else:
                apply_group_offloading(module=component, **options)

    def enable_memory_budget(
        self, memory_budget_gib: float, device: torch.device | str = "cuda", *, height: int = 1024,
        width: int = 1536, num_frames: int = 121, frame_rate: float = 24.0, stage_2: bool = True,
        guidance_batch_size: int | None = None, reference_arithmetic: bool = False,
    ):  # fmt: skip
        """Place the components so that a call of this size peaks within `memory_budget_gib` GiB of `device`:
        the fastest `memory.TIERS` entry whose estimated peak fits (everything resident; the stream tier: as many
        transformer blocks resident as fit, the others streamed from pinned host memory with their distilled LoRA
        factors, the text encoder and connectors offloaded between uses; model CPU offload; group offload by block,
        then by leaf layer, with a CUDA stream; tiled decode and the distilled LoRA in pinned host memory where
        needed), applied with `enable_memory_tier`. The size arguments are those of the calls to come
        (`guidance_batch_size` and `reference_arithmetic` as passed to them: the decode's estimate is the
        channels-last walk's where those calls will walk the decoder, `memory.measure_memory_sizes`).
        Refused before anything changes: a budget that is not a finite number in `(0, memory.MAX_MEMORY_BUDGET_GIB]`,
        a device that is not one this process can place the components on ("meta" included), a size the calls
        would refuse (`height` / `width` multiples of 64, of 32 without `stage_2`; `num_frames` 8k + 1), a budget no
        tier fits (ValueError with the smallest that does), a budget only group offload fits with `compile=True`
        (`set_transformer_acceleration`), and a pipeline that already carries offload hooks (the user's placement is
        left as it is). Tiling the user set (`enable_vae_tiling` or `vae.enable_tiling`) is kept, and estimated as
        set. Returns the `MemoryTier` applied.

        Example:

        ```py
        >>> pipe = LTX2AudioToVideoPipeline.from_pretrained("path/to/converted", dtype=torch.bfloat16)
        >>> tier = pipe.enable_memory_budget(24, "cuda", height=1024, width=1536, num_frames=121)
        >>> tier.offload, tier.tiled_decode  # LTX-2.3 bf16 on CUDA, no text encoder: 7-8 blocks resident
        ('stream', False)
        ```"""
        from ..validation import check_frame_rate
        from . import memory

        budget = memory.check_memory_budget(memory_budget_gib)
        device = memory.check_device(device)  # where it is available: `enable_memory_tier`, before placing
        for name, value in (("stage_2", stage_2), ("reference_arithmetic", reference_arithmetic)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        memory.check_call_size(height, width, num_frames, stage_2)
        batch = 4 if guidance_batch_size is None else memory.check_count("guidance_batch_size", guidance_batch_size)
        sizes = memory.measure_memory_sizes(
            self, height=height, width=width, num_frames=num_frames, frame_rate=check_frame_rate(frame_rate),
            stage_2=stage_2, passes_per_forward=min(memory.guidance_pass_count(self), batch), device=device,
            reference_arithmetic=reference_arithmetic,
        )  # fmt: skip
        self._check_no_offload_hooks()
        tier = memory.choose_memory_tier(budget, sizes, compile_blocks=self.transformer_acceleration.compile is True)
        self.enable_memory_tier(tier, device)
        if memory.walk_decode_budgeted(sizes, tier.offload, tier.tiled_decode):
            self._walk_decode_budget = (device, memory_budget_gib, sizes.decode - sizes.decode_walk)
        return tier

    def check_decode_budget(self, reference_arithmetic: bool, output_type: str) -> None:
        """Refuse (ValueError, before any compute) a `reference_arithmetic=True` call that decodes video under a
        budget that counted the channels-last walk's whole decode (`enable_memory_budget` without
        `reference_arithmetic`, `memory.walk_decode_budgeted`): such calls decode through `vae.decode`, about 1.6x
        the walk's memory, whole or per tile. Nothing is refused once the VAE no longer walks at all (the user's own
        offload hooks or VAE switches since: every call then decodes through `vae.decode`, as the user set it)."""
        budgeted = getattr(self, "_walk_decode_budget", None)
        if budgeted is None or not reference_arithmetic or output_type == "latent":
            return
        device, gib, extra = budgeted
        if self._channels_last_decode_on(device, reference_arithmetic=False):
            raise ValueError(
                f"reference_arithmetic=True decodes through vae.decode, but enable_memory_budget({gib}) counted the "
                f"channels-last decode, about {extra / 2**30:.1f} GiB less at its size: call "
                "enable_memory_budget(..., reference_arithmetic=True) for these calls"
            )

    def enable_memory_tier(self, tier, device: torch.device | str = "cuda"):
        """Apply a `memory.MemoryTier` with diffusers' mechanisms: `to(device)`, block streaming
        (`block_streaming.enable_block_streaming`), `enable_model_cpu_offload` or `enable_group_offload` (block or
        leaf level; a CUDA stream on CUDA), `enable_vae_tiling` (never turned off here; tiling the user set, ours or
        the video VAE's own, is kept as it is), and the distilled LoRA's factors on the device or in pinned host
        memory. A pipeline that already carries offload hooks is refused (ValueError naming the components)."""
        from .block_streaming import enable_block_streaming
        from .memory import MemoryTier, check_placement_device, place_distilled_lora

        if not isinstance(tier, MemoryTier):
            raise TypeError(f"tier must be a memory.MemoryTier, got {type(tier).__name__}")
        if tier.offload == "stream" and tier.resident_blocks is None:
            raise ValueError(
                "tier.resident_blocks is None: a stream tier needs its count of resident blocks "
                "(enable_memory_budget / memory.choose_memory_tier choose it, or dataclasses.replace(tier, "
                "resident_blocks=K))"
            )
        device = check_placement_device(device)
        self._check_no_offload_hooks()
        self._walk_decode_budget = None  # `enable_memory_budget` sets it after this: `check_decode_budget`
        if tier.tiled_decode and self.vae_tiling is None and not getattr(self.vae, "use_tiling", False):
            self.enable_vae_tiling()
        if tier.offload == "none":
            self.to(device)
        elif tier.offload == "stream":
            place_distilled_lora(self.distilled_lora, tier.lora_location, device)
            enable_block_streaming(self, device, tier.resident_blocks, tier.text_offload)
        elif tier.offload == "model":
            if tier.lora_location == "host":  # hooked like a model outside the chain: it stays on the host
                self._exclude_from_cpu_offload = [n for n in self._exclude_from_cpu_offload if n != "distilled_lora"]
            self.enable_model_cpu_offload(device=device)
        else:
            self.enable_group_offload(
                onload_device=device,
                offload_device=torch.device("cpu"),
                offload_type="block_level" if tier.offload == "group-block" else "leaf_level",
                num_blocks_per_group=1,
                use_stream=device.type == "cuda",
            )
        place_distilled_lora(self.distilled_lora, tier.lora_location, device)
        self._memory_tier = tier

    @property
    def _execution_device(self):
        # A streaming transformer (memory tier "stream") computes on its streamer's device; the other components
        # carry offload hooks naming the same device.
        streamer = getattr(getattr(self, "transformer", None), "_block_streamer", None)
        return streamer.device if streamer is not None else super()._execution_device

    def _check_no_offload_hooks(self) -> None:
        from .memory import has_offload_hooks

        hooked = has_offload_hooks(self)
        if getattr(getattr(self, "transformer", None), "_block_streamer", None) is not None:
            hooked = sorted({*hooked, "transformer"})  # its blocks stream (memory tier "stream")
        if hooked:
            applied = getattr(self, "_memory_tier", None)
            by = f"memory tier {applied}" if applied is not None else "the user"
            raise ValueError(
                f"the components {hooked} already carry offload hooks (set by {by}); a memory budget does not "
                "replace them: load the pipeline again, or remove them first (`remove_all_hooks()` for model or "
                "sequential offload)"
            )
