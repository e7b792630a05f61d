"""`LTX2AudioVideoPipeline` (text, optionally image conditions -> video + audio; ltx-pipelines'
`TI2VidTwoStagesPipeline`, or its `DistilledPipeline` on a distilled checkpoint) and `LTX2ImageToAudioVideoPipeline`
(the same with the image pinned at frame 0)."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, replace_example_docstring

from ..guidance import MultiModalGuidance
from ..schedules import STAGE_2_DISTILLED_SIGMAS
from . import ltx2_stages as stages
from .call_guard import exclusive_call
from .image_conditions import LTX2ImageCondition, check_first_frame_image, condition_list, normalize_conditions
from .ltx2_base import LTX2PipelineBase
from .ltx2_denoise import StepGuidance
from .peer_arguments import check_peer_arguments, refuses_peer_only_arguments
from .pipeline_checks import single_generator


@dataclass
class LTX2AudioVideoPipelineOutput(BaseOutput):
    """The one video of a call and its audio.

    `frames`: batched, one item (`frames[0]` is the video): a list of one list of PIL images (`"pil"`), `(1, F, H,
    W, 3)` numpy floats in [0, 1] (`"np"`), `(1, F, 3, H, W)` tensors (`"pt"`), or the normalised video latents
    `(1, 128, F', H', W')` (`"latent"`, decoded by `pipe.decode(frames, generator, "pil")`).
    `audio`: NOT batched: the generated waveform `[channels, samples]` float32 on the CPU at `audio_sample_rate`
    (the vocoder's rate), to pass as is (diffusers' `LTX2Pipeline` returns `(batch, channels, samples)`); with
    `"latent"`, the normalised audio latent tokens `(1, T, 128)` (decoded by `pipe.decode_audio(audio)`, which returns
    `(waveform, sample_rate)`) and `audio_sample_rate` None."""

    frames: Any
    audio: torch.Tensor
    audio_sample_rate: int | None


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from ltx2_diffusers import LTX2AudioVideoPipeline, export_to_video_with_audio

        >>> pipe = LTX2AudioVideoPipeline.from_pretrained("ltx-2.3-22b-dev-diffusers", dtype=torch.bfloat16)
        >>> pipe.enable_model_cpu_offload()
        >>> out = pipe(
        ...     prompt="A street musician plays a trumpet at dusk, the crowd claps",
        ...     height=512,
        ...     width=768,
        ...     num_frames=121,
        ...     generator=torch.Generator().manual_seed(42),
        ... )
        >>> export_to_video_with_audio(out.frames[0], out.audio, out.audio_sample_rate, "trumpet.mp4", fps=24)
        ```
"""


