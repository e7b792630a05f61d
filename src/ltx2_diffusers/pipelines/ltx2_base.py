"""`LTX2PipelineBase`: what every LTX-2 / LTX-2.3 pipeline shares: components and loading (`pipeline_loading`),
text -> prompt contexts, the checkpoint's default recipe, latent states and image conditions, ONE `denoise` that
steps every latent state it is given (``ltx2_denoise``), x2 upsampling and the video and audio decoders."""

from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass

import PIL.Image
import torch
from diffusers import AutoencoderKLLTX2Video, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from diffusers.utils import logging
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..guidance import MultiModalGuidance
from ..loaders.distilled_lora import DEFAULT_DISTILLED_LORA_SCALE, LTX2DistilledLoRA
from ..loaders.lora import LTX2AVLoraLoaderMixin
from ..loaders.lora_fusion import reference_lora_arithmetic
from ..loaders.model_variant import check_model_variant, pipeline_model_version
from ..models.autoencoder_audio_mel import AutoencoderAudioMel
from ..models.transformer_ltx2_av import LTX2AudioVideoTransformer, values_checked_by_caller
from ..models.video_vae_decode import (
    channels_last_decode_supported,
    decode_channels_last,
    decode_with_noise_generator,
    injects_decode_noise,
    noise_generator_decode_supported,
)
from ..models.video_vae_tiling import tiled_decode
from ..models.vocoder_hifigan import LTX2HiFiGANVocoder
from ..schedules import (
    DISTILLED_SIGMAS,
    STAGE_2_DISTILLED_SIGMAS,
    _check_table,
    flow_match_scheduler_config,
    ltx2_sigmas,
    set_scheduler_sigmas,
)
from ..validation import MAX_INFERENCE_STEPS, shown
from . import ltx2_stages as stages
from .acceleration import TransformerAcceleration, accelerated, check_attention_backend
from .block_streaming import slots_released_after
from .call_properties import LTX2CallPropertiesMixin
from .image_conditions import prepare_condition_image
from .ltx2_denoise import (
    PromptContexts,
    StepGuidance,
    advance,
    check_stage_latents,
    guided_x0,
    has_uniform_timesteps,
    is_frozen,
)
from .pipeline_checks import GUIDANCE_ALIASES, LTX2A2VChecksMixin, checked_callback_outputs, resolve_guidance
from .pipeline_loading import LTX2A2VLoadingMixin
from .pipeline_placement import LTX2PlacementMixin


logger = logging.get_logger(__name__)

DEFAULT_NEGATIVE_PROMPT = (
    "blurry, out of focus, overexposed, underexposed, low contrast, washed out colors, excessive noise, grainy "
    "texture, poor lighting, flickering, motion blur, distorted proportions, unnatural skin tones, deformed facial "
    "features, asymmetrical face, missing facial features, extra limbs, disfigured hands, wrong hand count, "
    "artifacts around text, inconsistent perspective, camera shake, incorrect depth of field, background too sharp, "
    "background clutter, distracting reflections, harsh shadows, inconsistent lighting direction, color banding, "
    "cartoonish rendering, 3D CGI look, unrealistic materials, uncanny valley effect, incorrect ethnicity, wrong "
    "gender, exaggerated expressions, wrong gaze direction, mismatched lip sync, silent or muted audio, distorted "
    "voice, robotic voice, echo, background noise, off-sync audio, incorrect dialogue, added dialogue, repetitive "
    "speech, jittery movement, awkward pauses, incorrect timing, unnatural transitions, inconsistent framing, tilted "
    "camera, flat lighting, inconsistent tone, cinematic oversaturation, stylized filters, or AI artifacts."
)


@dataclass(frozen=True)
class VersionDefaults:
    """The reference recipe of a checkpoint (ltx-pipelines' `detect_params` and its distilled pipeline).

    `sigmas`: the stage-1 table (None: `ltx2_sigmas(num_inference_steps)`); `video_guidance` / `audio_guidance`:
    stage-1 guidance (None: unguided); `stage_2_lora`: whether stage 2 applies the distilled LoRA."""

    num_inference_steps: int
    video_guidance: MultiModalGuidance | None
    audio_guidance: MultiModalGuidance | None
    sigmas: tuple[float, ...] | None = None
    stage_2_lora: bool = True


