"""`LTX2AudioToVideoPipeline`: two-stage LTX-2 / LTX-2.3 audio-to-video generation (ltx-pipelines' A2Vid)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, logging, replace_example_docstring

from ..audio.io import load_audio
from ..guidance import MultiModalGuidance, combine_guidance, guidance_passes
from ..loaders.lora import LTX2AVLoraLoaderMixin
from ..loaders.lora_fusion import reference_lora_arithmetic
from ..schedules import STAGE_2_DISTILLED_SIGMAS, euler_step, ltx2_sigmas
from ..validation import MAX_NUM_FRAMES, check_video_size, resolve_limit
from . import ltx2_stages as stages
from .call_guard import exclusive_call
from .image_conditions import LTX2ImageCondition, normalize_conditions, prepare_condition_image
from .pipeline_checks import LTX2A2VChecksMixin, resolve_guidance, single_generator
from .pipeline_loading import LTX2A2VLoadingMixin, load_gemma  # noqa: F401  (load_gemma: public helper)


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


@dataclass
class LTX2AudioToVideoPipelineOutput(BaseOutput):
    """`frames`: PIL lists, `(B, F, H, W, 3)` numpy floats in [0, 1] (`"np"`), `(B, F, 3, H, W)` tensors (`"pt"`)
    or latents; `audio`: the ORIGINAL
    input samples covering the video, `[channels, samples]` float32, at `audio_sample_rate`."""

    frames: Any
    audio: torch.Tensor
    audio_sample_rate: int


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from ltx2_diffusers import LTX2AudioToVideoPipeline, export_to_video_with_audio

        >>> pipe = LTX2AudioToVideoPipeline.from_pretrained("ltx-2.3-22b-dev-diffusers", torch_dtype=torch.bfloat16)
        >>> pipe.enable_model_cpu_offload()
        >>> pipe.enable_vae_tiling()
        >>> out = pipe(
        ...     prompt="A singer on a small stage, warm spotlight, handheld camera",
        ...     audio="song.wav",
        ...     height=512,
        ...     width=768,
        ...     generator=torch.Generator().manual_seed(42),
        ... )
        >>> export_to_video_with_audio(out.frames[0], out.audio, out.audio_sample_rate, "song.mp4", fps=24)
        ```
"""


