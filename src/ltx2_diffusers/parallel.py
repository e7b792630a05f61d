"""Context parallelism (sequence parallelism) of `LTX2AudioVideoTransformer` through diffusers' machinery.

`transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))` under `torchrun` shards the
VIDEO tokens over the N ranks; everything else is replicated:

* video self-attention (`attn1`) runs diffusers' Ulysses (or ring) attention over the sharded sequence;
* the audio stream is replicated on every rank: its tokens are a small fraction of the video's (25 latent
  frames a second against ~2000 video tokens per latent frame at 1080p), so sharding it would add collectives to
  audio self-attention and a2v for almost no compute;
* text cross-attention and audio->video cross-attention read keys/values that every rank holds in full (text,
  replicated audio), so they run as ordinary local attention of the local video queries;
* video->audio cross-attention (replicated audio queries, sharded video keys) also runs diffusers' parallel
  attention: Ulysses' all-to-all hands every rank ALL video keys/values for its share of the heads (the
  replicated queries come back duplicated, so each rank computes identical rows for its own copy), ring passes
  the key chunks around and merges them by log-sum-exp. Either way each rank ends with the exact full-sequence
  result for every audio token; the all-to-all moves 1/N of the keys an all-gather would;
* positions, per-token video timesteps and keyframe markers are sharded with the video tokens (one hook on
  `video_tokens`), and the video output is gathered after `proj_out` (on `video_output`);
* `video_self_attention_mask` stays whole: after Ulysses' all-to-all each rank attends the full sequence for its
  heads. Ring attention cannot take it (each ring step would need its own slice) and refuses it.

Every guidance pass (STG, isolated modalities, per-item `perturbations`, per-token timesteps) is decided from
Python values identical on every rank, so all ranks issue the same collectives.
"""

from __future__ import annotations

import os

import torch
from diffusers.models._modeling_parallel import (
    ContextParallelConfig,
    ContextParallelInput,
    ContextParallelOutput,
    ParallelConfig,
    TensorParallelConfig,
)


# Module names are those of `LTX2AudioVideoTransformer`; `video_tokens` (`VideoTokens`) and `video_output`
# (`VideoOutput`) have no weights, so an adapter wrapping `proj_out` cannot come between the gather and the sum.
TRANSFORMER_CP_PLAN = {
    "video_tokens": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        "video_coords": ContextParallelInput(split_dim=2),
        "timestep": ContextParallelInput(split_dim=1, expected_dims=2),
        "video_keyframes_mask": ContextParallelInput(split_dim=1),
    },
    "video_output": ContextParallelOutput(gather_dim=1, expected_dims=3),
}

# Attention modules of a block whose keys are the sharded video tokens: they keep the parallel config. The others
# (text and audio->video cross-attention, audio self-attention) read keys every rank holds whole and attend locally.
SEQUENCE_PARALLEL_ATTENTIONS = ("attn1", "video_to_audio_attn")


class VideoTokens(torch.nn.Module):
    """Identity on the per-video-token inputs. The `_cp_plan` entry `video_tokens` makes diffusers' split hook
    shard them along the token axis on entry; `None` arguments are skipped and not returned."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        video_coords: torch.Tensor,
        timestep: torch.Tensor | None = None,
        video_keyframes_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (hidden_states, video_coords, timestep, video_keyframes_mask) if t is not None)


class VideoOutput(torch.nn.Module):
    """Identity on the video output; the `_cp_plan` entry `video_output` gathers it over the ranks."""

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return sample


def shard_video_tokens(
    module: VideoTokens,
    hidden_states: torch.Tensor,
    video_coords: torch.Tensor,
    timestep: torch.Tensor,
    video_keyframes_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run `module` (sharding under context parallelism, identity otherwise) on the per-token inputs.

    `timestep` goes through only when it is per video token (`(B, T)`); a per-item timestep stays whole.
    """
    per_token = timestep.ndim == 2 and timestep.shape[1] == hidden_states.shape[1] and hidden_states.shape[1] > 1
    outputs = iter(
        module(
            hidden_states=hidden_states,
            video_coords=video_coords,
            timestep=timestep if per_token else None,
            video_keyframes_mask=video_keyframes_mask,
        )
    )
    hidden_states, video_coords = next(outputs), next(outputs)
    if per_token:
        timestep = next(outputs)
    if video_keyframes_mask is not None:
        video_keyframes_mask = next(outputs)
    return hidden_states, video_coords, timestep, video_keyframes_mask


def context_parallel_config(model: torch.nn.Module) -> ContextParallelConfig | None:
    """The model's active `ContextParallelConfig`, or None."""
    config = getattr(model, "_parallel_config", None)
    return None if config is None else config.context_parallel_config


def check_context_parallel_inputs(
    cp_config: ContextParallelConfig,
    num_video_tokens: int,
    video_self_attention_mask: torch.Tensor | None,
) -> None:
    """Refuse, before any compute, inputs the sharded forward cannot handle exactly."""
    ranks = cp_config.ring_degree * cp_config.ulysses_degree
    anything = cp_config.ulysses_anything or cp_config.ring_anything
    if not anything and num_video_tokens % ranks:
        raise ValueError(
            f"hidden_states: {num_video_tokens} video tokens cannot be split evenly over {ranks} context-parallel "
            "ranks; pick latent sizes whose token count is a multiple of the degree, or set ulysses_anything=True"
        )
    if anything and num_video_tokens < ranks:
        raise ValueError(f"hidden_states: {num_video_tokens} video tokens, fewer than the {ranks} ranks")
    if anything and num_video_tokens % ranks and torch.distributed.get_backend() == "gloo":
        raise ValueError(
            f"hidden_states: {num_video_tokens} video tokens do not split evenly over {ranks} ranks, and the gloo "
            "backend cannot all-gather unequal shards (ulysses_anything/ring_anything need NCCL for that)"
        )
    if video_self_attention_mask is not None and cp_config.ring_degree > 1:
        raise ValueError(
            "video_self_attention_mask is not supported with ring attention (each ring step would need its own "
            "slice of the mask); use ulysses_degree instead"
        )