#: The `model_variant` of the last pipeline built on a transformer, kept on the transformer instance: a pipeline
#: built from another's `components` (which hold no config) keeps the distilled recipe of a distilled checkpoint.
TRANSFORMER_VARIANT_ATTR = "_ltx2_model_variant"


class LTX2PipelineBase(
    LTX2A2VLoadingMixin,
    LTX2PlacementMixin,
    LTX2A2VChecksMixin,
    LTX2CallPropertiesMixin,
    DiffusionPipeline,
    LTX2AVLoraLoaderMixin,
):
    """Shared stage code of the LTX-2 pipelines; a pipeline adds its inputs and a `__call__` listing its stages."""

    # Model offload: loading a model offloads the one before it; the VAE last, so the decode frees the transformer.
    model_cpu_offload_seq = "text_encoder->connectors->audio_vae->latent_upsampler->transformer->vae"
    _optional_components = ["tokenizer", "text_encoder", "vocoder", "latent_upsampler", "distilled_lora"]
    _exclude_from_cpu_offload = ["distilled_lora"]  # a few small tensors, moved to each weight's device on use
    _callback_tensor_inputs = ["latents"]

    # The component annotations are what diffusers' `from_pipe` and `from_pretrained` check components against.
    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKLLTX2Video,
        audio_vae: AutoencoderAudioMel,
        connectors: LTX2TextConnectors,
        transformer: LTX2AudioVideoTransformer,
        text_encoder: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        vocoder: LTX2HiFiGANVocoder | None = None,
        latent_upsampler: LTX2LatentUpsamplerModel | None = None,
        distilled_lora: LTX2DistilledLoRA | None = None,
        model_version: str | None = None,
        distilled_lora_scale: float = DEFAULT_DISTILLED_LORA_SCALE,
        model_variant: str | None = None,
    ):
        super().__init__()
        model_version = pipeline_model_version(getattr(transformer, "config", None), model_version)
        if model_variant is None:  # `Pipeline(**other.components)`: the variant the transformer was loaded as
            model_variant = getattr(transformer, TRANSFORMER_VARIANT_ATTR, "dev")
        check_model_variant(model_variant, "model_variant")
        if transformer is not None and not hasattr(transformer, TRANSFORMER_VARIANT_ATTR):
            setattr(transformer, TRANSFORMER_VARIANT_ATTR, model_variant)  # the first pipeline's (its files'), kept
        self.register_modules(
            scheduler=scheduler,
            vae=vae,
            audio_vae=audio_vae,
            connectors=connectors,
            transformer=transformer,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            vocoder=vocoder,
            latent_upsampler=latent_upsampler,
            distilled_lora=distilled_lora,
        )
        self.register_to_config(
            model_version=model_version, distilled_lora_scale=distilled_lora_scale, model_variant=model_variant
        )

    # ------------------------------------------------------------------------------------------------ speed
    def set_transformer_acceleration(self, compile: bool | str = "auto", attention_backend: str | None = "auto"):
        """The transformer's speed settings (`acceleration.TransformerAcceleration`), applied from the next call:
        `compile` "auto" (default: `compile_repeated_blocks()` on the first CUDA call), True or
        False; `attention_backend` "auto" (per GPU, `AUTO_ATTENTION_BACKENDS`), a diffusers backend name or None.
        What the user compiled or set on the transformer is never overridden; `reference_arithmetic` calls run
        eager.

        Example:

        ```py
        >>> pipe.set_transformer_acceleration(compile=False, attention_backend=None)  # eager, native SDPA
        ```"""
        setting = TransformerAcceleration(compile, attention_backend)
        check_attention_backend(setting.attention_backend)
        self._transformer_acceleration = setting

    @property
    def transformer_acceleration(self) -> TransformerAcceleration:
        return getattr(self, "_transformer_acceleration", None) or TransformerAcceleration()

    # ------------------------------------------------------------------------------------------------ text
    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        max_sequence_length: int = 1024,
        device: torch.device | None = None,
    ):
        """Text-encoder features before the connectors (diffusers' `LTX2Pipeline.encode_prompt` convention):
        `(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_attention_mask)`."""
        from .text_encoding import encode_prompt_features

        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text_encoder/tokenizer: pass prompt_embeds or prompt_contexts")
        device = device or self._execution_device
        embeds, mask = encode_prompt_features(
            self.tokenizer, self.text_encoder, prompt, max_sequence_length=max_sequence_length, device=device
        )
        negative = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        neg_embeds, neg_mask = encode_prompt_features(
            self.tokenizer, self.text_encoder, negative, max_sequence_length=max_sequence_length, device=device
        )
        return embeds, mask, neg_embeds, neg_mask

    def _contexts(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from .text_encoding import connect_prompt

        return connect_prompt(self.connectors, embeds, mask, device=self._execution_device)

    def prepare_contexts(
        self,
        prompt,
        negative_prompt,
        prompt_embeds=None,
        prompt_attention_mask=None,
        negative_prompt_embeds=None,
        negative_prompt_attention_mask=None,
        prompt_contexts=None,
        negative_prompt_contexts=None,
        max_sequence_length=1024,
        *,
        dtype: torch.dtype | None = None,
        negative: bool = True,
    ) -> PromptContexts:
        """Both modalities' positive and (with `negative`) negative contexts for the transformer, from the texts,
        the text-encoder features or the contexts given, on the execution device in `dtype`."""
        from .text_encoding import encode_prompt_features

        def features(text, embeds, mask, name):
            """`(embeds, mask)` given, or encoded from `text` with the text encoder."""
            if embeds is not None:
                if mask is None:
                    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
                return embeds, mask
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError(f"this pipeline has no text_encoder/tokenizer: pass {name}_embeds or {name}_contexts")
            return encode_prompt_features(
                self.tokenizer, self.text_encoder, text, max_sequence_length=max_sequence_length,
                device=self._execution_device,
            )  # fmt: skip

        negative_text = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        positive_features = negative_features = None
        if prompt_contexts is None:
            positive_features = features(prompt, prompt_embeds, prompt_attention_mask, "prompt")
        if negative and negative_prompt_contexts is None:
            negative_features = features(
                negative_text, negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt"
            )
        if positive_features is not None:
            prompt_contexts = self._contexts(*positive_features)
        if negative_features is not None:
            negative_prompt_contexts = self._contexts(*negative_features)
        dtype = dtype or self.transformer.dtype
        device = self._execution_device
        video, audio = (c.to(device=device, dtype=dtype) for c in prompt_contexts)
        if not negative:
            return PromptContexts(video, audio)
        negative_video, negative_audio = (c.to(device=device, dtype=dtype) for c in negative_prompt_contexts)
        return PromptContexts(video, audio, negative_video, negative_audio)

    ENHANCE_PROMPT_SEED = 42  # ltx-pipelines' default (its audio-to-video and distilled pipelines keep it)

    def enhanced_prompt(self, prompt, conditions, seed: int = ENHANCE_PROMPT_SEED) -> str:
        """`prompt` rewritten by the pipeline's Gemma (`prompt_enhancement.enhance_prompt` with the reference's
        text-to-video system prompt), sampling seeded with `seed`."""
        from .prompt_enhancement import enhance_prompt

        if conditions:
            raise ValueError(
                "enhance_prompt=True with image conditions needs the image-to-video enhancement (a Gemma3Processor), "
                "which this pipeline does not hold; enhance without conditions or pass the prompt as is"
            )
        text = prompt[0] if isinstance(prompt, list) else prompt
        enhanced = enhance_prompt(self.text_encoder, self.tokenizer, text, seed=seed)
        logger.info(f"enhanced prompt: {enhanced}")
        return enhanced

    # ------------------------------------------------------------------------------------------------ recipe
    @property
    def is_distilled(self) -> bool:
        return self.config.get("model_variant", "dev") == "distilled"

    def version_defaults(self) -> VersionDefaults:
        """ltx-pipelines' recipe for this checkpoint's `model_version` and `model_variant`, as its `detect_params`
        picks it: LTX-2.3 (`LTX_2_3_PARAMS`: 30 steps, STG block 28), LTX-2 (`LTX_2_PARAMS`: 40 steps, block 29),
        audio cfg 7; a distilled checkpoint (`DistilledPipeline`): the 8 `DISTILLED_SIGMAS`, no guidance, no
        stage-2 LoRA."""
        if self.is_distilled:
            return VersionDefaults(len(DISTILLED_SIGMAS) - 1, None, None, DISTILLED_SIGMAS, stage_2_lora=False)
        blocks = [28] if str(self.config.model_version).startswith("2.3") else [29]
        steps = 30 if blocks == [28] else 40
        return VersionDefaults(
            steps, MultiModalGuidance(stg_blocks=blocks), MultiModalGuidance(cfg_scale=7.0, stg_blocks=blocks)
        )

    def stage_1_recipe(self, num_inference_steps, sigmas, video_guidance, audio_guidance=None, **aliases):
        """`(num_inference_steps, sigma table or None, video_guidance, audio_guidance, stage_2_lora)` of stage 1:
        the arguments given, the rest from `version_defaults()`. `sigmas` fixes the step count (a different
        `num_inference_steps` is refused); the flat aliases (`guidance_scale`, ...) apply to the video guidance
        (from the disabled guidance when the recipe has none)."""
        defaults = self.version_defaults()
        table = None
        if sigmas is not None:
            if hasattr(sigmas, "__len__") and len(sigmas) > MAX_INFERENCE_STEPS + 1:
                raise ValueError(
                    f"sigmas holds {len(sigmas)} values, above the bound of {MAX_INFERENCE_STEPS} steps "
                    "(validation.MAX_INFERENCE_STEPS)"
                )
            steps = len(_check_table(sigmas))
            if steps > MAX_INFERENCE_STEPS:
                raise ValueError(
                    f"sigmas gives {steps} steps, above the bound of {MAX_INFERENCE_STEPS} "
                    "(validation.MAX_INFERENCE_STEPS)"
                )
            if steps < 2:  # named here: check_inputs would name num_inference_steps, which the user did not pass
                raise ValueError(
                    f"sigmas gives 1 step ({shown(sigmas)}); a stage-1 table needs at least 2, as num_inference_steps"
                )
            if num_inference_steps is not None and num_inference_steps != steps:
                raise ValueError(f"num_inference_steps={num_inference_steps} but sigmas holds {steps} steps")
            num_inference_steps, table = steps, sigmas
        elif num_inference_steps is None:
            num_inference_steps, table = defaults.num_inference_steps, defaults.sigmas
        given = any(aliases.get(name) is not None for name in GUIDANCE_ALIASES)
        if video_guidance is not None or given or defaults.video_guidance is not None:
            default = defaults.video_guidance or MultiModalGuidance.disabled()
            video_guidance = resolve_guidance(video_guidance, default, **aliases)
        audio_guidance = defaults.audio_guidance if audio_guidance is None else audio_guidance
        return num_inference_steps, table, video_guidance, audio_guidance, defaults.stage_2_lora

    def stage_sigmas(self, num_inference_steps: int | None, sigmas=None, default=None) -> torch.Tensor:
        """The sigmas of a stage through the registered `scheduler` (`set_scheduler_sigmas`: a scheduler that
        cannot run LTX-2's Euler loop is refused with a ValueError naming its class): `sigmas` if given, else
        `default` (a table), else `ltx2_sigmas(num_inference_steps)`."""
        if sigmas is None:
            sigmas = default if default is not None else ltx2_sigmas(num_inference_steps)
        return set_scheduler_sigmas(self.scheduler, sigmas, device=self._execution_device)

    # ------------------------------------------------------------------------------------------------ latents
    def encode_image(self, image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Normalised video-VAE latent means of `image` `(B, 3, F, H, W)` in [-1, 1]."""
        latents = self.vae.encode(image.to(device=self._execution_device, dtype=self.vae.dtype)).latent_dist.mode()
        return self.normalize_latents(latents).to(dtype)

    def normalize_latents(self, latents):
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1).to(latents)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1).to(latents)
        return (latents - mean) * self.vae.config.scaling_factor / std

    def denormalize_latents(self, latents):
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1).to(latents)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1).to(latents)
        return latents * std / self.vae.config.scaling_factor + mean

    def conditioned_video_state(self, conditions, size, height, width, frame_rate, dtype, initial_latent=None):
        """Video state of latent size `size` (zeros or `initial_latent`) with the image `conditions`: frame 0
        replaces the first latent frame, other frames are appended keyframe tokens."""
        state = stages.video_state(
            size,
            self.transformer.config.in_channels,
            frame_rate,
            initial_latent=initial_latent,
            dtype=dtype,
            device=self._execution_device,
        )
        for condition in conditions:
            pixels = prepare_condition_image(condition.image, height, width, crf=condition.crf)
            latent = self.encode_image(pixels, dtype)
            if condition.frame_index == 0:
                state = stages.condition_latent_frame(state, latent, 0, condition.strength)
            else:
                state = stages.append_keyframe(state, latent, condition.frame_index, condition.strength, frame_rate)
        return state

    def stage_1_noise(self, latents, video, size, generator):
        """User-given stage-1 noise `latents` `(1, C, F', H', W')` as tokens (None: the generator draws it);
        appended keyframe tokens, which the caller cannot size, get noise from `generator`."""
        if latents is None:
            return None
        expected = (1, video.latent.shape[-1], *size)
        if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must have shape {expected} for this size and frame count, got {shape}")
        noise = stages.patchify_video(latents.to(device=video.latent.device, dtype=video.latent.dtype))
        extra = video.latent.shape[1] - video.num_tokens
        if extra:
            device = generator.device if generator is not None else video.latent.device
            drawn = torch.randn((1, extra, noise.shape[-1]), generator=generator, device=device, dtype=noise.dtype)
            noise = torch.cat([noise, drawn.to(noise.device)], dim=1)
        return noise

    def noised_audio_state(self, num_frames, frame_rate, generator, noise_scale, dtype, initial_tokens=None):
        """Audio state over the video span (`AudioLatentShape.from_video_pixel_shape`: zeros, or
        `initial_tokens`), every token generated, noised at `noise_scale`; its noise is drawn after the video's,
        as the reference draws it."""
        frames = stages.audio_latent_frames(num_frames / frame_rate)
        if initial_tokens is None:
            channels = self.transformer.config.audio_in_channels
            initial_tokens = torch.zeros(1, frames, channels, dtype=dtype, device=self._execution_device)
        state = stages.audio_state(initial_tokens.to(dtype), frozen=False)
        return stages.add_noise(state, generator, noise_scale)

    def stage_1_video(self, conditions, num_frames, height, width, frame_rate, latents, generator, dtype, stage_2):
        """The noised stage-1 video state (half size with `stage_2`) and its latent size."""
        scale = 2 if stage_2 else 1
        height, width = height // scale, width // scale
        size = stages.video_latent_size(num_frames, height, width)
        video = self.conditioned_video_state(conditions, size, height, width, frame_rate, dtype)
        noise = self.stage_1_noise(latents, video, size, generator)
        return stages.add_noise(video, generator, 1.0, noise=noise), size

    def stage_2_refine(
        self, latent, audio, conditions, num_frames, height, width, frame_rate, contexts, generator, callback,
        *, lora: bool, lora_scale, step_offset: int, dtype,
    ):  # fmt: skip
        """Stage 2: x2 upsampling of the stage-1 `latent`, image conditions again at full size, re-noising of the
        video and of `audio` (a frozen state stays put) to the stage-2 table's first sigma, then unguided steps
        on `STAGE_2_DISTILLED_SIGMAS`, with the distilled LoRA where the recipe uses it. Returns the states."""
        size = stages.video_latent_size(num_frames, height, width)
        video = self.conditioned_video_state(
            conditions, size, height, width, frame_rate, dtype, initial_latent=self.upsample(latent)
        )
        sigmas = set_scheduler_sigmas(
            self.stage_2_scheduler(), STAGE_2_DISTILLED_SIGMAS, device=self._execution_device
        )
        video = stages.add_noise(video, generator, sigmas[0])
        audio = stages.add_noise(audio, generator, sigmas[0])
        with self.distilled_lora_applied(lora_scale) if lora else nullcontext():
            return self.denoise(
                video, audio, sigmas, contexts, StepGuidance(), *callback, stage=1, step_offset=step_offset
            )

    def stage_2_scheduler(self):
        """A scheduler of the registered scheduler's class with the options that keep a table as is
        (`flow_match_scheduler_config`): stage 2 runs the distilled model's `STAGE_2_DISTILLED_SIGMAS` verbatim,
        whatever shift or sigma transform the user's scheduler applies to stage 1 (which stays registered,
        untouched by stage 2)."""
        return type(self.scheduler).from_config({**self.scheduler.config, **flow_match_scheduler_config()})

    def runs_stage_2(self, stage_2: bool) -> bool:
        """Whether stage 2 runs: asked for, and the call not interrupted in stage 1. An interrupted call starts no
        other stage: its output is decoded from the stage-1 latents as they were, at the stage-1 resolution."""
        if stage_2 and self.interrupt:
            logger.warning(
                "the call was interrupted in stage 1: stage 2 does not run; the output is decoded from the stage-1 "
                "latents as they were at the interrupt, at the stage-1 resolution (half the height and width)"
            )
            return False
        return stage_2

    @staticmethod
    def final_tokens(state: stages.LatentState) -> torch.Tensor:
        """The generated tokens of a state (appended conditioning tokens dropped)."""
        return state.latent[:, : state.num_tokens]

    # ------------------------------------------------------------------------------------------------ denoise
    def denoise(
        self, video, audio, sigmas, contexts: PromptContexts, guidance: StepGuidance, callback_on_step_end=None,
        callback_inputs=(), guidance_batch_size=None, *, stage: int = 0, step_offset: int = 0,
    ):  # fmt: skip
        """Euler loop over `sigmas` for both states (`ltx2_denoise`: guided x0 of both modalities per step; a
        frozen state stays put). The callback gets the step index `step_offset + i` and the timestep
        `sigma * 1000`; `self.stage_index` is `stage` and `self.current_timestep` the step's timestep meanwhile.
        An interrupt (`pipe._interrupt = True`) stops the loop before the next step. The first step's forward checks
        its inputs' values; the later forwards do not (no device sync per step: the host queues the next forward
        while the GPU computes) and `check_stage_latents` checks the latents after the first step and at the end.
        Returns `(video, audio)`."""
        previous = None
        self._stage_index = stage
        if stage == 0:  # the call's guidance (`guidance_scale`, `do_classifier_free_guidance` after the call)
            self._call_guidance = guidance
        self._stage_guidance = guidance  # the running stage's (stage 2 is unguided), until the loop ends
        exact = getattr(self, "_reference_arithmetic", False)
        frozen = is_frozen(video), is_frozen(audio)
        # One timestep per item where a modality's tokens share it (the masks do not change during the loop); the
        # reference's per-token AdaLN under `reference_arithmetic`.
        per_item_timesteps = (False, False) if exact else (has_uniform_timesteps(video), has_uniform_timesteps(audio))
        host_sigmas = sigmas.tolist()  # (float32 values) the Euler steps take them from the host: no sync per step
        done = 0  # steps run; the first step's forward checks its inputs, later ones rely on check_stage_latents
        try:
            with (
                self.progress_bar(total=len(sigmas) - 1) as progress_bar,
                reference_lora_arithmetic(self.transformer) if exact else nullcontext(),
                accelerated(self.transformer, self.transformer_acceleration, self._execution_device, exact),
                slots_released_after(self.transformer),
            ):
                if hasattr(progress_bar, "set_description"):  # after the user's `desc` (set_progress_bar_config)
                    desc = getattr(self, "_progress_bar_config", {}).get("desc")
                    progress_bar.set_description(f"{desc}: stage {stage + 1}" if desc else f"stage {stage + 1}")
                for i in range(len(sigmas) - 1):
                    if self.interrupt:
                        logger.warning(f"interrupted: stage {stage + 1} stops before its step {i}")
                        if done > 1:
                            check_stage_latents(video, audio, stage + 1, done)
                        break
                    sigma = sigmas[i]
                    self._current_timestep = sigma * 1000
                    with values_checked_by_caller(self.transformer) if done else nullcontext():
                        previous = guided_x0(
                            self.transformer,
                            video,
                            audio,
                            sigma,
                            i,
                            contexts,
                            guidance,
                            previous,
                            batch_size=guidance_batch_size,
                            share_prefix=not exact,
                            per_item_timesteps=per_item_timesteps,
                            attention_kwargs=getattr(self, "_attention_kwargs", None),
                        )
                    if not frozen[0]:
                        video = advance(video, previous.video, host_sigmas[i], host_sigmas[i + 1])
                    if not frozen[1]:
                        audio = advance(audio, previous.audio, host_sigmas[i], host_sigmas[i + 1])
                    done += 1
                    if done == 1 or done == len(sigmas) - 1:
                        check_stage_latents(video, audio, stage + 1, done)
                    if callback_on_step_end is not None:
                        video, audio = self._step_callback(
                            callback_on_step_end, callback_inputs, step_offset + i, sigma, video, audio
                        )
                    progress_bar.update()
        finally:  # also when the call fails: `current_timestep` is None outside the loop
            self._current_timestep = None
            self._stage_guidance = None
        return video, audio

    def _step_callback(self, callback, names, step, sigma, video, audio):
        values = {"latents": video.latent, "audio_latents": audio.latent}
        outputs = callback(self, step, sigma * 1000, {k: values[k] for k in names or ()})
        outputs = checked_callback_outputs(outputs, values, self._callback_tensor_inputs)
        if "latents" in outputs:
            video = stages.replace(video, latent=outputs["latents"].to(video.latent.device))
        if "audio_latents" in outputs:
            audio = stages.replace(audio, latent=outputs["audio_latents"].to(audio.latent.device))
        return video, audio

    # ------------------------------------------------------------------------------------------------ outputs
    def upsample(self, latents: torch.Tensor) -> torch.Tensor:
        """x2 spatial upsampling in the VAE's un-normalised latent space."""
        upsampled = self.latent_upsampler(self.denormalize_latents(latents).to(self.latent_upsampler.dtype))
        return self.normalize_latents(upsampled.to(latents.dtype))

    DECODE_NOISE_SCALE = 0.025  # timestep-conditioned decoders (LTX-2): noise mixed into the normalised latent
    DECODE_TIMESTEP = 0.05

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, generator=None, output_type: str = "pil", *, decode_timestep=None,
        decode_noise_scale=None,
    ):  # fmt: skip
        """Frames from normalised video latents (a call's `output_type="latent"` frames), as the reference decoder:
        timestep-conditioned VAEs (LTX-2) first mix `decode_noise_scale` of noise (drawn from `generator`) into the
        latent and decode at `decode_timestep` (defaults `DECODE_NOISE_SCALE`, `DECODE_TIMESTEP`, the reference's;
        `decode_timestep` alone sets both, as diffusers' `LTX2Pipeline`). With `enable_vae_tiling`, tile by tile
        (each tile its own noise draw) as ltx-core's tiled decode. `output_type`: "pil", "np" or "pt"."""
        from .peer_arguments import check_peer_arguments

        check_peer_arguments(decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale, vae=self.vae)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {shown(output_type)}")
        timestep = self.DECODE_TIMESTEP if decode_timestep is None else float(decode_timestep)
        if decode_noise_scale is None:
            decode_noise_scale = self.DECODE_NOISE_SCALE if decode_timestep is None else decode_timestep
        noise_scale = float(decode_noise_scale)
        latents = latents.to(self.vae.dtype)
        decode_tile = functools.partial(self._decode_tile, generator=generator, timestep=timestep, scale=noise_scale)
        if self.vae_tiling is None:
            video = decode_tile(latents)
        else:
            video = tiled_decode(decode_tile, latents, self.vae_tiling)
        frames = ((video.float() + 1) / 2).clamp(0, 1)  # (B, 3, F, H, W)
        if output_type == "pt":
            return frames.permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W), as diffusers' video pipelines
        if output_type == "np":
            return frames.permute(0, 2, 3, 4, 1).cpu().numpy()  # (B, F, H, W, 3)
        # PIL: uint8 on the device (round half to even, as numpy), so the host copy is a quarter of the floats.
        pixels = frames.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()
        return [[PIL.Image.fromarray(f) for f in batch] for batch in pixels]

    def _decode_tile(self, latents: torch.Tensor, generator, timestep=DECODE_TIMESTEP, scale=DECODE_NOISE_SCALE):
        temb = None
        if getattr(self.vae.config, "timestep_conditioning", False):
            device = generator.device if generator is not None else latents.device
            noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
            latents = noise.to(latents.device) * scale + (1.0 - scale) * latents
            temb = torch.full((latents.shape[0],), timestep, device=latents.device, dtype=latents.dtype)
        latents = self.denormalize_latents(latents)
        if injects_decode_noise(self.vae):
            if noise_generator_decode_supported(self.vae, latents.device, generator):  # ltx-core's noise draws
                return decode_with_noise_generator(self.vae, latents, temb, generator)
            logger.warning(
                "the video VAE's decoder injects noise, which is drawn from the global RNG here (the decode is not "
                "reproducible from `generator`): its seeded draws need the VAE without offload, tiling, slicing or "
                "hooks, and the generator on the latents' device (%s)",
                latents.device,
            )
        if self._channels_last_decode(latents):
            return decode_channels_last(self.vae, latents, temb)
        return self.vae.decode(latents, temb=temb, return_dict=False)[0]

    #: Devices where the decode walks the VAE's decoder channels-last (`models.video_vae_decode`: the same modules
    #: and ops without cuDNN's layout transposes; measured on CUDA only). Not under `reference_arithmetic`.
    CHANNELS_LAST_DECODE_DEVICES = ("cuda",)

    def _channels_last_decode(self, latents: torch.Tensor) -> bool:
        return self._channels_last_decode_on(latents.device, getattr(self, "_reference_arithmetic", False))

    def _channels_last_decode_on(self, device: torch.device, reference_arithmetic: bool) -> bool:
        """Whether a decode on `device` walks the decoder channels-last (the memory tiers' decode estimate asks
        this too, `memory.measure_memory_sizes`)."""
        return (
            device.type in self.CHANNELS_LAST_DECODE_DEVICES
            and not reference_arithmetic
            and channels_last_decode_supported(self.vae)
        )

    @torch.no_grad()
    def decode_audio(self, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
        """`(waveform [channels, samples] float32 on CPU, sample rate)` of normalised audio latent tokens: the
        audio VAE decoder, then the vocoder at its output rate (ltx-core's `decode_audio`)."""
        if self.vocoder is None:
            raise ValueError("this pipeline has no vocoder: it cannot render audio (pass output_type='latent')")
        mel = self.audio_vae.decode_tokens(tokens.to(device=self._execution_device, dtype=self.audio_vae.dtype))
        waveform = self.vocoder(mel.to(self.vocoder.dtype)).squeeze(0).float()
        return waveform.cpu(), int(self.vocoder.sampling_rate)