class LTX2AudioVideoPipeline(LTX2PipelineBase):
    r"""Text (and optional images pinned to frames) to video with its audio, LTX-2 / LTX-2.3.

    Stage 1 denoises video and audio together at half resolution under both modalities' multimodal guidance
    (`video_guidance`, `audio_guidance`). Stage 2 upsamples the video x2, re-noises video and audio to the
    distilled table's first sigma and refines both without guidance, with the pipeline-owned distilled LoRA.
    The audio is decoded by the audio VAE and the vocoder. Numerically ltx-pipelines' `TI2VidTwoStagesPipeline`;
    on a distilled checkpoint (`model_variant="distilled"`) its `DistilledPipeline` (8 distilled sigmas, no
    guidance, no LoRA).
    """

    model_cpu_offload_seq = "text_encoder->connectors->latent_upsampler->transformer->vae->audio_vae->vocoder"
    _callback_tensor_inputs = ["latents", "audio_latents"]

    @torch.no_grad()
    @refuses_peer_only_arguments(generates_audio=True)
    @exclusive_call
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | None = None,
        conditions: list[LTX2ImageCondition | tuple] | None = None,
        height: int = 1024,
        width: int = 1536,
        num_frames: int = 121,
        frame_rate: float = 24.0,
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        video_guidance: MultiModalGuidance | None = None,
        audio_guidance: MultiModalGuidance | None = None,
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
        r"""Generate a video and its audio from `prompt`.

        Args:
            prompt (`str` or a list of one): the text; or pass `prompt_embeds` (text-encoder features) or
                `prompt_contexts`. One video per call: a list of several prompts is refused (call once per prompt).
            negative_prompt (`str`, *optional*): defaults to the reference's negative prompt.
            conditions: images pinned to frames: `LTX2ImageCondition` or `(image, frame_index, strength[, crf])`;
                frame 0 replaces the first latent frame, other frames are keyframes.
            height, width (`int`): output size, multiples of 64 (32 with `stage_2=False`).
            num_frames (`int`): `8k + 1`.
            frame_rate (`float`): frames per second, in [1, 240] (`validation`); the video must span at least one
                audio latent frame (more than 0.02 s).
            num_inference_steps (`int`, *optional*): stage-1 steps, from 2 to
                `validation.MAX_INFERENCE_STEPS` (1000); default from `version_defaults()`.
            sigmas (`list[float]`, *optional*): the stage-1 sigma table, through the registered `scheduler`.
            video_guidance, audio_guidance (`MultiModalGuidance`, *optional*): stage-1 guidance of each modality
                (default from `version_defaults()`: video cfg 3, audio cfg 7, STG, modality 3, rescale 0.7; none on
                a distilled checkpoint). `MultiModalGuidance.disabled()` switches a modality's guidance off.
            guidance_scale, stg_scale, modality_scale, rescale_scale (`float`, *optional*): flat aliases of the
                video guidance's fields. `guidance_scale` 1.0 is no CFG; below 1 is refused unless it
                repeats `video_guidance.cfg_scale` (diffusers' "no CFG";
                the reference's formula below 1 is `video_guidance.cfg_scale`).
            guidance_rescale (`float`, *optional*): diffusers' `LTX2Pipeline` name of `rescale_scale` (the same
                rescale of the guided prediction towards the conditional one's std); pass one of the two.
            stage_2 (`bool`): upsample x2 and refine (default); False renders one stage at the full size.
            distilled_lora_scale (`float`, *optional*): stage-2 LoRA strength (default `config.distilled_lora_scale`).
            enhance_prompt (`bool`): rewrite `prompt` with the text encoder first (the reference's text-to-video
                system prompt; sampling seeded as the reference: `generator`'s initial seed, 42 on a distilled
                checkpoint or without a generator). Not with image `conditions`.
            generator (`torch.Generator` or a list of one): the seed; one video per call.
            latents (`torch.Tensor`, *optional*): pre-drawn stage-1 video noise `(1, 128, F', H', W')`.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask: text-encoder
                features (`encode_prompt`), used instead of the text (one of text, features or contexts per prompt),
                each with its attention mask; finite, within +-1e15 (`validation.MAX_NORMALISED_INPUT_ABS`).
            prompt_contexts, negative_prompt_contexts: `(video_context, audio_context)` after the connectors; finite,
                within +-1e4 (`validation.MAX_CONTEXT_ABS`: the connectors' outputs are RMS-normalised).
            max_sequence_length (`int`): text tokens, a multiple of the connectors' learnable registers (128) up to
                `validation.MAX_SEQUENCE_LENGTH`.
            guidance_batch_size (`int`, *optional*): guidance passes per transformer forward (None: all at once).
            reference_arithmetic (`bool`): one pass per forward and LoRAs fused as ltx-core fuses them
                (bit-identical to the reference for the same seed on the same device).
            output_type (`str`): `"pil"`, `"np"`, `"pt"` or `"latent"` (then the audio is its latent tokens; see
                `LTX2AudioVideoPipelineOutput` for each layout and how to decode latents).
            return_dict (`bool`): an `LTX2AudioVideoPipelineOutput`, else the 3-tuple `(frames, audio,
                audio_sample_rate)` (diffusers' `LTX2Pipeline` returns `(video, audio)`).
            callback_on_step_end (`Callable`, *optional*): `callback_on_step_end(pipe, i, t, callback_kwargs)` after
                every step of both stages (`pipe.stage_index` 0 or 1); it may return `{"latents": ...}` and/or
                `{"audio_latents": ...}`. Set `pipe._interrupt = True` to stop:
                denoising stops before the next step and no further stage starts; the output is decoded from the
                latents as they are (interrupted in stage 1: the stage-1 latents, at the stage-1 resolution), with
                a warning. `pipe.current_timestep`, `pipe.num_timesteps` (both stages), `pipe.attention_kwargs`,
                `pipe.guidance_scale` and `pipe.do_classifier_free_guidance` (of the running stage: 1.0 and False
                in the unguided stage 2) describe the call meanwhile.
            callback_on_step_end_tensor_inputs (`list[str]` or None): `"latents"`, `"audio_latents"`; a returned
                tensor must keep its shape (tokens) and dtype, and be finite.
            max_num_frames, max_video_tokens (`int`, *optional*): raise the size bounds of `validation`.
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
            `LTX2AudioVideoPipelineOutput` (or the tuple): `frames` batched (one item), `audio` NOT batched:
            `[channels, samples]` at `audio_sample_rate` (latents with `output_type="latent"`).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        num_inference_steps, table, video_guidance, audio_guidance, stage_2_lora = self.stage_1_recipe(
            num_inference_steps, sigmas, video_guidance, audio_guidance, guidance_scale=guidance_scale,
            stg_scale=stg_scale, modality_scale=modality_scale, rescale_scale=rescale_scale,
            guidance_rescale=guidance_rescale,
        )  # fmt: skip
        conditions = normalize_conditions(conditions, num_frames)
        self.check_inputs(
            prompt=prompt, height=height, width=width, num_frames=num_frames, frame_rate=frame_rate,
            num_inference_steps=num_inference_steps, stage_2=stage_2, conditions=conditions,
            video_guidance=video_guidance, audio_guidance=audio_guidance, prompt_embeds=prompt_embeds,
            prompt_contexts=prompt_contexts, output_type=output_type, audio_start_time=0.0, audio_max_duration=None,
            guidance_batch_size=guidance_batch_size, negative_prompt=negative_prompt,
            negative_prompt_embeds=negative_prompt_embeds, negative_prompt_contexts=negative_prompt_contexts,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            callback_on_step_end=callback_on_step_end, latents=latents, max_sequence_length=max_sequence_length, generator=generator,
            distilled_lora_scale=distilled_lora_scale, max_num_frames=max_num_frames,
            max_video_tokens=max_video_tokens, stage_2_lora=stage_2_lora, enhance_prompt=enhance_prompt,
            reference_arithmetic=reference_arithmetic, return_dict=return_dict,
        )  # fmt: skip
        if num_frames is None:
            raise ValueError("num_frames must be 8k + 1 (1, 9, 17, ..., 121), got None")
        skips = {g.skip_step if g is not None else 0 for g in (video_guidance, audio_guidance)}
        if (video_guidance is not None or audio_guidance is not None) and len(skips) > 1:
            raise ValueError(
                "video_guidance.skip_step and audio_guidance.skip_step must be equal when both modalities are "
                f"generated, got {sorted(skips)}"
            )
        if output_type != "latent" and self.vocoder is None:
            raise ValueError("this pipeline has no vocoder: it cannot render audio (pass output_type='latent')")
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

        # 1. Text contexts of both modalities (the prompt rewritten first with `enhance_prompt`).
        if enhance_prompt:  # seeded as the reference: its seed (the generator's), 42 in its distilled pipeline
            seed = None if generator is None or self.is_distilled else generator.initial_seed()
            prompt = self.enhanced_prompt(prompt, conditions, *([] if seed is None else [seed]))
        guided = video_guidance is not None or audio_guidance is not None
        needs_negative = any(g is not None and g.needs_negative for g in (video_guidance, audio_guidance))
        contexts = self.prepare_contexts(
            prompt, negative_prompt, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
            negative_prompt_attention_mask, prompt_contexts, negative_prompt_contexts, max_sequence_length,
            dtype=dtype, negative=needs_negative,
        )  # fmt: skip

        # 2. Stage 1: video and audio from noise at half resolution (the full size without stage 2), guided.
        video, size = self.stage_1_video(
            conditions, num_frames, height, width, frame_rate, latents, generator, dtype, stage_2
        )
        audio = self.noised_audio_state(num_frames, frame_rate, generator, 1.0, dtype)
        self._num_timesteps = num_inference_steps + (len(STAGE_2_DISTILLED_SIGMAS) - 1 if stage_2 else 0)
        callback = (callback_on_step_end, callback_on_step_end_tensor_inputs)
        guidance = StepGuidance(video_guidance, audio_guidance) if guided else StepGuidance()
        video, audio = self.denoise(
            video, audio, stage_1_sigmas, contexts, guidance, *callback, guidance_batch_size, stage=0
        )
        latent = stages.unpatchify_video(self.final_tokens(video), size)

        # 3. Stage 2: x2 upsampling; video and audio re-noised to the distilled table's first sigma and refined.
        if self.runs_stage_2(stage_2):
            audio = stages.audio_state(self.final_tokens(audio), frozen=False)
            video, audio = self.stage_2_refine(
                latent, audio, conditions, num_frames, height, width, frame_rate, contexts, generator, callback,
                lora=stage_2_lora, lora_scale=distilled_lora_scale, step_offset=num_inference_steps, dtype=dtype,
            )  # fmt: skip
            latent = stages.unpatchify_video(
                self.final_tokens(video), stages.video_latent_size(num_frames, height, width)
            )

        # 4. Decode: frames, then the waveform at the vocoder's rate.
        if output_type == "latent":
            frames, waveform, sample_rate = latent, self.final_tokens(audio), None
        else:
            frames = self.decode(
                latent, generator, output_type, decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale
            )
            waveform, sample_rate = self.decode_audio(self.final_tokens(audio))
        self.maybe_free_model_hooks()
        if not return_dict:
            return frames, waveform, sample_rate
        return LTX2AudioVideoPipelineOutput(frames=frames, audio=waveform, audio_sample_rate=sample_rate)


IMAGE_EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from ltx2_diffusers import LTX2ImageToAudioVideoPipeline, export_to_video_with_audio

        >>> pipe = LTX2ImageToAudioVideoPipeline.from_pretrained("ltx-2.3-22b-dev-diffusers", dtype=torch.bfloat16)
        >>> pipe.enable_model_cpu_offload()
        >>> out = pipe(
        ...     image="first_frame.png",
        ...     prompt="The woman in the picture turns to the camera and laughs",
        ...     height=512,
        ...     width=768,
        ...     num_frames=121,
        ...     generator=torch.Generator().manual_seed(42),
        ... )
        >>> export_to_video_with_audio(out.frames[0], out.audio, out.audio_sample_rate, "laugh.mp4", fps=24)
        ```
"""