def check_parallel_config(
    model: torch.nn.Module, config: ParallelConfig | ContextParallelConfig | TensorParallelConfig
) -> None:
    """Refuse configurations the LTX-2 transformer cannot run, before any mesh is built."""
    cp = config if isinstance(config, ContextParallelConfig) else getattr(config, "context_parallel_config", None)
    tp = config if isinstance(config, TensorParallelConfig) else getattr(config, "tensor_parallel_config", None)
    if tp is not None:
        raise ValueError(
            "config: tensor parallelism is not supported by LTX2AudioVideoTransformer; use context parallelism"
        )
    if cp is None:
        raise ValueError("config must be a ContextParallelConfig (or a ParallelConfig holding one)")
    _attention_roles(model)
    for heads, what in (
        (model.config.num_attention_heads, "video"),
        (model.config.audio_num_attention_heads, "audio (video->audio cross-attention)"),
    ):
        if cp.ulysses_degree > 1 and not cp.ulysses_anything and heads % cp.ulysses_degree:
            raise ValueError(
                f"config: ulysses_degree={cp.ulysses_degree} must divide the {heads} {what} attention heads "
                "(or set ulysses_anything=True)"
            )
    if cp.ring_degree > 1:
        from diffusers.models.attention_dispatch import (  # noqa: PLC0415
            AttentionBackendName,
            _AttentionBackendRegistry,
        )

        processor = model.transformer_blocks[0].attn1.processor
        backend = getattr(processor, "_attention_backend", None)
        backend = _AttentionBackendRegistry.get_active_backend()[0] if backend is None else backend
        if AttentionBackendName(backend) == AttentionBackendName.NATIVE:
            raise ValueError(
                "config: ring attention needs an attention backend that returns the log-sum-exp (e.g. "
                "'_native_cudnn', 'flash' or '_native_flash' on CUDA); the 'native' backend cannot run it. Call "
                "transformer.set_attention_backend(...) first, or use ulysses_degree"
            )


def resolve_parallel_config_without_accelerator(
    model: torch.nn.Module, config: ParallelConfig | ContextParallelConfig
) -> ParallelConfig:
    """CPU-only counterpart of diffusers' `ModelMixin._resolve_parallel_config` (which divides by the
    accelerator count): normalise `config`, build a CPU device mesh (or use `config.mesh`), record it on `model`."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError("torch.distributed must be available and initialized before applying a `parallel_config`.")
    if isinstance(config, ContextParallelConfig):
        config = ParallelConfig(context_parallel_config=config)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None:
        raise ValueError("parallel_config: without an accelerator only context parallelism (gloo) is supported")
    mesh = cp.mesh or torch.distributed.device_mesh.init_device_mesh(
        device_type="cpu", mesh_shape=cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names
    )
    config.setup(torch.distributed.get_rank(), torch.distributed.get_world_size(), torch.device("cpu"), mesh=mesh)
    model._parallel_config = config
    return config


def _attention_roles(model: torch.nn.Module) -> list[tuple[object, str]]:
    """`(processor, attention name in its block)` of every attention; refuses a processor shared by two roles."""
    roles: dict[int, str] = {}
    result = []
    for block in model.transformer_blocks:
        for name, attn in block.named_children():
            processor = getattr(attn, "processor", None)
            if processor is None or not hasattr(processor, "_parallel_config"):
                continue
            if roles.setdefault(id(processor), name) != name:
                raise ValueError(
                    f"one attention processor instance serves both {roles[id(processor)]!r} and {name!r}; context "
                    "parallelism needs one processor per attention module (the default processors)"
                )
            result.append((processor, name))
    return result


def assign_attention_roles(model: torch.nn.Module) -> None:
    """After diffusers gave every attention processor the parallel config: keep it only on the attentions whose
    keys are the sharded video tokens; the others attend locally over keys every rank holds whole."""
    config = model._parallel_config
    for processor, name in _attention_roles(model):
        processor._parallel_config = config if name in SEQUENCE_PARALLEL_ATTENTIONS else None


def enable_context_parallel(transformer: torch.nn.Module, degree: int, *, ring: bool = False) -> torch.device:
    """Set up this process of a `torchrun --nproc-per-node N` launch for a context-parallel transformer.

    Initialises the default process group from torchrun's environment (NCCL on CUDA, gloo on CPU) unless it
    already is, pins this rank's device (`LOCAL_RANK`), and enables Ulysses (or ring) attention over `degree`
    ranks on `transformer`. Every rank must then run the same pipeline call with the same seed; only rank 0
    should write files (see `is_main_process`). Returns the device this rank should run on.
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2:
        raise ValueError(f"context-parallel degree must be an integer >= 2, got {degree!r}")
    dist = torch.distributed
    if not dist.is_available():
        raise RuntimeError("context parallelism needs torch.distributed")
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ValueError(
                f"context-parallel degree {degree}: launch under torchrun (torchrun --nproc-per-node {degree} ...)"
            )
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_world_size() != degree:
        raise ValueError(
            f"context-parallel degree {degree} must equal the number of launched processes ({dist.get_world_size()})"
        )
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    config = ContextParallelConfig(ring_degree=degree) if ring else ContextParallelConfig(ulysses_degree=degree)
    transformer.enable_parallelism(config=config)
    return device


def is_main_process() -> bool:
    """True outside torch.distributed and on rank 0: the process that writes outputs and shows progress."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
