"""One guided denoising step for BOTH modalities (ltx-pipelines' ``multi_modal_guider_denoising_func``).

Pure functions over ``LatentState`` (see ``ltx2_stages``): the pass table of a step is built from the video AND
the audio guidance; every pass predicts both modalities' x0 (all passes in one batched forward, or a few per
forward); each modality's guided x0 is its own ``combine_guidance``. A frozen modality (denoise mask 0, as the
audio of audio-to-video) has timesteps 0 and is blended back to its clean latent by ``advance``, so it stays put.

Passes (``guidance.PASS_NAMES``), as the reference builds them:

- ``"cond"``: positive contexts;
- ``"uncond"``: each modality's negative context where one is given, else its positive one;
- ``"perturbed"``: self-attention skipped in ``stg_blocks``, for each modality whose guidance needs STG;
- ``"isolated"``: audio<->video cross-attention skipped in every block.

With no guidance at all (both ``None``) the step is ltx-pipelines' ``simple_denoising_func``: one ``"cond"``
pass whose x0 is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..guidance import MultiModalGuidance, combine_guidance, guidance_passes
from ..models.perturbations import LTX2Perturbation, shared_prefixes
from ..schedules import euler_step
from ..validation import MAX_NORMALISED_INPUT_ABS, check_all_bounded
from .ltx2_stages import LatentState, blend_with_clean, x0_from_velocity


@dataclass(frozen=True)
class PromptContexts:
    """Post-connector text contexts `(B, S, D)` of each modality; the negatives are needed only under CFG."""

    video: torch.Tensor
    audio: torch.Tensor
    negative_video: torch.Tensor | None = None
    negative_audio: torch.Tensor | None = None


@dataclass(frozen=True)
class StepGuidance:
    """The guidance of one step for both modalities (``None``: that modality is not guided).

    One ``None`` counts as ``MultiModalGuidance.disabled()`` (the reference's neutral guider, whose formula still
    applies); both ``None`` is the unguided step (``simple_denoising_func``).
    """

    video: MultiModalGuidance | None = None
    audio: MultiModalGuidance | None = None

    def __post_init__(self):
        for name in ("video", "audio"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, MultiModalGuidance):
                raise TypeError(f"{name}_guidance must be a MultiModalGuidance or None, got {type(value).__name__}")

    @property
    def unguided(self) -> bool:
        return self.video is None and self.audio is None

    def resolved(self) -> tuple[MultiModalGuidance, MultiModalGuidance]:
        disabled = MultiModalGuidance.disabled()
        return (self.video or disabled, self.audio or disabled)

    def skips(self, step_index: int) -> tuple[bool, bool]:
        """Whether the video / audio reuse their previous guided x0 at ``step_index``."""
        if self.unguided:
            return (False, False)
        video, audio = self.resolved()
        return (video.should_skip_step(step_index), audio.should_skip_step(step_index))

    def passes(self, step_index: int) -> tuple[str, ...]:
        """The passes of ``step_index`` in the reference's order (empty when both modalities skip it)."""
        if self.unguided:
            return ("cond",)
        return guidance_passes(*self.resolved(), step_index=step_index)

    def perturbations(self, name: str) -> tuple[LTX2Perturbation, ...]:
        """The attention a pass skips (the reference's ``PerturbationConfig`` of that pass)."""
        if name in ("cond", "uncond"):
            return ()
        if name == "isolated":
            return (LTX2Perturbation("skip_a2v_cross_attn"), LTX2Perturbation("skip_v2a_cross_attn"))
        if name != "perturbed":
            raise ValueError(f"unknown guidance pass {name!r}")
        perturbations = []
        for kind, guidance in zip(("skip_video_self_attn", "skip_audio_self_attn"), self.resolved(), strict=True):
            if guidance.needs_perturbed:
                blocks = None if guidance.stg_blocks is None else tuple(guidance.stg_blocks)
                perturbations.append(LTX2Perturbation(kind, blocks))
        return tuple(perturbations)

    def contexts(self, name: str, contexts: PromptContexts) -> tuple[torch.Tensor, torch.Tensor]:
        """`(video, audio)` contexts of a pass. The negative pass takes each modality's negative context where one
        is given (whether or not that modality needs CFG, as the reference), else its positive one; a modality
        under CFG must have one."""
        if name != "uncond":
            return contexts.video, contexts.audio
        video, audio = self.resolved()
        pairs = ((video, contexts.video, contexts.negative_video), (audio, contexts.audio, contexts.negative_audio))
        chosen = []
        for modality, (guidance, positive, negative) in zip(("video", "audio"), pairs, strict=True):
            if guidance.needs_negative and negative is None:
                raise ValueError(f"{modality}_guidance needs CFG but contexts.negative_{modality} is None")
            chosen.append(positive if negative is None else negative)
        return chosen[0], chosen[1]