class LTX2ImageToAudioVideoPipeline(LTX2AudioVideoPipeline):
    r"""`LTX2AudioVideoPipeline` with diffusers' `image=` habit: `image` is pinned at frame 0 with
    `image_strength`; further `conditions` may pin other frames."""

    @torch.no_grad()
    @replace_example_docstring(IMAGE_EXAMPLE_DOC_STRING)
    def __call__(self, image=None, prompt: str | None = None, *, image_strength: float = 1.0, **kwargs):
        r"""Generate a video starting at `image`, and its audio.

        Args:
            image: the first frame (required): a path, a PIL image, or an `(H, W)` / `(H, W, 3|4)` numpy array or
                torch tensor, channels last (uint8, uint16, or float in [0, 1]); a channels-first `(3, H, W)`
                tensor is refused (TypeError).
            prompt (`str` or a list of one): the text; or pass `prompt_embeds` (text-encoder features) or
                `prompt_contexts`. One video per call: a list of several prompts is refused (call once per prompt).
            image_strength (`float`): how strongly frame 0 keeps the image (1: exactly).
            conditions: further images pinned to frames after 0: `LTX2ImageCondition` or
                `(image, frame_index, strength[, crf])`.
            {sibling_args}

        Examples:

        Returns:
            `LTX2AudioVideoPipelineOutput` (or the tuple `(frames, audio, audio_sample_rate)`): `frames` batched (one
            item), `audio` NOT batched: `[channels, samples]` at `audio_sample_rate` (latents with
            `output_type="latent"`).
        """
        if image is None:
            raise ValueError("image is required (the first frame); use LTX2AudioVideoPipeline for text only")
        check_first_frame_image(image, image_strength)
        further = condition_list(kwargs.pop("conditions", None))
        conditions = [LTX2ImageCondition(image, 0, image_strength), *further]
        return super().__call__(prompt=prompt, conditions=conditions, **kwargs)


