"""`LTX2AudioVideoTransformer`: the LTX-2 / LTX-2.3 dual-stream (video + audio) diffusion transformer."""

from __future__ import annotations

import functools
import math
import numbers
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_ltx2 import AudioVisualModelOutput
from diffusers.utils import apply_lora_scale, logging

from ..loaders.component_save import SafeSaveMixin
from ..loaders.prefetch import ReadAheadWaitMixin
from ..loaders.safetensors_only import SafetensorsOnlyMixin
from ..loaders.single_file_model import FromOriginalCheckpointMixin
from ..parallel import (
    TRANSFORMER_CP_PLAN,
    VideoOutput,
    VideoTokens,
    assign_attention_roles,
    check_context_parallel_inputs,
    check_parallel_config,
    context_parallel_config,
    resolve_parallel_config_without_accelerator,
    shard_video_tokens,
)
from ..validation import (
    MAX_CONTEXT_ABS,
    MAX_EMBEDDED_VALUE,
    MAX_NORMALISED_INPUT_ABS,
    CheckedConfigMixin,
    check_all_bounded,
    check_frame_rate,
    check_lora_strength,
    check_real,
    is_compute_float,
    shown,
)
from .device_cache import device_constant
from .modulation import AdaLayerNormSingle
from .perturbations import (
    NO_PERTURBATION,
    BlockPerturbation,
    LTX2Perturbation,
    SharedPrefix,
    block_perturbation,
    validate_perturbations,
    validate_shared_prefix,
)
from .rope import ROPE_TYPES, rope_frequencies
from .rope import audio_coords as build_audio_coords
from .rope import video_coords as build_video_coords
from .transformer_block import LTX2AVTransformerBlock


logger = logging.get_logger(__name__)