@dataclass(frozen=True)
class PassX0:
    """x0 predictions of one pass for both modalities, in the latents' token layout."""

    video: torch.Tensor
    audio: torch.Tensor


def is_frozen(state: LatentState) -> bool:
    """Whether no token of ``state`` is denoised (mask 0 everywhere): its x0 is never used."""
    return not bool(state.denoise_mask.any())


def has_uniform_timesteps(state: LatentState) -> bool:
    """Whether every token of each item of ``state`` has the same denoise mask value (so the same timestep at
    every sigma: a plain generation, or a frozen modality; not with conditioned frames or appended keyframes)."""
    mask = state.denoise_mask
    return bool((mask == mask[:, :1]).all())


def _transformer_timesteps(timesteps: torch.Tensor, n: int, scale, per_item: bool) -> torch.Tensor:
    """``(1, T, 1)`` per-token timesteps -> the transformer's ``(n, T)``, or ``(n,)`` (the first token's, equal to
    all of them) when ``per_item``: the model then computes its timestep modulation once per item and broadcasts
    it over the tokens instead of once per token (the same values; the AdaLN matmuls see 1 row instead of T, so
    their rounding can differ in the last bits)."""
    if per_item:
        return (timesteps[:, :1] * scale).expand(n, -1, -1).reshape(n)
    return (timesteps * scale).expand(n, -1, -1).squeeze(-1)


def predict_pass_x0(
    transformer,
    video: LatentState,
    audio: LatentState,
    sigma: torch.Tensor,
    passes: tuple[str, ...],
    contexts: PromptContexts,
    guidance: StepGuidance,
    *,
    batch_size: int | None = None,
    share_prefix: bool = False,
    per_item_timesteps: tuple[bool, bool] = (False, False),
    attention_kwargs: dict | None = None,
) -> dict[str, PassX0]:
    """x0 of both modalities for each of ``passes`` at ``sigma``, ``batch_size`` passes per forward (None: all in
    ONE batched forward; 1: one forward per pass, as the reference runs them). Passes whose texts differ in
    length run one per forward. Each modality's timesteps are ``denoise_mask * sigma``; both share ``sigma``,
    scaled by the transformer's ``timestep_scale_multiplier`` (the reference model scales inside).

    ``share_prefix``: in a batched forward, passes with the conditional pass's inputs (``"perturbed"``) reuse its
    blocks before their first perturbed one (``SharedPrefix``; equal up to float reassociation, not bitwise).

    ``per_item_timesteps``: for the video / the audio, whose timesteps are uniform over the tokens
    (``has_uniform_timesteps``), pass one timestep per item (``_transformer_timesteps``).

    ``attention_kwargs``: given to every forward (diffusers' ``attention_kwargs``, e.g. ``{"scale": s}``)."""
    if not passes:
        return {}
    pass_contexts = {name: guidance.contexts(name, contexts) for name in passes}
    if len({(v.shape[1], a.shape[1]) for v, a in pass_contexts.values()}) > 1:
        batch_size = 1
    if batch_size is not None and len(passes) > batch_size:
        x0 = {}
        options = dict(
            share_prefix=share_prefix, per_item_timesteps=per_item_timesteps, attention_kwargs=attention_kwargs
        )
        for start in range(0, len(passes), batch_size):
            chunk = passes[start : start + batch_size]
            x0.update(predict_pass_x0(transformer, video, audio, sigma, chunk, contexts, guidance, **options))
        return x0
    n = len(passes)
    scale = transformer.config.timestep_scale_multiplier
    video_t, audio_t = video.timesteps(sigma), audio.timesteps(sigma)
    sigmas = sigma.reshape(1).expand(n) * scale
    perturbations = [guidance.perturbations(name) for name in passes]
    shared = None
    if share_prefix and "cond" in passes:
        same_inputs = {i: passes.index("cond") for i, name in enumerate(passes) if name in ("perturbed", "isolated")}
        shared = shared_prefixes(perturbations, same_inputs, transformer.config.num_layers) or None
    video_velocity, audio_velocity = transformer(
        hidden_states=video.latent.expand(n, -1, -1),
        audio_hidden_states=audio.latent.expand(n, -1, -1),
        encoder_hidden_states=torch.cat([pass_contexts[name][0] for name in passes]),
        audio_encoder_hidden_states=torch.cat([pass_contexts[name][1] for name in passes]),
        timestep=_transformer_timesteps(video_t, n, scale, per_item_timesteps[0]),
        audio_timestep=_transformer_timesteps(audio_t, n, scale, per_item_timesteps[1]),
        sigma=sigmas,
        audio_sigma=sigmas,
        video_coords=video.coords.expand(n, -1, -1, -1),
        audio_coords=audio.coords.expand(n, -1, -1, -1),
        use_cross_timestep=True,
        perturbations=perturbations,
        shared_prefix=shared,
        attention_kwargs=attention_kwargs,
        return_dict=False,
    )
    video_x0 = x0_from_velocity(video.latent.expand(n, -1, -1), video_velocity, video_t).split(1)
    audio_x0 = x0_from_velocity(audio.latent.expand(n, -1, -1), audio_velocity, audio_t).split(1)
    return {name: PassX0(v, a) for name, v, a in zip(passes, video_x0, audio_x0, strict=True)}


