"""`LTX2AudioToVideoPipeline`: two-stage LTX-2 / LTX-2.3 audio-to-video generation (ltx-pipelines' A2Vid)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, logging, replace_example_docstring

from ..audio.io import load_audio
from ..guidance import MultiModalGuidance
from ..schedules import STAGE_2_DISTILLED_SIGMAS
from ..validation import MAX_NUM_FRAMES, check_video_size, resolve_limit
from . import ltx2_stages as stages
from .call_guard import exclusive_call
from .image_conditions import LTX2ImageCondition, normalize_conditions
from .ltx2_base import DEFAULT_NEGATIVE_PROMPT, LTX2PipelineBase  # noqa: F401  (DEFAULT_NEGATIVE_PROMPT: public)
from .ltx2_denoise import StepGuidance
from .ltx2_stages import video_latent_size
from .peer_arguments import check_peer_arguments, refuses_peer_only_arguments
from .pipeline_checks import single_generator
from .pipeline_loading import load_gemma  # noqa: F401  (load_gemma: public helper)


logger = logging.get_logger(__name__)


@dataclass
class LTX2AudioToVideoPipelineOutput(BaseOutput):
    """`frames`: batched, one item (`frames[0]` is the video): a list of one list of PIL images (`"pil"`), `(1, F,
    H, W, 3)` numpy floats in [0, 1] (`"np"`), `(1, F, 3, H, W)` tensors (`"pt"`), or the normalised video latents
    `(1, 128, F', H', W')` (`"latent"`, decoded by `pipe.decode(frames, generator, "pil")`); `audio`, NOT batched,
    also with `"latent"`: the ORIGINAL
    input samples covering the video (all of them when the audio ends shortly before the video but its audio latent
    still covers the video's, up to about 1.5 audio latent frames, as the reference takes and returns it),
    `[channels, samples]` float32, at `audio_sample_rate`."""

    frames: Any
    audio: torch.Tensor
    audio_sample_rate: int


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from ltx2_diffusers import LTX2AudioToVideoPipeline, export_to_video_with_audio

        >>> pipe = LTX2AudioToVideoPipeline.from_pretrained("ltx-2.3-22b-dev-diffusers", dtype=torch.bfloat16)
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


class LTX2AudioToVideoPipeline(LTX2PipelineBase):
    r"""Audio-to-video with LTX-2 / LTX-2.3: a video whose motion follows the given audio, which it carries.

    Stage 1 denoises the video at half resolution with the audio latents frozen, under multimodal guidance
    (cfg, stg, modality, rescale). Stage 2 upsamples x2 with `latent_upsampler` and refines on the distilled
    sigma table with the pipeline-owned distilled LoRA (`distilled_lora`, an `LTX2DistilledLoRA`, never a PEFT
    adapter) applied at `distilled_lora_scale`. Numerically the reference `A2VidPipelineTwoStage`. A distilled
    checkpoint (`model_variant="distilled"`) runs stage 1 on the 8 distilled sigmas without guidance and stage 2
    without the LoRA.
    """

    # ------------------------------------------------------------------------------------------------ stages
    def prepare_audio(
        self, audio, audio_sample_rate, start_time, max_duration, num_frames, frame_rate, max_num_frames=None
    ):
        """Decode the audio window and choose `num_frames` if needed (`num_frames=None`: at most `max_num_frames`,
        default `validation.MAX_NUM_FRAMES`; only that many frames' worth of audio is decoded to find out).

        Returns `(encoded_waveform, waveform_over_the_video, sample_rate, num_frames)`: the window read
        (`max_duration`, default the video span) is what the audio VAE encodes, as in the reference; the
        returned audio is exactly the samples covering the video (all of them when the audio ends shortly before the
        video but its audio latent still covers the video's, which the reference takes too).
        """
        span = None if num_frames is None else num_frames / frame_rate
        duration = max_duration if max_duration is not None else span
        if num_frames is None:  # bounded decode: 8 frames past the bound show that the audio exceeds it
            limit = resolve_limit("max_num_frames", max_num_frames, MAX_NUM_FRAMES)
            duration = min(duration or math.inf, (limit + 8) / frame_rate)
        waveform, sample_rate = load_audio(
            audio, start_time=start_time, max_duration=duration, sample_rate=audio_sample_rate,
            names=("audio", "audio_sample_rate", "audio_start_time", "audio_max_duration"),
        )  # fmt: skip
        self.check_audio_encodable(waveform.shape[-1], sample_rate)  # before the text encoder, not in encode_waveform
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
        # The reference takes audio that ends before the video does as long as its latent still covers the video's
        # audio latent frames (a 5.0 s clip under 121 frames at 24 fps, 5.042 s): the latent decides, not samples.
        latent_frames = stages.audio_latent_frames(span)
        yielded = self.encoded_audio_frames(waveform.shape[-1], sample_rate)
        if waveform.shape[-1] < needed and yielded < latent_frames:
            raise ValueError(
                f"the audio covers {available:.4f} s after audio_start_time={start_time} but the video needs "
                f"{span:.4f} s ({num_frames} frames at {frame_rate} fps): {yielded} of its {latent_frames} audio "
                "latent frames"
            )
        return waveform, waveform[..., :needed], sample_rate, num_frames

    def encode_audio_tokens(self, waveform, sample_rate, num_frames, frame_rate, dtype):
        tokens = self.audio_vae.encode_waveform(waveform.to(self._execution_device), sample_rate)
        frames = stages.audio_latent_frames(num_frames / frame_rate)
        if tokens.shape[1] < frames:
            raise ValueError(f"the audio yields {tokens.shape[1]} latent frames, the video needs {frames}")
        return tokens[:, :frames].to(dtype)

    # ------------------------------------------------------------------------------------------------ call
    @torch.no_grad()
    @refuses_peer_only_arguments(generates_audio=False)
    @exclusive_call
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
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
        sigmas: list[float] | None = None,
        video_guidance: MultiModalGuidance | None = None,
        guidance_scale: float | None = None,
        stg_scale: float | None = None,
        modality_scale: float | None = None,
        rescale_scale: float | None = None,
        guidance_rescale: float | None = None,
        stage_2: bool = True,
        distilled_lora_scale: float | None = None,
        enhance_prompt: bool = False,
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
        num_videos_per_prompt: int = 1,
        attention_kwargs: dict[str, Any] | None = None,
        decode_timestep: float | None = None,
        decode_noise_scale: float | None = None,
    ):
        r"""Generate a video whose motion follows `audio`, which it carries.

        Args:
            prompt (`str` or a list of one): the text; or pass `prompt_embeds` (text-encoder features) or
                `prompt_contexts`. One video per call: a list of several prompts is refused (call once per prompt).
            audio: a path, file object, or `[channels, samples]` array (then `audio_sample_rate` is required).
            audio_sample_rate (`int`, *optional*): the rate of an array `audio` (required with one, refused with a
                file, which is read at its own rate).
            negative_prompt (`str`, *optional*): defaults to the reference's negative prompt.
            audio_start_time, audio_max_duration (`float`): the audio window in seconds (default: from 0, the video
                span); the window read is what the audio VAE encodes, as in the reference.
            conditions: images pinned to frames: `LTX2ImageCondition` or `(image, frame_index, strength[, crf])`.
            height, width (`int`): output size, multiples of 64 (32 with `stage_2=False`).
            num_frames (`int`, *optional*): `8k + 1`; None takes the largest such count the audio covers.
            frame_rate (`float`): frames per second, in [1, 240] (`validation`); the video must span at least one
                audio latent frame (more than 0.02 s).
            num_inference_steps (`int`, *optional*): stage-1 steps, from 2 to
                `validation.MAX_INFERENCE_STEPS` (1000); default from `version_defaults()`.
            sigmas (`list[float]`, *optional*): the stage-1 sigma table (e.g. `schedules.DISTILLED_SIGMAS`), run
                through the registered `scheduler` (default: `ltx2_sigmas(num_inference_steps)`, or the distilled
                table on a distilled checkpoint).
            video_guidance (`MultiModalGuidance`, *optional*): stage-1 guidance; default from `version_defaults()`.
            guidance_scale, stg_scale, modality_scale, rescale_scale (`float`, *optional*): flat aliases of
                `video_guidance.cfg_scale` / `.stg_scale` / `.modality_scale` / `.rescale_scale` (diffusers style);
                with `video_guidance` given they must agree with it. `guidance_scale` 1.0 is no CFG; below 1 is
                refused unless it repeats `video_guidance.cfg_scale` (diffusers' "no CFG"; the reference's formula
                below 1 is `video_guidance.cfg_scale`).
            guidance_rescale (`float`, *optional*): diffusers' `LTX2Pipeline` name of `rescale_scale` (the same
                rescale of the guided prediction towards the conditional one's std); pass one of the two.
            stage_2 (`bool`): upsample x2 and refine with the distilled LoRA (default); False renders one stage.
            distilled_lora_scale (`float`, *optional*): stage-2 LoRA strength (default `config.distilled_lora_scale`).
            enhance_prompt (`bool`): rewrite `prompt` with the text encoder first (the reference's text-to-video
                system prompt, seed 42 as the reference's A2Vid). Not with image `conditions`.
            generator (`torch.Generator` or a list of one): the seed; one video per call.
            latents (`torch.Tensor`, *optional*): pre-drawn stage-1 noise `(1, 128, F', H', W')`.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask: text-encoder
                features (`encode_prompt`), used instead of the text (one of text, features or contexts per prompt),
                each with its attention mask; finite, within +-1e15 (`validation.MAX_NORMALISED_INPUT_ABS`).
            prompt_contexts, negative_prompt_contexts: `(video_context, audio_context)` after the connectors; finite,
                within +-1e4 (`validation.MAX_CONTEXT_ABS`: the connectors' outputs are RMS-normalised).
            max_sequence_length (`int`): text tokens, a multiple of the connectors' learnable registers (128) up to
                `validation.MAX_SEQUENCE_LENGTH`.
            guidance_batch_size (`int`, *optional*): guidance passes per transformer forward (None: all of a step's
                passes in one batched forward, fastest; 1: one pass at a time, least memory).
            reference_arithmetic (`bool`): one pass per forward and user LoRAs as ltx-core fuses them
                (`W + s·B·A` in the weight dtype): bit-identical to ltx-pipelines' A2VidPipelineTwoStage in
                bfloat16 for the same seed on the same device.
            output_type (`str`): `"pil"` (a list of one list of PIL images), `"np"` `(1, F, H, W, 3)`, `"pt"`
                `(1, F, 3, H, W)`, floats in [0, 1], or `"latent"` (normalised video latents `(1, 128, F', H', W')`,
                which `pipe.decode(frames, generator, "pil")` decodes; the audio is the input waveform still).
            return_dict (`bool`): an `LTX2AudioToVideoPipelineOutput`, else the 3-tuple `(frames, audio,
                audio_sample_rate)` (diffusers' `LTX2Pipeline` returns `(video, audio)`).
            callback_on_step_end (`Callable`, *optional*): `callback_on_step_end(pipe, i, t, callback_kwargs)` after
                every step of both stages: `i` counts on across the stages (stage 2 starts at stage 1's step count),
                `t` is the timestep (`sigma * 1000`, as diffusers' schedulers), `pipe.stage_index` is 0 (stage 1) or
                1 (stage 2); it may return `{"latents": ...}`. Set `pipe._interrupt = True` to stop:
                denoising stops before the next step and no further stage starts; the output is decoded from the
                latents as they are (interrupted in stage 1: the stage-1 latents, at the stage-1 resolution), with
                a warning. `pipe.current_timestep`, `pipe.num_timesteps` (both stages), `pipe.attention_kwargs`,
                `pipe.guidance_scale` and `pipe.do_classifier_free_guidance` (of the running stage: 1.0 and False
                in the unguided stage 2) describe the call meanwhile.
            callback_on_step_end_tensor_inputs (`list[str]` or None): tensors given to the callback (`"latents"`);
                a returned tensor must keep its shape (tokens) and dtype, and be finite.
            max_num_frames, max_video_tokens (`int`, *optional*): raise the size bounds of
                `ltx2_diffusers.validation` (1001 frames, 2**18 video latent tokens), which also bound a
                `num_frames=None` derived from the audio.
            num_videos_per_prompt (`int`): 1 (diffusers' name; one video per call). diffusers' `LTX2Pipeline`
                arguments not listed here (`timesteps`, `audio_guidance_scale`, `audio_latents`, ...) are refused
                with a ValueError naming what to pass instead.
            attention_kwargs (`dict`, *optional*): given to every transformer forward (`pipe.attention_kwargs`
                meanwhile); `{"scale": s}` scales the user's LoRA adapters (not the pipeline's distilled LoRA:
                `distilled_lora_scale`); no other key is read, so none other is taken.
            decode_timestep, decode_noise_scale (`float`, *optional*): in [0, 1], the decoder timestep and the noise
                mixed into the latent before the decode, for a timestep-conditioned video VAE (LTX-2; refused with
                LTX-2.3's, which takes none). Default the reference's 0.05 and 0.025; `decode_timestep` alone sets
                both, as in diffusers' `LTX2Pipeline`.

        Examples:

        Returns:
            `LTX2AudioToVideoPipelineOutput` (or the tuple): `frames` batched (one item), and `audio`, NOT batched:
            the original input samples covering the video `[channels, samples]` at `audio_sample_rate`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        num_inference_steps, table, video_guidance, _, stage_2_lora = self.stage_1_recipe(
            num_inference_steps, sigmas, video_guidance, guidance_scale=guidance_scale, stg_scale=stg_scale,
            modality_scale=modality_scale, rescale_scale=rescale_scale, guidance_rescale=guidance_rescale,
        )  # fmt: skip
        conditions = normalize_conditions(conditions, num_frames)
        self.check_inputs(
            prompt=prompt, height=height, width=width, num_frames=num_frames, frame_rate=frame_rate,
            num_inference_steps=num_inference_steps, stage_2=stage_2, conditions=conditions,
            video_guidance=video_guidance, prompt_embeds=prompt_embeds, prompt_contexts=prompt_contexts,
            output_type=output_type, audio_start_time=audio_start_time, audio_max_duration=audio_max_duration,
            guidance_batch_size=guidance_batch_size, negative_prompt=negative_prompt,
            negative_prompt_embeds=negative_prompt_embeds, negative_prompt_contexts=negative_prompt_contexts,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            callback_on_step_end=callback_on_step_end, latents=latents, max_sequence_length=max_sequence_length, audio=audio, generator=generator,
            distilled_lora_scale=distilled_lora_scale, max_num_frames=max_num_frames,
            max_video_tokens=max_video_tokens, stage_2_lora=stage_2_lora, enhance_prompt=enhance_prompt,
            reference_arithmetic=reference_arithmetic, return_dict=return_dict,
        )  # fmt: skip
        check_peer_arguments(
            num_videos_per_prompt, attention_kwargs, decode_timestep, decode_noise_scale, vae=self.vae,
            output_type=output_type,
        )  # fmt: skip
        stage_1_sigmas = self.stage_sigmas(num_inference_steps, table)
        generator = single_generator(generator)
        self._interrupt, self._attention_kwargs = False, attention_kwargs
        self._reference_arithmetic = reference_arithmetic
        if reference_arithmetic:
            guidance_batch_size = 1
        dtype = self.transformer.dtype

        # 1. Audio: the original samples over the video span, and their frozen latent tokens.
        encoded_waveform, waveform, sample_rate, num_frames = self.prepare_audio(
            audio, audio_sample_rate, audio_start_time, audio_max_duration, num_frames, frame_rate, max_num_frames
        )
        conditions = normalize_conditions(conditions, num_frames, check_images=False)  # frames vs the chosen count
        check_video_size(num_frames, height, width, max_num_frames, max_video_tokens, frame_rate)  # derived too

        # 2. Text contexts (the audio has no negative context, as the reference's audio guider).
        if enhance_prompt:
            prompt = self.enhanced_prompt(prompt, conditions)
        contexts = self.prepare_contexts(
            prompt, negative_prompt, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
            negative_prompt_attention_mask, prompt_contexts, negative_prompt_contexts, max_sequence_length,
            dtype=dtype, negative=video_guidance is not None and video_guidance.needs_negative,
        )  # fmt: skip
        contexts = replace(contexts, negative_audio=None)
        audio_tokens = self.encode_audio_tokens(encoded_waveform, sample_rate, num_frames, frame_rate, dtype)

        # 3. Stage 1: half resolution (or the full size without stage 2), video guidance, frozen audio.
        video, size = self.stage_1_video(
            conditions, num_frames, height, width, frame_rate, latents, generator, dtype, stage_2
        )
        frozen = stages.frozen_audio_state(audio_tokens, dtype)
        stages.add_noise(frozen, generator, 0.0)  # drawn and discarded, as in the reference
        self._num_timesteps = num_inference_steps + (len(STAGE_2_DISTILLED_SIGMAS) - 1 if stage_2 else 0)
        callback = (callback_on_step_end, callback_on_step_end_tensor_inputs)
        guidance = StepGuidance(video_guidance)
        video, _ = self.denoise(
            video, frozen, stage_1_sigmas, contexts, guidance, *callback, guidance_batch_size, stage=0
        )
        latent = stages.unpatchify_video(self.final_tokens(video), size)

        # 4. Stage 2: x2 upsampling, re-noising to the distilled table's first sigma, unguided refinement.
        if self.runs_stage_2(stage_2):
            video, _ = self.stage_2_refine(
                latent, frozen, conditions, num_frames, height, width, frame_rate, contexts, generator, callback,
                lora=stage_2_lora, lora_scale=distilled_lora_scale, step_offset=num_inference_steps, dtype=dtype,
            )  # fmt: skip
            latent = stages.unpatchify_video(self.final_tokens(video), video_latent_size(num_frames, height, width))

        # 5. Decode.
        decode = dict(decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale)
        frames = latent if output_type == "latent" else self.decode(latent, generator, output_type, **decode)
        self.maybe_free_model_hooks()
        audio_out = waveform.float().cpu()
        if not return_dict:
            return frames, audio_out, sample_rate
        return LTX2AudioToVideoPipelineOutput(frames=frames, audio=audio_out, audio_sample_rate=sample_rate)