def _with_the_siblings_arguments(call, sibling):
    """`call`'s signature and Args as `sibling`'s (`LTX2AudioVideoPipeline.__call__`) after its own `image`,
    `prompt`, `image_strength` and `conditions`, keyword-only: introspection and help show every argument the
    `**kwargs` pass on."""
    own, theirs = inspect.signature(call).parameters, inspect.signature(sibling).parameters
    taken = ("self", "image", "prompt", "image_strength", "conditions")
    passed_on = ["conditions"] + [name for name in theirs if name not in taken]
    call.__signature__ = inspect.Signature(
        [own["self"], own["image"], own["prompt"], own["image_strength"]]
        + [theirs[name].replace(kind=inspect.Parameter.KEYWORD_ONLY) for name in passed_on]
    )
    args = re.split(r"\n\s*Examples:", sibling.__doc__.split("Args:\n", 1)[1], maxsplit=1)[0]
    entries = re.split(r"\n(?=            \S)", "\n" + args.strip("\n"))
    kept = [e for e in entries if e.strip() and re.match(r"\s*(\w+)", e).group(1) not in taken]
    call.__doc__ = call.__doc__.replace("{sibling_args}", "\n".join(e.strip("\n") for e in kept).lstrip())


_with_the_siblings_arguments(LTX2ImageToAudioVideoPipeline.__call__, LTX2AudioVideoPipeline.__call__)