def guided_x0(
    transformer,
    video: LatentState,
    audio: LatentState,
    sigma: torch.Tensor,
    step_index: int,
    contexts: PromptContexts,
    guidance: StepGuidance,
    previous: PassX0 | None = None,
    *,
    batch_size: int | None = None,
    share_prefix: bool = False,
    per_item_timesteps: tuple[bool, bool] = (False, False),
    attention_kwargs: dict | None = None,
) -> PassX0:
    """Both modalities' guided x0 at ``step_index`` (the reference's guider denoising step).

    A modality whose guidance skips this step returns its ``previous`` guided x0. The reference runs such a step
    with the skipping modality switched off in the forward, which only matters to the other modality; that case
    is supported when the other modality is frozen (then no forward runs and the frozen one returns its clean
    latent, which ``advance`` keeps anyway), and refused otherwise.
    """
    skip_video, skip_audio = guidance.skips(step_index)
    if skip_video or skip_audio:
        if previous is None:
            raise ValueError(f"step {step_index} reuses the previous guided x0 but previous is None")
        if skip_video and skip_audio:
            return previous
        other, other_name = (audio, "audio") if skip_video else (video, "video")
        if not is_frozen(other):
            raise ValueError(
                f"step {step_index}: video_guidance.skip_step and audio_guidance.skip_step skip different steps while "
                f"the {other_name} is denoised; the reference switches the skipping modality off in that forward, "
                "which LTX2AudioVideoTransformer does not support. Use the same skip_step for both."
            )
        if skip_video:
            return PassX0(previous.video, audio.clean)
        return PassX0(video.clean, previous.audio)

    passes = guidance.passes(step_index)
    x0 = predict_pass_x0(
        transformer, video, audio, sigma, passes, contexts, guidance,
        batch_size=batch_size, share_prefix=share_prefix, per_item_timesteps=per_item_timesteps,
        attention_kwargs=attention_kwargs,
    )  # fmt: skip
    if guidance.unguided:
        return x0["cond"]
    guided = []
    for modality, modality_guidance in zip(("video", "audio"), guidance.resolved(), strict=True):
        parts = {name: getattr(x0[name], modality) for name in passes}
        guided.append(
            combine_guidance(
                parts["cond"],
                parts.get("uncond"),
                parts.get("perturbed"),
                parts.get("isolated"),
                guidance=modality_guidance,
            )
        )
    return PassX0(*guided)


def check_stage_latents(video: LatentState, audio: LatentState, stage: int, steps: int) -> None:
    """Both latents after ``steps`` steps of stage ``stage`` (1-based) finite and within the transformer's input
    bound, in one device sync; a ValueError naming the stage, the step and the likely cause otherwise."""
    where = f"after step {steps} of stage {stage}"
    try:
        check_all_bounded(
            [
                (
                    [(f"the video latent {where}", video.latent), (f"the audio latent {where}", audio.latent)],
                    MAX_NORMALISED_INPUT_ABS,
                    "the transformer's input bound",
                    None,
                )
            ]
        )
    except ValueError as error:
        raise ValueError(
            f"{error}: the transformer's predictions were not finite or grew out of range (weights holding NaN or "
            f"infinite values, or an overflow in {video.latent.dtype})"
        ) from None


def advance(state: LatentState, denoised: torch.Tensor, sigma, sigma_next) -> LatentState:
    """Blend ``denoised`` with the clean latent by the mask, then one Euler step (the reference loop's update)."""
    return replace(state, latent=euler_step(state.latent, blend_with_clean(denoised, state), sigma, sigma_next))