class LTX2AudioToVideoPipeline(LTX2A2VLoadingMixin, LTX2A2VChecksMixin, DiffusionPipeline, LTX2AVLoraLoaderMixin):
    r"""Audio-to-video with LTX-2 / LTX-2.3: a video whose motion follows the given audio, which it carries.

    Stage 1 denoises the video at half resolution with the audio latents frozen, under multimodal guidance
    (cfg, stg, modality, rescale). Stage 2 upsamples x2 with `latent_upsampler` and refines on the distilled
    sigma table with the pipeline-owned distilled LoRA (`distilled_lora`, an `LTX2DistilledLoRA`, never a PEFT
    adapter) applied at `distilled_lora_scale`. Numerically the reference `A2VidPipelineTwoStage`.
    """

    # Model offload: loading a model offloads the one before it; the VAE last, so the decode frees the transformer.
    model_cpu_offload_seq = "text_encoder->connectors->audio_vae->latent_upsampler->transformer->vae"
    _optional_components = ["tokenizer", "text_encoder", "vocoder", "latent_upsampler", "distilled_lora"]
    _exclude_from_cpu_offload = ["distilled_lora"]  # a few small tensors, moved to each weight's device on use
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        scheduler,
        vae,
        audio_vae,
        connectors,
        transformer,
        text_encoder=None,
        tokenizer=None,
        vocoder=None,
        latent_upsampler=None,
        distilled_lora=None,
        model_version: str = "2.3.0",
        distilled_lora_scale: float = 0.8,
    ):
        super().__init__()
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
        self.register_to_config(model_version=model_version, distilled_lora_scale=distilled_lora_scale)

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
        prompt_embeds,
        prompt_attention_mask,
        negative_prompt_embeds,
        negative_prompt_attention_mask,
        prompt_contexts,
        negative_prompt_contexts,
        max_sequence_length,
    ):
        """Positive and negative `(video_context, audio_context)` pairs for the transformer."""
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

        negative = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        positive_features = negative_features = None
        if prompt_contexts is None:
            positive_features = features(prompt, prompt_embeds, prompt_attention_mask, "prompt")
        if negative_prompt_contexts is None:
            negative_features = features(
                negative, negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt"
            )
        if positive_features is not None:
            prompt_contexts = self._contexts(*positive_features)
        if negative_features is not None:
            negative_prompt_contexts = self._contexts(*negative_features)
        return tuple(prompt_contexts), tuple(negative_prompt_contexts)

    def version_defaults(self) -> tuple[int, MultiModalGuidance]:
        """`(num_inference_steps, video_guidance)` of ltx-pipelines' parameter set for this checkpoint's
        `model_version` (`LTX_2_3_PARAMS`: 30 steps, STG block 28; `LTX_2_PARAMS`: 40 steps, block 29), as its
        `detect_params` picks them. The reference A2Vid CLI (and `ltx2-a2v`) always starts from the LTX-2.3 set."""
        if str(self.config.model_version).startswith("2.3"):
            return 30, MultiModalGuidance()
        return 40, MultiModalGuidance(stg_blocks=[29])

    # ------------------------------------------------------------------------------------------------ stages
    def prepare_audio(
        self, audio, audio_sample_rate, start_time, max_duration, num_frames, frame_rate, max_num_frames=None
    ):
        """Decode the audio window and choose `num_frames` if needed (`num_frames=None`: at most `max_num_frames`,
        default `validation.MAX_NUM_FRAMES`; only that many frames' worth of audio is decoded to find out).

        Returns `(encoded_waveform, waveform_over_the_video, sample_rate, num_frames)`: the window read
        (`max_duration`, default the video span) is what the audio VAE encodes, as in the reference; the
        returned audio is exactly the samples covering the video.
        """
        span = None if num_frames is None else num_frames / frame_rate
        duration = max_duration if max_duration is not None else span
        if num_frames is None:  # bounded decode: 8 frames past the bound show that the audio exceeds it
            limit = resolve_limit("max_num_frames", max_num_frames, MAX_NUM_FRAMES)
            duration = min(duration or math.inf, (limit + 8) / frame_rate)
        waveform, sample_rate = load_audio(
            audio, start_time=start_time, max_duration=duration, sample_rate=audio_sample_rate
        )
        available = waveform.shape[-1] / sample_rate
        if num_frames is None:
            num_frames = self.default_num_frames(available, frame_rate)
            if num_frames < 1:
                raise ValueError(f"the audio after audio_start_time is too short ({available:.3f} s) for any video")
            if num_frames > limit:
                raise ValueError(
                    f"num_frames=None: the audio covers more than {limit} frames at {frame_rate} fps (the bound, "
                    "max_num_frames); pass num_frames or audio_max_duration, or a larger max_num_frames"
                )
            span = num_frames / frame_rate
            if max_duration is None:
                waveform = waveform[..., : round(span * sample_rate)]
        needed = round(span * sample_rate)
        if waveform.shape[-1] < needed:
            raise ValueError(
                f"the audio covers {available:.3f} s after audio_start_time={start_time} but the video needs "
                f"{span:.3f} s ({num_frames} frames at {frame_rate} fps)"
            )
        return waveform, waveform[..., :needed], sample_rate, num_frames

    def encode_audio_tokens(self, waveform, sample_rate, num_frames, frame_rate, dtype):
        tokens = self.audio_vae.encode_waveform(waveform.to(self._execution_device), sample_rate)
        frames = stages.audio_latent_frames(num_frames / frame_rate)
        if tokens.shape[1] < frames:
            raise ValueError(f"the audio yields {tokens.shape[1]} latent frames, the video needs {frames}")
        return tokens[:, :frames].to(dtype)

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

    def predict_x0(self, video, audio, sigma, passes, contexts, stg_blocks, batch_size=None):
        """x0 predictions (video) of the guidance passes of one step, `batch_size` passes per forward (None: all
        in ONE batched forward; 1: separate forwards as the reference runs them)."""
        lengths = {(contexts[name][0].shape[1], contexts[name][1].shape[1]) for name in passes}
        if len(lengths) > 1:  # texts of different lengths cannot share a batch
            batch_size = 1
        if batch_size is not None and len(passes) > batch_size:
            chunks = [passes[i : i + batch_size] for i in range(0, len(passes), batch_size)]
            x0 = {}
            for chunk in chunks:
                x0.update(self.predict_x0(video, audio, sigma, chunk, contexts, stg_blocks))
            return x0
        n = len(passes)
        video_t = video.timesteps(sigma)
        audio_t = audio.timesteps(sigma)  # frozen audio: mask 0, so timesteps 0 while its sigma follows the step
        video_ctx = torch.cat([contexts[name][0] for name in passes])
        audio_ctx = torch.cat([contexts[name][1] for name in passes])
        sigmas = sigma.reshape(1).expand(n) * 1000
        velocity, _ = self.transformer(
            hidden_states=video.latent.expand(n, -1, -1),
            audio_hidden_states=audio.latent.expand(n, -1, -1),
            encoder_hidden_states=video_ctx,
            audio_encoder_hidden_states=audio_ctx,
            timestep=(video_t * 1000).expand(n, -1, -1).squeeze(-1),
            audio_timestep=(audio_t * 1000).expand(n, -1, -1).squeeze(-1),
            sigma=sigmas,
            audio_sigma=sigmas,
            video_coords=video.coords.expand(n, -1, -1, -1),
            audio_coords=audio.coords.expand(n, -1, -1, -1),
            use_cross_timestep=True,
            perturbations=stages.pass_perturbations(passes, stg_blocks),
            return_dict=False,
        )
        x0 = stages.x0_from_velocity(video.latent.expand(n, -1, -1), velocity, video_t)
        return dict(zip(passes, x0.split(1)))

    def denoise(
        self, video, audio, sigmas, contexts, guidance, callback_on_step_end, callback_inputs, guidance_batch_size=None,
        *, stage: int = 0, step_offset: int = 0,
    ):  # fmt: skip
        """Euler loop over `sigmas` on the video tokens; the audio stays frozen. The callback gets the step index
        `step_offset + i` and the timestep `sigma * 1000`; `self.stage_index` is `stage` meanwhile."""
        last = None
        self._stage_index = stage
        exact = getattr(self, "_reference_arithmetic", False)
        with (
            self.progress_bar(total=len(sigmas) - 1) as progress_bar,
            reference_lora_arithmetic(self.transformer) if exact else nullcontext(),
        ):
            for i in range(len(sigmas) - 1):
                if self.interrupt:
                    break
                sigma = sigmas[i]
                passes = guidance_passes(guidance, step_index=i) if guidance is not None else ("cond",)
                if guidance is not None and guidance.should_skip_step(i):
                    denoised = last  # the reference reuses the previous guided prediction
                else:
                    stg_blocks = guidance and guidance.stg_blocks
                    x0 = self.predict_x0(video, audio, sigma, passes, contexts, stg_blocks, guidance_batch_size)
                    if guidance is None:
                        denoised = x0["cond"]
                    else:
                        denoised = combine_guidance(
                            x0["cond"], x0.get("uncond"), x0.get("perturbed"), x0.get("isolated"), guidance=guidance
                        )
                last = denoised
                denoised = stages.blend_with_clean(denoised, video)
                video = stages.replace(video, latent=euler_step(video.latent, denoised, sigma, sigmas[i + 1]))
                if callback_on_step_end is not None:
                    values = {"latents": video.latent}
                    kwargs = {k: values[k] for k in callback_inputs}
                    outputs = callback_on_step_end(self, step_offset + i, sigma * 1000, kwargs)
                    if outputs and "latents" in outputs:
                        video = stages.replace(video, latent=outputs["latents"])
                progress_bar.update()
        return video

    def upsample(self, latents: torch.Tensor) -> torch.Tensor:
        """x2 spatial upsampling in the VAE's un-normalised latent space."""
        upsampled = self.latent_upsampler(self.denormalize_latents(latents).to(self.latent_upsampler.dtype))
        return self.normalize_latents(upsampled.to(latents.dtype))

    DECODE_NOISE_SCALE = 0.025  # timestep-conditioned decoders (LTX-2): noise mixed into the normalised latent
    DECODE_TIMESTEP = 0.05

    def decode(self, latents: torch.Tensor, generator, output_type: str):
        """Frames from normalised video latents, as the reference decoder: timestep-conditioned VAEs first mix
        `DECODE_NOISE_SCALE` of noise (drawn from `generator`) into the latent and decode at `DECODE_TIMESTEP`."""
        latents = latents.to(self.vae.dtype)
        temb = None
        if getattr(self.vae.config, "timestep_conditioning", False):
            device = generator.device if generator is not None else latents.device
            noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
            latents = noise.to(latents.device) * self.DECODE_NOISE_SCALE + (1.0 - self.DECODE_NOISE_SCALE) * latents
            temb = torch.full((latents.shape[0],), self.DECODE_TIMESTEP, device=latents.device, dtype=latents.dtype)
        video = self.vae.decode(self.denormalize_latents(latents), temb=temb, return_dict=False)[0]
        frames = ((video.float() + 1) / 2).clamp(0, 1)  # (B, 3, F, H, W)
        if output_type == "pt":
            return frames.permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W), as diffusers' video pipelines
        frames = frames.permute(0, 2, 3, 4, 1).cpu().numpy()  # (B, F, H, W, 3)
        if output_type == "np":
            return frames
        return [[PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in batch] for batch in frames]

    @property
    def interrupt(self):
        return getattr(self, "_interrupt", False)

    @property
    def num_timesteps(self):
        """Steps of the current call, both stages."""
        return self._num_timesteps

    @property
    def stage_index(self):
        """0 during stage 1, 1 during stage 2 (for callbacks)."""
        return getattr(self, "_stage_index", 0)

    # ------------------------------------------------------------------------------------------------ call
    @torch.no_grad()
    @exclusive_call
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | None = None,
        audio=None,
        negative_prompt: str | None = None,
        audio_sample_rate: int | None = None,
        audio_start_time: float = 0.0,
        audio_max_duration: float | None = None,
        conditions: list[LTX2ImageCondition | tuple] | None = None,
        height: int = 1024,
        width: int = 1536,
        num_frames: int | None = None,
        frame_rate: float = 24.0,
        num_inference_steps: int | None = None,
        video_guidance: MultiModalGuidance | None = None,
        guidance_scale: float | None = None,
        stg_scale: float | None = None,
        modality_scale: float | None = None,
        rescale_scale: float | None = None,
        stage_2: bool = True,
        distilled_lora_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        prompt_contexts: tuple[torch.Tensor, torch.Tensor] | None = None,
        negative_prompt_contexts: tuple[torch.Tensor, torch.Tensor] | None = None,
        max_sequence_length: int = 1024,
        guidance_batch_size: int | None = None,
        reference_arithmetic: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_num_frames: int | None = None,
        max_video_tokens: int | None = None,
    ):
        r"""Generate a video whose motion follows `audio`, which it carries.

        Args:
            prompt (`str`): the text; or pass `prompt_embeds` (text-encoder features) or `prompt_contexts`.
            audio: a path, file object, or `[channels, samples]` array (then `audio_sample_rate` is required).
            negative_prompt (`str`, *optional*): defaults to the reference's negative prompt.
            audio_start_time, audio_max_duration (`float`): the audio window in seconds (default: from 0, the video
                span); the window read is what the audio VAE encodes, as in the reference.
            conditions: images pinned to frames: `LTX2ImageCondition` or `(image, frame_index, strength[, crf])`.
            height, width (`int`): output size, multiples of 64 (32 with `stage_2=False`).
            num_frames (`int`, *optional*): `8k + 1`; None takes the largest such count the audio covers.
            frame_rate (`float`): frames per second.
            num_inference_steps (`int`, *optional*): stage-1 steps; default from `version_defaults()`.
            video_guidance (`MultiModalGuidance`, *optional*): stage-1 guidance; default from `version_defaults()`.
            guidance_scale, stg_scale, modality_scale, rescale_scale (`float`, *optional*): flat aliases of
                `video_guidance.cfg_scale` / `.stg_scale` / `.modality_scale` / `.rescale_scale` (diffusers style);
                with `video_guidance` given they must agree with it.
            stage_2 (`bool`): upsample x2 and refine with the distilled LoRA (default); False renders one stage.
            distilled_lora_scale (`float`, *optional*): stage-2 LoRA strength (default `config.distilled_lora_scale`).
            generator (`torch.Generator` or a list of one): the seed; one video per call.
            latents (`torch.Tensor`, *optional*): pre-drawn stage-1 noise `(1, 128, F', H', W')`.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask: text-encoder
                features (`encode_prompt`), used instead of the text.
            prompt_contexts, negative_prompt_contexts: `(video_context, audio_context)` after the connectors.
            max_sequence_length (`int`): text tokens.
            guidance_batch_size (`int`, *optional*): guidance passes per transformer forward (None: all of a step's
                passes in one batched forward, fastest; 1: one pass at a time, least memory).
            reference_arithmetic (`bool`): one pass per forward and user LoRAs as ltx-core fuses them
                (`W + s·B·A` in the weight dtype): bit-identical to ltx-pipelines' A2VidPipelineTwoStage in
                bfloat16 for the same seed on the same device.
            output_type (`str`): `"pil"` (lists of PIL images), `"np"` `(B, F, H, W, 3)`, `"pt"` `(B, F, 3, H, W)`,
                floats in [0, 1], or `"latent"` (normalised video latents `(B, 128, F', H', W')`).
            return_dict (`bool`): an `LTX2AudioToVideoPipelineOutput` (else `(frames, audio, audio_sample_rate)`).
            callback_on_step_end (`Callable`, *optional*): `callback_on_step_end(pipe, i, t, callback_kwargs)` after
                every step of both stages: `i` counts on across the stages (stage 2 starts at stage 1's step count),
                `t` is the timestep (`sigma * 1000`, as diffusers' schedulers), `pipe.stage_index` is 0 (stage 1) or
                1 (stage 2); it may return `{"latents": ...}`. Set `pipe._interrupt = True` to stop.
            callback_on_step_end_tensor_inputs (`list[str]`): tensors given to the callback (`"latents"`).
            max_num_frames, max_video_tokens (`int`, *optional*): raise the size bounds of
                `ltx2_diffusers.validation` (1001 frames, 2**18 video latent tokens), which also bound a
                `num_frames=None` derived from the audio.

        Examples:

        Returns:
            `LTX2AudioToVideoPipelineOutput`: `frames`, and `audio`: the original input samples covering the video
            `[channels, samples]` at `audio_sample_rate`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        default_steps, default_guidance = self.version_defaults()
        num_inference_steps = default_steps if num_inference_steps is None else num_inference_steps
        video_guidance = resolve_guidance(
            video_guidance, default_guidance, guidance_scale=guidance_scale, stg_scale=stg_scale,
            modality_scale=modality_scale, rescale_scale=rescale_scale,
        )  # fmt: skip
        conditions = normalize_conditions(conditions, num_frames)
        self.check_inputs(
            prompt=prompt, height=height, width=width, num_frames=num_frames, frame_rate=frame_rate,
            num_inference_steps=num_inference_steps, stage_2=stage_2, conditions=conditions,
            video_guidance=video_guidance, prompt_embeds=prompt_embeds, prompt_contexts=prompt_contexts,
            output_type=output_type, audio_start_time=audio_start_time, audio_max_duration=audio_max_duration,
            guidance_batch_size=guidance_batch_size, negative_prompt=negative_prompt,
            negative_prompt_embeds=negative_prompt_embeds, negative_prompt_contexts=negative_prompt_contexts,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, audio=audio, generator=generator,
            distilled_lora_scale=distilled_lora_scale, max_num_frames=max_num_frames,
            max_video_tokens=max_video_tokens,
        )  # fmt: skip
        generator = single_generator(generator)
        self._interrupt = False
        self._reference_arithmetic = reference_arithmetic
        if reference_arithmetic:
            guidance_batch_size = 1
        device = self._execution_device
        dtype = self.transformer.dtype

        # 1. Audio: the original samples over the video span, and their frozen latent tokens.
        encoded_waveform, waveform, sample_rate, num_frames = self.prepare_audio(
            audio, audio_sample_rate, audio_start_time, audio_max_duration, num_frames, frame_rate, max_num_frames
        )
        conditions = normalize_conditions(conditions, num_frames, check_images=False)  # frames vs the chosen count
        check_video_size(num_frames, height, width, max_num_frames, max_video_tokens)  # a derived count too

        # 2. Text contexts (positive; negative video context with the POSITIVE audio context, as the reference).
        positive, negative = self.prepare_contexts(
            prompt,
            negative_prompt,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            prompt_contexts,
            negative_prompt_contexts,
            max_sequence_length,
        )
        positive = tuple(c.to(device=device, dtype=dtype) for c in positive)
        contexts = {
            "cond": positive,
            "perturbed": positive,
            "isolated": positive,
            "uncond": (negative[0].to(device=device, dtype=dtype), positive[1]),
        }
        audio_tokens = self.encode_audio_tokens(encoded_waveform, sample_rate, num_frames, frame_rate, dtype)

        # 3. Stage 1: half resolution (or the full size without stage 2), multimodal guidance, frozen audio.
        scale = 2 if stage_2 else 1
        h1, w1 = height // scale, width // scale
        size = stages.video_latent_size(num_frames, h1, w1)
        video = self.conditioned_video_state(conditions, size, h1, w1, frame_rate, dtype)
        video = stages.add_noise(video, generator, 1.0, noise=self.stage_1_noise(latents, video, size, generator))
        frozen = stages.frozen_audio_state(audio_tokens, dtype)
        stages.add_noise(frozen, generator, 0.0)  # drawn and discarded, as in the reference
        sigmas = ltx2_sigmas(num_inference_steps, device=device)
        self._num_timesteps = num_inference_steps + (len(STAGE_2_DISTILLED_SIGMAS) - 1 if stage_2 else 0)
        callback = (callback_on_step_end, callback_on_step_end_tensor_inputs)
        video = self.denoise(video, frozen, sigmas, contexts, video_guidance, *callback, guidance_batch_size, stage=0)
        latent = stages.unpatchify_video(video.latent[:, : video.num_tokens], size)

        # 4. Stage 2: x2 upsampling, re-noising to the distilled table's first sigma, distilled-LoRA refinement.
        if stage_2:
            latent = self.upsample(latent)
            size = stages.video_latent_size(num_frames, height, width)
            video = self.conditioned_video_state(
                conditions, size, height, width, frame_rate, dtype, initial_latent=latent
            )
            sigmas = torch.tensor(STAGE_2_DISTILLED_SIGMAS, dtype=torch.float32, device=device)
            video = stages.add_noise(video, generator, sigmas[0])
            stages.add_noise(frozen, generator, 0.0)
            with self.distilled_lora_applied(distilled_lora_scale):
                video = self.denoise(
                    video, frozen, sigmas, contexts, None, *callback, stage=1, step_offset=num_inference_steps
                )
            latent = stages.unpatchify_video(video.latent[:, : video.num_tokens], size)

        # 5. Decode.
        frames = latent if output_type == "latent" else self.decode(latent, generator, output_type)
        self.maybe_free_model_hooks()
        audio_out = waveform.float().cpu()
        if not return_dict:
            return frames, audio_out, sample_rate
        return LTX2AudioToVideoPipelineOutput(frames=frames, audio=audio_out, audio_sample_rate=sample_rate)