def checked_lora_scale(forward):
    """`attention_kwargs["scale"]` (the LoRA scale diffusers' `apply_lora_scale` applies to every adapter before the
    forward) checked first, as every LoRA strength (`validation.check_lora_strength`: 1e30 gave NaN outputs), and the
    user's adapter scalings restored exactly after the forward: diffusers undoes a scale of 0 by resetting every
    active adapter to weight 1 (the `set_adapters` weights lost) and another scale by a division (rounding)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        attention_kwargs = kwargs.get("attention_kwargs")
        if not isinstance(attention_kwargs, dict) or "scale" not in attention_kwargs:
            return forward(self, *args, **kwargs)
        if check_lora_strength('attention_kwargs["scale"]', attention_kwargs["scale"]) == 1.0:
            return forward(self, *args, **kwargs)  # diffusers leaves the layers alone
        saved = [(m.scaling, dict(m.scaling)) for m in self.modules() if isinstance(getattr(m, "scaling", None), dict)]
        try:
            return forward(self, *args, **kwargs)
        finally:
            for scaling, values in saved:
                scaling.clear()
                scaling.update(values)

    return wrapper


# Why timesteps, sigmas and coordinates are bounded by `validation.MAX_EMBEDDED_VALUE`, and the others.
_EMBEDDED_WHY = "timesteps (sigma x 1000) and positions (seconds, pixels) beyond 2**24 are float32 rounding noise"
_LATENTS_WHY = "latents, RMS-normalised inside the blocks"
_CONTEXT_WHY = "post-connector contexts are RMS-normalised per token"
#: ids of the transformers whose callers vouch for the forwards' input values, in this thread / context only
_VALUES_CHECKED_BY_CALLER: ContextVar[frozenset[int]] = ContextVar(
    "ltx2_values_checked_by_caller", default=frozenset()
)


@contextmanager
def values_checked_by_caller(transformer):
    """While a pipeline's denoising loop runs a stage's later steps, `transformer`'s forwards called from this thread
    (this context) skip their own scan of their inputs' values (finite, within bounds: one device sync per forward,
    which kept the host from queuing the next forward while the GPU computed). The loop vouches for those inputs
    instead: the first step's forward checks them as usual, and the loop checks the latents after the first step
    and at the stage's end (`pipelines.ltx2_denoise.check_stage_latents`). Nothing is set on the module: another
    thread, or a direct call outside the loop, still checks everything."""
    module = transformer
    while hasattr(module, "_orig_mod"):  # torch.compile wrappers: the module they run
        module = module._orig_mod
    token = _VALUES_CHECKED_BY_CALLER.set(_VALUES_CHECKED_BY_CALLER.get() | {id(module)})
    try:
        yield
    finally:
        _VALUES_CHECKED_BY_CALLER.reset(token)


class LTX2AudioVideoTransformer(
    SafeSaveMixin,
    SafetensorsOnlyMixin,
    ReadAheadWaitMixin,
    CheckedConfigMixin,
    ModelMixin,
    ConfigMixin,
    AttentionMixin,
    PeftAdapterMixin,
    CacheMixin,
    FromOriginalCheckpointMixin,
):
    r"""The LTX-2 (19B) / LTX-2.3 (22B) audio-video transformer, numerically identical to ltx-core's `LTXModel`.

    A drop-in for diffusers' `LTX2VideoTransformer3DModel` (same config keys and defaults, state-dict names and
    `forward` arguments), plus `forward(..., perturbations=...)`: one collection of `LTX2Perturbation` per batch
    item, so the passes of a guidance step can run as one batched forward.

    Timesteps are scaled like diffusers' (`sigma * timestep_scale_multiplier`). LTX-2.3 checkpoints set
    `gated_attn`, `cross_attn_mod` (and the audio counterparts) and `use_prompt_embeddings=False`.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["LTX2AVTransformerBlock"]
    _repeated_blocks = ["LTX2AVTransformerBlock"]
    _skip_layerwise_casting_patterns = ["norm", "scale_shift_table"]
    #: `pipelines.block_streaming.BlockStreamer` while some blocks stream from host memory (a memory tier).
    _block_streamer = None
    _cp_plan = TRANSFORMER_CP_PLAN  # video tokens sharded, audio replicated: see parallel.py
    #: Config keys that must be numbers > 0 (`validation.CheckedConfigMixin`; the model divides or sizes by them).
    _positive_config_keys = (
        "in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "cross_attention_dim",
        "vae_scale_factors", "pos_embed_max_pos", "base_height", "base_width", "audio_in_channels",
        "audio_out_channels", "audio_num_attention_heads", "audio_attention_head_dim", "audio_cross_attention_dim",
        "audio_scale_factor", "audio_pos_embed_max_pos", "audio_sampling_rate", "audio_hop_length", "num_layers",
        "norm_eps", "caption_channels", "rope_theta", "timestep_scale_multiplier",
        "cross_attn_timestep_scale_multiplier",
    )  # fmt: skip

    @register_to_config
    def __init__(
        self,
        in_channels: int = 128,
        out_channels: int | None = 128,
        patch_size: int = 1,
        patch_size_t: int = 1,
        num_attention_heads: int = 32,
        attention_head_dim: int = 128,
        cross_attention_dim: int = 4096,
        vae_scale_factors: tuple[int, int, int] = (8, 32, 32),
        pos_embed_max_pos: int = 20,
        base_height: int = 2048,
        base_width: int = 2048,
        gated_attn: bool = False,
        cross_attn_mod: bool = False,
        audio_in_channels: int = 128,
        audio_out_channels: int | None = 128,
        audio_patch_size: int = 1,
        audio_patch_size_t: int = 1,
        audio_num_attention_heads: int = 32,
        audio_attention_head_dim: int = 64,
        audio_cross_attention_dim: int = 2048,
        audio_scale_factor: int = 4,
        audio_pos_embed_max_pos: int = 20,
        audio_sampling_rate: int = 16000,
        audio_hop_length: int = 160,
        audio_gated_attn: bool = False,
        audio_cross_attn_mod: bool = False,
        num_layers: int = 48,
        activation_fn: str = "gelu-approximate",
        qk_norm: str = "rms_norm_across_heads",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        caption_channels: int = 3840,
        attention_bias: bool = True,
        attention_out_bias: bool = True,
        rope_theta: float = 10000.0,
        rope_double_precision: bool = True,
        causal_offset: int = 1,
        timestep_scale_multiplier: int = 1000,
        cross_attn_timestep_scale_multiplier: int = 1000,
        rope_type: str = "interleaved",
        use_prompt_embeddings: bool = True,
        perturbed_attn: bool = False,
        ff_bias: bool = True,
        audio_ff_bias: bool = True,
        use_prompt_adaln_single: bool = True,
        use_keyframes_abs_pos_embedding: bool = False,
    ):
        super().__init__()
        self._check_config()
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type must be one of {ROPE_TYPES}, got {rope_type!r}")
        if qk_norm != "rms_norm_across_heads":
            raise ValueError(f"qk_norm must be 'rms_norm_across_heads', got {qk_norm!r}")
        if norm_elementwise_affine:
            raise ValueError("norm_elementwise_affine=True is not an LTX-2 layout")
        if patch_size != 1 or patch_size_t != 1 or audio_patch_size != 1 or audio_patch_size_t != 1:
            raise ValueError("LTX-2 transformers use patch sizes of 1")
        out_channels = out_channels or in_channels
        audio_out_channels = audio_out_channels or audio_in_channels
        inner_dim = num_attention_heads * attention_head_dim
        audio_inner_dim = audio_num_attention_heads * audio_attention_head_dim
        if rope_type == "split":  # split RoPE gives each head dim / (2 heads) frequencies
            for name, dim, heads in (
                ("video self-attention (num_attention_heads * attention_head_dim)", inner_dim, num_attention_heads),
                ("audio self-attention", audio_inner_dim, audio_num_attention_heads),
                ("audio->video cross-attention (audio_cross_attention_dim)", audio_cross_attention_dim, num_attention_heads),
                ("video->audio cross-attention (audio_cross_attention_dim)", audio_cross_attention_dim, audio_num_attention_heads),
            ):  # fmt: skip
                if (dim // 2) % heads:
                    raise ValueError(
                        f"split RoPE: the {name} width {dim} halved ({dim // 2}) must divide by its {heads} heads"
                    )

        self.video_tokens = VideoTokens()  # no weights: where context parallelism shards the video tokens
        self.proj_in = torch.nn.Linear(in_channels, inner_dim)
        self.audio_proj_in = torch.nn.Linear(audio_in_channels, audio_inner_dim)
        if use_keyframes_abs_pos_embedding:
            self.keyframes_abs_pos_embedding = torch.nn.Parameter(torch.zeros(1, inner_dim))
        if use_prompt_embeddings:  # LTX-2: caption projection inside the transformer
            self.caption_projection = PixArtAlphaTextProjection(caption_channels, inner_dim)
            self.audio_caption_projection = PixArtAlphaTextProjection(caption_channels, audio_inner_dim)

        self.time_embed = AdaLayerNormSingle(inner_dim, 9 if cross_attn_mod else 6)
        self.audio_time_embed = AdaLayerNormSingle(audio_inner_dim, 9 if audio_cross_attn_mod else 6)
        self.av_cross_attn_video_scale_shift = AdaLayerNormSingle(inner_dim, 4)
        self.av_cross_attn_audio_scale_shift = AdaLayerNormSingle(audio_inner_dim, 4)
        self.av_cross_attn_video_a2v_gate = AdaLayerNormSingle(inner_dim, 1)
        self.av_cross_attn_audio_v2a_gate = AdaLayerNormSingle(audio_inner_dim, 1)
        self.scale_shift_table = torch.nn.Parameter(torch.randn(2, inner_dim) / inner_dim**0.5)
        self.audio_scale_shift_table = torch.nn.Parameter(torch.randn(2, audio_inner_dim) / audio_inner_dim**0.5)
        self.prompt_modulation = cross_attn_mod or audio_cross_attn_mod
        if self.prompt_modulation and use_prompt_adaln_single:
            self.prompt_adaln = AdaLayerNormSingle(inner_dim, 2)
            self.audio_prompt_adaln = AdaLayerNormSingle(audio_inner_dim, 2)

        self.transformer_blocks = torch.nn.ModuleList(
            [
                LTX2AVTransformerBlock(
                    dim=inner_dim,
                    num_attention_heads=num_attention_heads,
                    attention_head_dim=attention_head_dim,
                    cross_attention_dim=cross_attention_dim,
                    audio_dim=audio_inner_dim,
                    audio_num_attention_heads=audio_num_attention_heads,
                    audio_attention_head_dim=audio_attention_head_dim,
                    audio_cross_attention_dim=audio_cross_attention_dim,
                    video_gated_attn=gated_attn,
                    video_cross_attn_adaln=cross_attn_mod,
                    audio_gated_attn=audio_gated_attn,
                    audio_cross_attn_adaln=audio_cross_attn_mod,
                    activation_fn=activation_fn,
                    attention_bias=attention_bias,
                    attention_out_bias=attention_out_bias,
                    eps=norm_eps,
                    rope_type=rope_type,
                    ff_bias=ff_bias,
                    audio_ff_bias=audio_ff_bias,
                )
                for _ in range(num_layers)
            ]
        )
        self.proj_out = torch.nn.Linear(inner_dim, out_channels)
        self.video_output = VideoOutput()  # no weights: where context parallelism gathers the video output
        self.audio_proj_out = torch.nn.Linear(audio_inner_dim, audio_out_channels)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ context parallelism
    def enable_parallelism(self, *, config, cp_plan=None):
        """diffusers' `enable_parallelism` (context parallelism only), then each attention gets its role: video
        self-attention and video->audio cross-attention over the sharded video keys, the rest local."""
        check_parallel_config(self, config)
        super().enable_parallelism(config=config, cp_plan=cp_plan)
        assign_attention_roles(self)

    def _resolve_parallel_config(self, config):
        # diffusers' version divides by the accelerator count; without an accelerator build a CPU (gloo) mesh.
        if torch.accelerator.is_available() and torch.accelerator.device_count() > 0:
            return super()._resolve_parallel_config(config)
        return resolve_parallel_config_without_accelerator(self, config)

    # ------------------------------------------------------------------ helpers
    @property
    def inner_dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    @property
    def audio_inner_dim(self) -> int:
        return self.config.audio_num_attention_heads * self.config.audio_attention_head_dim

    def _rotary(self, coords, dim, max_pos, heads, dtype, use_middle=True):
        return rope_frequencies(
            coords,
            dim=dim,
            max_pos=max_pos,
            num_heads=heads,
            theta=self.config.rope_theta,
            rope_type=self.config.rope_type,
            double_precision=self.config.rope_double_precision,
            use_middle=use_middle,
            out_dtype=dtype,
        )

    @staticmethod
    def _text_mask_bias(mask: torch.Tensor | None, dtype: torch.dtype, name: str) -> torch.Tensor | None:
        """(B, S) keep-mask -> additive (B, 1, 1, S) bias; (B, 1, S) additive bias -> (B, 1, 1, S)."""
        if mask is None:
            return None
        if mask.ndim == 2:
            return ((mask.to(dtype) - 1) * torch.finfo(dtype).max)[:, None, None, :]
        if mask.ndim == 3:
            return mask.to(dtype).unsqueeze(1)
        raise ValueError(f"{name} must have shape (batch, text_tokens), got {tuple(mask.shape)}")

    @staticmethod
    def _self_mask_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """[0, 1] multiplicative (B, T, T) mask -> additive log bias (B, 1, T, T); <= 0 -> most negative value."""
        if mask is None:
            return None
        finfo = torch.finfo(dtype)
        log_mask = torch.log(mask.clamp(min=finfo.tiny)).to(dtype)
        return torch.where(mask > 0, log_mask, torch.full_like(log_mask, finfo.min)).unsqueeze(1)

    def _block_perturbations(
        self,
        perturbations: list[tuple[LTX2Perturbation, ...]] | None,
        stg_blocks: set[int],
        stg_keep: torch.Tensor | None,
        isolate_modalities: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> list[dict[str, BlockPerturbation]]:
        stg = BlockPerturbation(stg_keep is None, stg_keep)
        skip_cross = BlockPerturbation(True, None)
        result = []
        for idx in range(self.config.num_layers):
            video_self, audio_self, a2v, v2a = (
                block_perturbation(perturbations, kind, idx, device, dtype)
                for kind in (
                    "skip_video_self_attn",
                    "skip_audio_self_attn",
                    "skip_a2v_cross_attn",
                    "skip_v2a_cross_attn",
                )
            )
            if idx in stg_blocks:
                video_self = audio_self = stg
            if isolate_modalities:
                a2v = v2a = skip_cross
            result.append(
                {
                    "video_self_perturbation": video_self,
                    "audio_self_perturbation": audio_self,
                    "a2v_perturbation": a2v,
                    "v2a_perturbation": v2a,
                }
            )
        return result

    def _check_inputs(self, hidden_states, audio_hidden_states, encoder_hidden_states, audio_encoder_hidden_states):
        for name, tensor, channels in (
            ("hidden_states", hidden_states, self.config.in_channels),
            ("audio_hidden_states", audio_hidden_states, self.config.audio_in_channels),
        ):
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
                raise ValueError(f"{name} must be a (batch, tokens, channels) tensor")
            if not is_compute_float(tensor):
                raise TypeError(f"{name} must be a floating-point tensor of 16 bits or more, got dtype {tensor.dtype}")
            if tensor.shape[-1] != channels:
                raise ValueError(f"{name} has {tensor.shape[-1]} channels, the model expects {channels}")
            if tensor.shape[1] == 0:
                raise ValueError(f"{name} has 0 tokens; the model needs at least one {name.split('_')[0]} token")
        batch = hidden_states.shape[0]
        if audio_hidden_states.shape[0] != batch:
            raise ValueError(
                f"audio_hidden_states has batch size {audio_hidden_states.shape[0]}, hidden_states has {batch}"
            )
        text_dim = self.config.caption_channels if self.config.use_prompt_embeddings else None
        for name, tensor, expected in (
            ("encoder_hidden_states", encoder_hidden_states, text_dim or self.config.cross_attention_dim),
            (
                "audio_encoder_hidden_states",
                audio_encoder_hidden_states,
                text_dim or self.config.audio_cross_attention_dim,
            ),
        ):
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3 or tensor.shape[0] != batch:
                raise ValueError(f"{name} must be a (batch={batch}, text_tokens, channels) tensor")
            if not is_compute_float(tensor):
                raise TypeError(f"{name} must be a floating-point tensor of 16 bits or more, got dtype {tensor.dtype}")
            if tensor.shape[-1] != expected:
                raise ValueError(f"{name} has {tensor.shape[-1]} channels, the model expects {expected}")

    @staticmethod
    def _timestep_tensor(name: str, value, batch: int, device: torch.device) -> torch.Tensor | None:
        """A timestep / sigma argument as a tensor: a tensor as it is (`_check_values` bounds it), a finite Python
        number within `MAX_EMBEDDED_VALUE` as `(batch,)` float32 (checked on the host: no device sync), None as None;
        anything else a TypeError / ValueError naming `name`."""
        if value is None or isinstance(value, torch.Tensor):
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a tensor or a real number, got {type(value).__name__}")
        value = check_real(name, value)
        if abs(value) > MAX_EMBEDDED_VALUE:
            raise ValueError(f"{name} must be within +-2**24 ({_EMBEDDED_WHY}), got {value:g}")
        return torch.full((batch,), value, dtype=torch.float32, device=device)

    @staticmethod
    def _check_values(tensors: dict[str, torch.Tensor | None]) -> None:
        """The values of the tensors a forward takes, each finite and within its bound (`validation.check_all_bounded`,
        one device sync): latents, contexts, timesteps / sigmas and coordinates, masks."""

        def pick(*names):
            return [(n, tensors[n]) for n in names if isinstance(tensors[n], torch.Tensor)]

        masks = pick("encoder_attention_mask", "audio_encoder_attention_mask")
        keep = [(n, m) for n, m in masks if m.ndim == 2] + pick("video_self_attention_mask", "perturbation_mask")
        embedded = ("timestep", "audio_timestep", "sigma", "audio_sigma", "video_coords", "audio_coords")
        check_all_bounded(  # one device sync for all of them
            [
                (pick("hidden_states", "audio_hidden_states"), MAX_NORMALISED_INPUT_ABS, _LATENTS_WHY, None),
                (pick("encoder_hidden_states", "audio_encoder_hidden_states"), MAX_CONTEXT_ABS, _CONTEXT_WHY, None),
                (pick(*embedded), MAX_EMBEDDED_VALUE, _EMBEDDED_WHY, None),
                (keep, 1.0, "a mask weighs each token between 0 and 1", 0.0),
                (
                    [(n, m) for n, m in masks if m.ndim != 2],
                    0.0,
                    "an additive attention bias: 0 keeps, -inf drops",
                    -math.inf,
                ),
            ]
        )

    @staticmethod
    def _check_latent_sizes(sizes: dict[str, Any], tokens: int, what: str) -> None:
        """Sizes that the coordinates are built from: positive integers whose product is `tokens` (checked before
        anything of that size is allocated)."""
        values = list(sizes.values())
        bad = any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values)
        if bad or math.prod(values) != tokens:
            given = ", ".join(f"{k}={shown(v)}" for k, v in sizes.items())
            raise ValueError(
                f"{given}: the latent sizes must be positive integers whose product is the {tokens} tokens of {what}"
            )

    @staticmethod
    def _check_coords(name: str, coords: torch.Tensor, batch: int, axes: int, tokens: int) -> None:
        if (
            coords.ndim not in (3, 4)
            or tuple(coords.shape[:3]) != (batch, axes, tokens)
            or (coords.ndim == 4 and coords.shape[-1] != 2)
        ):
            raise ValueError(
                f"{name} must have shape ({batch}, {axes}, {tokens}, 2) ([start, end) bounds) or "
                f"({batch}, {axes}, {tokens}), got {tuple(coords.shape)}"
            )

    # ------------------------------------------------------------------ forward
    @checked_lora_scale
    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        audio_encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        audio_timestep: torch.Tensor | None = None,
        sigma: torch.Tensor | None = None,
        audio_sigma: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        audio_encoder_attention_mask: torch.Tensor | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: float = 24.0,
        audio_num_frames: int | None = None,
        video_coords: torch.Tensor | None = None,
        audio_coords: torch.Tensor | None = None,
        isolate_modalities: bool = False,
        spatio_temporal_guidance_blocks: Iterable[int] | None = None,
        perturbation_mask: torch.Tensor | None = None,
        use_cross_timestep: bool = False,
        attention_kwargs: dict[str, Any] | None = None,
        video_self_attention_mask: torch.Tensor | None = None,
        video_keyframes_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        perturbations: Sequence[Iterable[LTX2Perturbation]] | None = None,
        shared_prefix: Sequence[SharedPrefix] | None = None,
    ):
        r"""Predict video and audio velocities.

        Args mirror diffusers' `LTX2VideoTransformer3DModel.forward`: `timestep`/`audio_timestep` are per item
        `(B,)` or per token `(B, T)` (or a Python number, the same for every item), already multiplied by
        `timestep_scale_multiplier`; `sigma`/`audio_sigma`
        (`(B,)`, scaled the same way) drive the LTX-2.3 prompt modulation and, with `use_cross_timestep=True`,
        the cross-modal modulation (the reference's behaviour: each modality's audio<->video AdaLN reads the
        OTHER modality's sigma). `video_coords` `(B, 3, T, 2)` / `audio_coords` `(B, 1, T, 2)` are `[start, end)`
        bounds (seconds for time, pixels for space); without them they are built from `num_frames`, `height`,
        `width`, `fps` and `audio_num_frames`. `encoder_attention_mask` is a `(B, S)` keep mask.
        `video_self_attention_mask` is a `(B, T, T)` mask in [0, 1] (additive `log(mask)` bias, as the reference).
        `spatio_temporal_guidance_blocks` + `perturbation_mask` (`(B,)`, 0 = perturb, default all) skip video AND
        audio self-attention in those blocks; `isolate_modalities` skips all audio<->video cross-attention.
        `perturbations`: one collection of `LTX2Perturbation` per batch item (the reference's
        `BatchedPerturbationConfig`).
        `shared_prefix`: `SharedPrefix(item, source, until)` entries declaring that batch item `item` has the same
        inputs as item `source` and the same perturbations before block `until`: those blocks run once for both
        (e.g. the STG pass shares the conditional pass's blocks before the perturbed one; `shared_prefixes` builds
        the entries from the perturbations).

        Values are refused before compute (`ValueError` naming the argument) unless finite and within the bounds of
        `ltx2_diffusers.validation`: latents +-`MAX_NORMALISED_INPUT_ABS`, contexts +-`MAX_CONTEXT_ABS`, timesteps,
        sigmas and coordinates +-`MAX_EMBEDDED_VALUE`, masks in [0, 1] (a `(B, 1, S)` bias in [-inf, 0]), `fps` in
        [1, 240], `attention_kwargs["scale"]` within +-10 (`MAX_LORA_STRENGTH`); the latent sizes must multiply to the
        token counts. (In the pipelines' denoising loops only each stage's first step checks its forwards so; the
        loop then checks the latents after that step and at the stage's end: no device sync per step.)

        Returns `AudioVisualModelOutput(sample, audio_sample)` or a tuple.
        """
        self._check_inputs(hidden_states, audio_hidden_states, encoder_hidden_states, audio_encoder_hidden_states)
        if torch.compiler.is_compiling() or id(self) not in _VALUES_CHECKED_BY_CALLER.get():  # (a pipeline's loop)
            self._check_values(
                dict(
                    hidden_states=hidden_states, audio_hidden_states=audio_hidden_states,
                    encoder_hidden_states=encoder_hidden_states, audio_encoder_hidden_states=audio_encoder_hidden_states,
                    timestep=timestep, audio_timestep=audio_timestep, sigma=sigma, audio_sigma=audio_sigma,
                    video_coords=video_coords, audio_coords=audio_coords, encoder_attention_mask=encoder_attention_mask,
                    audio_encoder_attention_mask=audio_encoder_attention_mask, perturbation_mask=perturbation_mask,
                    video_self_attention_mask=video_self_attention_mask,
                )
            )  # fmt: skip
        batch_size, num_video_tokens = hidden_states.shape[:2]
        num_audio_tokens = audio_hidden_states.shape[1]
        dtype, device = hidden_states.dtype, hidden_states.device
        config = self.config
        timestep, audio_timestep, sigma, audio_sigma = (
            self._timestep_tensor(name, value, batch_size, device)
            for name, value in (
                ("timestep", timestep),
                ("audio_timestep", audio_timestep),
                ("sigma", sigma),
                ("audio_sigma", audio_sigma),
            )
        )
        if timestep is None:
            raise TypeError("timestep is required (a (batch,) or (batch, tokens) tensor, or a number)")
        if self._block_streamer is not None:
            self._block_streamer.begin_forward()

        perturbations = validate_perturbations(perturbations, batch_size, config.num_layers)
        if perturbations is not None and (spatio_temporal_guidance_blocks or perturbation_mask is not None):
            raise ValueError(
                "pass either perturbations or spatio_temporal_guidance_blocks/perturbation_mask, not both"
            )
        stg_blocks = set(spatio_temporal_guidance_blocks or ())
        bad_blocks = [b for b in stg_blocks if not 0 <= b < config.num_layers]
        if bad_blocks:
            raise ValueError(
                f"spatio_temporal_guidance_blocks: block index {bad_blocks[0]} out of range for "
                f"{config.num_layers} blocks"
            )
        if perturbation_mask is not None:
            if perturbation_mask.numel() != batch_size:
                raise ValueError(f"perturbation_mask must have one value per batch item ({batch_size})")
            perturbation_mask = perturbation_mask.to(device=device, dtype=dtype).reshape(batch_size, 1, 1)

        audio_timestep = timestep if audio_timestep is None else audio_timestep
        audio_sigma = sigma if audio_sigma is None else audio_sigma
        needs_sigma = use_cross_timestep or (self.prompt_modulation and config.use_prompt_adaln_single)
        if needs_sigma and sigma is None:
            raise ValueError("sigma is required for this model (LTX-2.3 prompt modulation) or use_cross_timestep")

        # 1. Positions and rotary embeddings.
        if video_coords is None:
            if None in (num_frames, height, width):
                raise ValueError("pass video_coords, or num_frames, height and width (latent sizes)")
            sizes = dict(num_frames=num_frames, height=height, width=width)
            self._check_latent_sizes(sizes, num_video_tokens, "hidden_states")
            fps = check_frame_rate(fps, "fps")
            video_coords = build_video_coords(
                batch_size,
                num_frames,
                height,
                width,
                scale_factors=tuple(config.vae_scale_factors),
                causal_offset=config.causal_offset,
                fps=fps,
                device=device,
            )
        if audio_coords is None:
            if audio_num_frames is None:
                raise ValueError("pass audio_coords, or audio_num_frames")
            self._check_latent_sizes(dict(audio_num_frames=audio_num_frames), num_audio_tokens, "audio_hidden_states")
            audio_coords = build_audio_coords(
                batch_size,
                audio_num_frames,
                sampling_rate=config.audio_sampling_rate,
                hop_length=config.audio_hop_length,
                scale_factor=config.audio_scale_factor,
                causal_offset=config.causal_offset,
                device=device,
            )
        self._check_coords("video_coords", video_coords, batch_size, 3, num_video_tokens)
        self._check_coords("audio_coords", audio_coords, batch_size, 1, num_audio_tokens)
        cp_config = context_parallel_config(self)
        if cp_config is not None:
            check_context_parallel_inputs(cp_config, num_video_tokens, video_self_attention_mask)
        # Identity unless context-parallel: then this rank keeps its slice of the video tokens.
        hidden_states, video_coords, timestep, video_keyframes_mask = shard_video_tokens(
            self.video_tokens, hidden_states, video_coords, timestep, video_keyframes_mask
        )
        video_max_pos = (config.pos_embed_max_pos, config.base_height, config.base_width)
        cross_max_pos = (max(config.pos_embed_max_pos, config.audio_pos_embed_max_pos),)
        # Coordinates expanded from one item (a batched guidance step) give one item's tables, broadcast in the blocks.
        video_coords, audio_coords = _one_item_if_expanded(video_coords), _one_item_if_expanded(audio_coords)
        video_rotary_emb = self._rotary(video_coords, self.inner_dim, video_max_pos, config.num_attention_heads, dtype)
        audio_rotary_emb = self._rotary(
            audio_coords,
            self.audio_inner_dim,
            (config.audio_pos_embed_max_pos,),
            config.audio_num_attention_heads,
            dtype,
        )
        ca_video_rotary_emb = self._rotary(
            video_coords[:, 0:1], config.audio_cross_attention_dim, cross_max_pos, config.num_attention_heads, dtype
        )
        ca_audio_rotary_emb = self._rotary(
            audio_coords[:, 0:1],
            config.audio_cross_attention_dim,
            cross_max_pos,
            config.audio_num_attention_heads,
            dtype,
        )

        # 2. Input projections.
        vx = self.proj_in(hidden_states)
        ax = self.audio_proj_in(audio_hidden_states)
        if config.use_keyframes_abs_pos_embedding and video_keyframes_mask is not None:
            marker = (video_keyframes_mask > 0).to(dtype=vx.dtype)
            vx = vx + marker * self.keyframes_abs_pos_embedding.to(dtype=vx.dtype)

        # 3. Timestep modulation.
        temb, embedded_timestep = self.time_embed(timestep, batch_size, dtype)
        temb_audio, audio_embedded_timestep = self.audio_time_embed(audio_timestep, batch_size, dtype)
        temb_prompt = temb_prompt_audio = None
        if self.prompt_modulation and config.use_prompt_adaln_single:
            temb_prompt, _ = self.prompt_adaln(sigma, batch_size, dtype)
            temb_prompt_audio, _ = self.audio_prompt_adaln(audio_sigma, batch_size, dtype)
        video_ca_t = audio_sigma if use_cross_timestep else timestep
        audio_ca_t = sigma if use_cross_timestep else audio_timestep
        gate_factor = config.cross_attn_timestep_scale_multiplier / config.timestep_scale_multiplier
        temb_ca_scale_shift, _ = self.av_cross_attn_video_scale_shift(video_ca_t, batch_size, dtype)
        temb_ca_gate, _ = self.av_cross_attn_video_a2v_gate(video_ca_t.flatten() * gate_factor, batch_size, dtype)
        temb_ca_audio_scale_shift, _ = self.av_cross_attn_audio_scale_shift(audio_ca_t, batch_size, dtype)
        temb_ca_audio_gate, _ = self.av_cross_attn_audio_v2a_gate(
            audio_ca_t.flatten() * gate_factor, batch_size, dtype
        )

        # 4. Text context.
        if config.use_prompt_embeddings:
            encoder_hidden_states = self.caption_projection(encoder_hidden_states)
            audio_encoder_hidden_states = self.audio_caption_projection(audio_encoder_hidden_states)
        text_mask = self._text_mask_bias(encoder_attention_mask, dtype, "encoder_attention_mask")
        audio_text_mask = self._text_mask_bias(audio_encoder_attention_mask, dtype, "audio_encoder_attention_mask")
        self_mask = self._self_mask_bias(video_self_attention_mask, dtype)

        # 5. Blocks.
        block_perturbations = self._block_perturbations(
            perturbations, stg_blocks, perturbation_mask, isolate_modalities, device, dtype
        )
        per_item = (
            encoder_hidden_states,
            audio_encoder_hidden_states,
            temb,
            temb_audio,
            temb_ca_scale_shift,
            temb_ca_audio_scale_shift,
            temb_ca_gate,
            temb_ca_audio_gate,
            temb_prompt,
            temb_prompt_audio,
            video_rotary_emb,
            audio_rotary_emb,
            ca_video_rotary_emb,
            ca_audio_rotary_emb,
            text_mask,
            audio_text_mask,
            self_mask,
        )
        shared = validate_shared_prefix(shared_prefix, batch_size, config.num_layers, perturbations)
        if not shared:
            vx, ax = self._run_blocks(0, config.num_layers, vx, ax, per_item, block_perturbations)
        else:
            vx, ax = self._run_blocks_shared(shared, vx, ax, per_item, block_perturbations)

        # 6. Output modulation and projection.
        output = self.video_output(self._output(vx, embedded_timestep, self.scale_shift_table, self.proj_out))
        audio_output = self._output(ax, audio_embedded_timestep, self.audio_scale_shift_table, self.audio_proj_out)
        if not return_dict:
            return output, audio_output
        return AudioVisualModelOutput(sample=output, audio_sample=audio_output)

    def _run_blocks(self, start, end, vx, ax, per_item, block_perturbations):
        """Blocks `start .. end-1` on the batch of `vx`/`ax` (`per_item`: the blocks' other per-item inputs)."""
        for idx in range(start, end):
            perturb = block_perturbations[idx]
            args = (
                vx,
                ax,
                *per_item,
                perturb["video_self_perturbation"],
                perturb["audio_self_perturbation"],
                perturb["a2v_perturbation"],
                perturb["v2a_perturbation"],
            )
            block = self.transformer_blocks[idx]
            if self._block_streamer is not None:
                with self._block_streamer.block(idx):
                    vx, ax = block(*args)
            elif torch.is_grad_enabled() and self.gradient_checkpointing:
                vx, ax = self._gradient_checkpointing_func(block, *args)
            else:
                vx, ax = block(*args)
        return vx, ax

    def _apply(self, fn, recurse=True):
        # `to(...)` while blocks stream (a memory tier) moves everything but the streamed blocks.
        if self._block_streamer is None or not recurse:
            return super()._apply(fn, recurse)
        with self._block_streamer.hidden_blocks():
            return super()._apply(fn, recurse)

    def _run_blocks_shared(self, shared, vx, ax, per_item, block_perturbations):
        """The blocks with shared prefixes: an item waits (is not computed) until its `until` block, where it starts
        from a copy of its source's hidden states; between join points the blocks run on the items not waiting."""
        batch, num_layers = vx.shape[0], self.config.num_layers
        bounds = sorted({0, num_layers, *(p.until for p in shared)})
        for start, end in zip(bounds, bounds[1:] + [None]):
            joining = [p for p in shared if p.until == start]
            if joining:  # each joining item takes its source's state before block `start`
                gather = list(range(batch))
                for p in joining:
                    gather[p.item] = p.source
                index = device_constant(tuple(gather), vx.device)
                vx, ax = vx.index_select(0, index), ax.index_select(0, index)
            if end is None:
                break
            active = [i for i in range(batch) if not any(p.item == i and p.until > start for p in shared)]
            if len(active) == batch:
                vx, ax = self._run_blocks(start, end, vx, ax, per_item, block_perturbations)
                continue
            index = device_constant(tuple(active), vx.device)
            sub_vx, sub_ax = self._run_blocks(
                start,
                end,
                vx.index_select(0, index),
                ax.index_select(0, index),
                _take(per_item, index, batch, active),
                _take(block_perturbations, index, batch, active),
            )
            vx, ax = vx.index_copy(0, index, sub_vx), ax.index_copy(0, index, sub_ax)
        return vx, ax

    def _output(self, x, embedded_timestep, table, proj):
        shift, scale = (table[None, None].to(dtype=x.dtype) + embedded_timestep[:, :, None]).unbind(dim=2)
        x = F.layer_norm(x, (x.shape[-1],), eps=self.config.norm_eps)
        return proj(x * (1 + scale) + shift)


def _one_item_if_expanded(coords: torch.Tensor) -> torch.Tensor:
    """`coords[:1]` when `coords` is one item's coordinates expanded over the batch (a batch stride of 0, as a
    batched guidance step passes them): the rotary tables are then computed once and broadcast over the items (the
    same values; a quarter of the reads in each block's rotation at four items); else `coords`."""
    return coords[:1] if coords.shape[0] > 1 and coords.stride(0) == 0 else coords


def _take(x, index: torch.Tensor, batch: int, active: list[int]):
    """`x` (tensors, tuples, dicts, `BlockPerturbation`s, None) restricted to the batch items `index` (on the
    device; `active`: the same items as a list): tensors whose first dimension is the batch are indexed, broadcast
    ones (first dimension 1) are kept; a perturbation's `kept` items are renumbered within `active`."""
    if isinstance(x, torch.Tensor):
        return x.index_select(0, index) if x.ndim and x.shape[0] == batch else x
    if isinstance(x, BlockPerturbation):
        kept = None if x.kept is None else tuple(j for j, i in enumerate(active) if i in x.kept)
        if kept is not None and len(kept) in (0, len(active)):  # within `active`: all skipped, or none
            return BlockPerturbation(True, None) if not kept else NO_PERTURBATION
        return BlockPerturbation(x.skip_all, _take(x.keep, index, batch, active), kept)
    if isinstance(x, dict):
        return {k: _take(v, index, batch, active) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_take(v, index, batch, active) for v in x)
    return x
