"""Input checks of the LTX-2 pipelines (one `check_inputs`, run before any model) and the resolution of
diffusers' conventional arguments: flat guidance aliases and generator lists."""

from __future__ import annotations

import math
import numbers
import os

import torch

from ..audio.mel import resampled_length
from ..guidance import MultiModalGuidance
from ..schedules import check_scheduler
from ..validation import (
    MAX_CONTEXT_ABS,
    MAX_INFERENCE_STEPS,
    MAX_NORMALISED_INPUT_ABS,
    MAX_SEQUENCE_LENGTH,
    audio_latent_frames,
    check_bounded,
    check_frame_rate,
    check_guidance_scale,
    check_holds_values,
    check_latents,
    check_lora_strength,
    check_video_size,
    finite_float,
    is_compute_float,
    shown,
)
from .ltx2_stages import video_latent_size


GUIDANCE_ALIASES = {
    "guidance_scale": "cfg_scale",
    "stg_scale": "stg_scale",
    "modality_scale": "modality_scale",
    "rescale_scale": "rescale_scale",
    "guidance_rescale": "rescale_scale",  # diffusers' LTX2Pipeline name: the same rescale of the guided x0
}


def resolve_guidance(video_guidance, default: MultiModalGuidance, **aliases) -> MultiModalGuidance:
    """`video_guidance` (default: `default`) with the flat diffusers-style aliases applied: `guidance_scale` ->
    `cfg_scale`, `stg_scale`, `modality_scale`, `rescale_scale` (or `guidance_rescale`, diffusers' name). An alias that contradicts an explicitly given
    `video_guidance` is refused (`ValueError`); one that repeats it is accepted. `guidance_scale` below 1 is
    refused unless it repeats `video_guidance.cfg_scale`: in diffusers it means "no CFG" there, while `cfg_scale` is
    the reference's formula (`cond + (cfg_scale - 1) * (cond - uncond)`), for which 1.0 is no CFG and 0 the negative
    prompt's prediction."""
    from dataclasses import replace

    for name, value in aliases.items():  # each a finite number first (a list or array named, not compared)
        if value is not None:
            check_guidance_scale(name, value, rescale=GUIDANCE_ALIASES[name] == "rescale_scale")
    scale = aliases.get("guidance_scale")
    repeated = isinstance(video_guidance, MultiModalGuidance) and scale == video_guidance.cfg_scale
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool) and scale < 1 and not repeated:
        raise ValueError(
            f"guidance_scale={scale!r} is below 1: diffusers reads guidance_scale <= 1 as no classifier-free "
            "guidance, but here it is the reference's cfg_scale (cond + (cfg_scale - 1) * (cond - uncond)), where "
            "0 would return the negative prompt's prediction. Pass guidance_scale=1.0 for no CFG, or "
            "video_guidance=MultiModalGuidance(cfg_scale=...) for the reference's formula below 1"
        )

    rescales = [float(aliases[n]) for n in ("rescale_scale", "guidance_rescale") if aliases.get(n) is not None]
    if len(rescales) == 2 and rescales[0] != rescales[1]:
        raise ValueError(
            f"rescale_scale={aliases['rescale_scale']!r} and guidance_rescale={aliases['guidance_rescale']!r} name "
            "the same scale (diffusers' LTX2Pipeline calls it guidance_rescale): pass one of them"
        )
    given = {GUIDANCE_ALIASES[k]: v for k, v in aliases.items() if v is not None}
    if video_guidance is None:
        return replace(default, **given)
    if not isinstance(video_guidance, MultiModalGuidance):
        raise TypeError(f"video_guidance must be a MultiModalGuidance, got {type(video_guidance).__name__}")
    for alias, value in aliases.items():
        field = GUIDANCE_ALIASES[alias]
        if value is not None and value != getattr(video_guidance, field):
            raise ValueError(
                f"{alias}={value!r} contradicts video_guidance.{field}={getattr(video_guidance, field)!r}: "
                "pass one of them"
            )
    return video_guidance


def check_text_sources(
    prompt=None,
    prompt_embeds=None,
    prompt_attention_mask=None,
    prompt_contexts=None,
    negative_prompt=None,
    negative_prompt_embeds=None,
    negative_prompt_attention_mask=None,
    negative_prompt_contexts=None,
) -> None:
    """One source per text: the text, its text-encoder features or its contexts, not two of them (the pipeline would
    silently use one); features with their attention mask (a missing mask would attend to the padding tokens), a
    mask only with its features. diffusers' `LTX2Pipeline.check_inputs` refuses the positive prompt's pairs and
    features without a mask; here the negative prompt follows the same rules (stricter than diffusers)."""
    if prompt is None and prompt_embeds is None and prompt_contexts is None:
        raise ValueError("pass prompt, prompt_embeds or prompt_contexts")
    for prefix, sources in (
        ("", (prompt, prompt_embeds, prompt_contexts)),
        ("negative_", (negative_prompt, negative_prompt_embeds, negative_prompt_contexts)),
    ):
        names = [
            f"{prefix}{n}" for n, v in zip(("prompt", "prompt_embeds", "prompt_contexts"), sources) if v is not None
        ]
        if len(names) > 1:
            which = f"{names[0]} or {names[1]}, not both" if len(names) == 2 else f"one of {', '.join(names)}"
            raise ValueError(f"pass {which}: the {prefix}prompt's text comes from one source")
    for embeds, mask, name in (
        (prompt_embeds, prompt_attention_mask, "prompt"),
        (negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt"),
    ):
        if embeds is not None and mask is None:
            raise ValueError(
                f"{name}_embeds needs its {name}_attention_mask (encode_prompt returns both): without it every "
                "token, padding included, would be attended to"
            )
        if mask is not None and embeds is None:
            raise ValueError(f"{name}_attention_mask is the mask of {name}_embeds: pass it only with them")


def single_generator(generator):
    """One `torch.Generator` (or None) for the one video a call makes; a list must hold exactly one (diffusers
    passes one generator per batch item)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError(
                f"generator: this pipeline makes one video per call, so a list must hold 1 generator, got "
                f"{len(generator)}"
            )
        generator = generator[0]
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, a list of one, or None, got {type(generator).__name__}")
    return generator


def generator_device(generator):
    generator = single_generator(generator)
    return None if generator is None else generator.device


def checked_callback_outputs(outputs, current: dict[str, torch.Tensor], offered) -> dict[str, torch.Tensor]:
    """The tensors a step callback returned (`None`: none), each checked against the one it replaces in `current`
    right when returned: a name the pipeline offers (`offered`), a tensor of the same shape and dtype, finite
    (`validation.check_latents`). ValueError/TypeError naming callback_on_step_end and the tensor otherwise."""
    if outputs is None:
        return {}
    if not isinstance(outputs, dict):
        raise TypeError(f"callback_on_step_end must return a dict of tensors or None, got {type(outputs).__name__}")
    for name, value in outputs.items():
        if name not in offered:
            raise ValueError(
                f"callback_on_step_end returned {shown(name)}, which this pipeline does not take back (it takes "
                f"{list(offered)})"
            )
        what = f"callback_on_step_end's {name}"
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(value).__name__}")
        expected = current[name]
        if value.shape != expected.shape:
            raise ValueError(
                f"{what} has shape {tuple(value.shape)}; it must keep the shape it was given, {tuple(expected.shape)} "
                "(batch, tokens, channels)"
            )
        if value.dtype != expected.dtype:
            raise ValueError(f"{what} has dtype {value.dtype}; it must keep the dtype it was given, {expected.dtype}")
        check_latents(what, value)
    return outputs


def check_vae_scaling_factor(vae) -> None:
    """The video latents are (un)normalised with `vae.config.scaling_factor` (`ltx2_base`): NaN, 0 or a negative value
    from a corrupt `vae/config.json` gives NaN / inf / inverted frames, so it must be a finite number > 0."""
    scale = getattr(getattr(vae, "config", None), "scaling_factor", 1.0)
    value = finite_float(scale)
    if value is None or value <= 0:
        raise ValueError(
            "vae.config.scaling_factor must be a finite number > 0 (1.0 for LTX-2: ltx-core never reads it), "
            f"got {shown(scale)}"
        )


def connector_registers(connectors) -> int:
    """The multiple a text's token count must be: the connectors' learnable registers (both modalities'); 1
    without connectors (a pipeline given post-connector contexts only)."""
    if connectors is None:
        return 1
    counts = [
        connectors.config.get(f"{modality}_connector_num_learnable_registers") for modality in ("video", "audio")
    ]
    return math.lcm(*[c for c in counts if c], 1)


class LTX2A2VChecksMixin:
    """Mixed into `LTX2AudioToVideoPipeline`."""

    def default_num_frames(self, audio_seconds: float, frame_rate: float) -> int:
        """Largest `8k + 1` frame count whose duration the audio covers."""
        frames = int(math.floor(audio_seconds * frame_rate + 1e-9))
        return ((frames - 1) // 8) * 8 + 1

    def encoded_audio_frames(self, samples: int, sample_rate: int) -> int:
        """Latent frames the audio VAE yields for `samples` samples at `sample_rate`, without running it: resampled to
        its `config.sample_rate` (torchaudio's length, `mel.resampled_length`), `samples // hop + 1` mel
        frames (centred STFT), then the encoder's causal stride-2 steps (`ceil(frames / temporal_compression_ratio)`;
        LTX-2's 16 kHz / 160 / 4 when there is no audio VAE)."""
        vae = getattr(self, "audio_vae", None)
        hop, ratio = (160, 4) if vae is None else (vae.config.mel_hop_length, vae.temporal_compression_ratio)
        mel_frames = self.vae_rate_samples(samples, sample_rate) // hop + 1
        return -(-mel_frames // ratio)

    def vae_rate_samples(self, samples: int, sample_rate: int) -> int:
        """`samples` at `sample_rate` resampled to the audio VAE's `config.sample_rate` (16 kHz without one)."""
        vae = getattr(self, "audio_vae", None)
        rate = 16000 if vae is None else vae.config.sample_rate
        gcd = math.gcd(int(sample_rate), int(rate))
        return resampled_length(samples, int(sample_rate) // gcd, int(rate) // gcd)

    def check_audio_encodable(self, samples: int, sample_rate: int) -> None:
        """The audio VAE's reflect-padded STFT needs more than `n_fft // 2` samples at its rate: a shorter audio
        window is refused (`ValueError` naming `audio`) before the text is encoded, not inside `encode_waveform`."""
        vae = getattr(self, "audio_vae", None)
        rate, n_fft = (16000, 1024) if vae is None else (vae.config.sample_rate, vae.config.n_fft)
        resampled = self.vae_rate_samples(samples, sample_rate)
        if resampled <= n_fft // 2:
            raise ValueError(
                f"audio is too short to encode: its window holds {samples} samples at {sample_rate} Hz ({resampled} "
                f"at the audio VAE's {rate} Hz); its STFT needs more than n_fft // 2 = {n_fft // 2}: pass a longer "
                "audio, an earlier audio_start_time or a longer audio_max_duration"
            )

    def check_inputs(
        self,
        prompt,
        height,
        width,
        num_frames,
        frame_rate,
        num_inference_steps,
        stage_2,
        conditions,
        video_guidance,
        prompt_embeds,
        prompt_contexts,
        output_type,
        audio_start_time,
        audio_max_duration,
        guidance_batch_size=None,
        negative_prompt=None,
        negative_prompt_embeds=None,
        negative_prompt_contexts=None,
        prompt_attention_mask=None,
        negative_prompt_attention_mask=None,
        callback_on_step_end_tensor_inputs=("latents",),
        callback_on_step_end=None,
        latents=None,
        max_sequence_length=1024,
        audio=None,
        generator=None,
        distilled_lora_scale=None,
        max_num_frames=None,
        max_video_tokens=None,
        stage_2_lora=True,
        audio_guidance=None,
        enhance_prompt=False,
        reference_arithmetic=False,
        return_dict=True,
    ):
        """Every check that needs no model, before any model runs: sizes, counts, texts and embeddings, guidance,
        the audio file's presence, the condition images (read here), generators, output type."""
        for name, flag in (("stage_2", stage_2), ("return_dict", return_dict)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {shown(flag)}")
        multiple = 64 if stage_2 else 32
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(
                    f"{name} must be a positive multiple of {multiple} "
                    f"({'two stages' if stage_2 else 'one stage'}), got {value!r}"
                )
        if num_frames is not None and (
            isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % 8
        ):
            raise ValueError(f"num_frames must be 8k + 1 (1, 9, 17, ..., 121), got {num_frames!r}")
        if not (isinstance(frame_rate, (int, float)) and frame_rate > 0):
            raise ValueError(f"frame_rate must be a positive number, got {shown(frame_rate)}")
        check_frame_rate(frame_rate)  # bounds: ltx2_diffusers.validation
        check_video_size(num_frames, height, width, max_num_frames, max_video_tokens, frame_rate)
        check_lora_strength(
            "distilled_lora_scale",
            self.config.distilled_lora_scale if distilled_lora_scale is None else distilled_lora_scale,
        )
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or not 2 <= num_inference_steps <= MAX_INFERENCE_STEPS
        ):
            raise ValueError(
                f"num_inference_steps must be an integer in [2, {MAX_INFERENCE_STEPS}] (validation."
                f"MAX_INFERENCE_STEPS), got {shown(num_inference_steps)}"
            )
        if latents is not None:
            check_latents("latents", latents)
        if latents is not None and num_frames is not None:  # a count derived from the audio: at `stage_1_noise`
            scale = 2 if stage_2 else 1
            size = video_latent_size(num_frames, height // scale, width // scale)
            expected = (1, self.transformer.config.in_channels, *size)
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"latents must have shape {expected} for this size and frame count, got {tuple(latents.shape)}"
                )
        check_text_sources(
            prompt, prompt_embeds, prompt_attention_mask, prompt_contexts,
            negative_prompt, negative_prompt_embeds, negative_prompt_attention_mask, negative_prompt_contexts,
        )  # fmt: skip
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, str) and not (isinstance(value, list) and len(value) == 1):
                raise ValueError(
                    f"{name} must be one string (this pipeline generates one video per call), got {shown(value)}"
                )
        for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 3 or value.shape[0] != 1):
                raise ValueError(f"{name} must be a (1, tokens, features) tensor (batch size 1)")
        for name, value in (
            ("prompt_contexts", prompt_contexts),
            ("negative_prompt_contexts", negative_prompt_contexts),
        ):
            if value is not None and (
                not isinstance(value, (list, tuple))
                or len(value) != 2
                or any(not isinstance(c, torch.Tensor) or c.ndim != 3 or c.shape[0] != 1 for c in value)
            ):
                raise ValueError(f"{name} must be (video_context, audio_context), each a (1, tokens, dim) tensor")
        embeds = [("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)]
        contexts = [("prompt_contexts", c) for c in prompt_contexts or ()]
        contexts += [("negative_prompt_contexts", c) for c in negative_prompt_contexts or ()]
        masks = [("prompt_attention_mask", prompt_attention_mask)]
        masks += [("negative_prompt_attention_mask", negative_prompt_attention_mask)]
        for name, tensor in embeds + contexts + masks:
            check_holds_values(name, tensor)
        for name, tensor in embeds + contexts:
            if tensor is not None and not is_compute_float(tensor):
                raise TypeError(f"{name} must be floating point of 16 bits or more, got dtype {tensor.dtype}")
        check_bounded(
            embeds, MAX_NORMALISED_INPUT_ABS, "raw text-encoder features, normalised per token by the connectors"
        )
        check_bounded(contexts, MAX_CONTEXT_ABS, "post-connector contexts are RMS-normalised per token")
        self.check_text_lengths(max_sequence_length, prompt_embeds, negative_prompt_embeds)
        self.check_context_widths(prompt_contexts, negative_prompt_contexts)
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        for name, guidance in (("video_guidance", video_guidance), ("audio_guidance", audio_guidance)):
            if guidance is None:
                continue
            if not isinstance(guidance, MultiModalGuidance):
                raise TypeError(f"{name} must be a MultiModalGuidance or None, got {type(guidance).__name__}")
            bad = [b for b in guidance.stg_blocks or () if b >= self.transformer.config.num_layers]
            if bad:
                raise ValueError(
                    f"{name}.stg_blocks: block {bad[0]} out of range for {self.transformer.config.num_layers} blocks"
                )
        check_scheduler(self.scheduler)
        check_vae_scaling_factor(self.vae)
        if not isinstance(enhance_prompt, bool):
            raise TypeError(f"enhance_prompt must be a bool, got {enhance_prompt!r}")
        if enhance_prompt and (prompt is None or self.text_encoder is None or self.tokenizer is None):
            raise ValueError("enhance_prompt=True needs a text prompt and the pipeline's text_encoder and tokenizer")
        if stage_2 and self.latent_upsampler is None:
            raise ValueError("stage_2=True needs a latent_upsampler (or pass stage_2=False)")
        if stage_2 and stage_2_lora and self.distilled_lora is None:
            raise ValueError(
                "stage_2=True needs the distilled LoRA: load it with load_lora_weights(path, adapter_name='distilled')"
            )
        if stage_2 and stage_2_lora:
            self.distilled_lora.check_fits(self.transformer)
        if guidance_batch_size is not None and (
            isinstance(guidance_batch_size, bool)
            or not isinstance(guidance_batch_size, int)
            or guidance_batch_size < 1
        ):
            raise ValueError(f"guidance_batch_size must be None or a positive integer, got {guidance_batch_size!r}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        start = finite_float(audio_start_time)
        if start is None or start < 0:
            raise ValueError(f"audio_start_time must be a finite number >= 0 (seconds), got {shown(audio_start_time)}")
        if audio_max_duration is not None and (
            isinstance(audio_max_duration, bool)
            or not isinstance(audio_max_duration, numbers.Real)
            or not audio_max_duration > 0  # inf and ints beyond float's range: the whole audio after the start
        ):
            raise ValueError(
                f"audio_max_duration must be None or a number > 0 (seconds), got {shown(audio_max_duration)}"
            )
        if (
            audio_max_duration is not None
            and num_frames is not None
            and audio_max_duration < num_frames / frame_rate
            # the most a window this long can yield (one 100 Hz sample more than its span): prepare_audio checks the
            # decoded window exactly, as the reference does, by the latent frames it yields
            and self.encoded_audio_frames(math.ceil(float(audio_max_duration) * 16000) + 161, 16000)
            < audio_latent_frames(num_frames / frame_rate)
        ):
            raise ValueError(
                f"audio_max_duration={audio_max_duration} s is shorter than the video ({num_frames} frames at "
                f"{frame_rate} fps = {num_frames / frame_rate:.3f} s)"
            )
        if isinstance(audio, (list, tuple)):
            raise TypeError(
                f"audio must be one path, file object or numpy/torch array of samples, not a {type(audio).__name__} "
                "(one audio per call: call the pipeline once per file)"
            )
        if isinstance(audio, (str, os.PathLike)) and not os.path.isfile(audio):
            raise ValueError(f"audio {os.fspath(audio)!r} is not a readable file")
        generator_device(generator)
        if not isinstance(reference_arithmetic, bool):
            raise TypeError(f"reference_arithmetic must be a bool, got {reference_arithmetic!r}")
        self.check_decode_budget(reference_arithmetic, output_type)
        self.check_transformer_state(reference_arithmetic)

    def check_transformer_state(self, reference_arithmetic: bool) -> None:
        """What the call cannot honour of the user's transformer state, refused (ValueError) before any model runs,
        as the stages would refuse it: the speed settings against the user's offload hooks or attention backend
        (`acceleration.resolved_acceleration`) and, with `reference_arithmetic`, user LoRA layers that ltx-core's
        fused weight cannot express (`lora_fusion.check_fusable`)."""
        from ..loaders.lora_fusion import check_fusable
        from .acceleration import resolved_acceleration

        resolved_acceleration(
            self.transformer, self.transformer_acceleration, self._execution_device, reference_arithmetic
        )
        if reference_arithmetic:
            check_fusable(self.transformer)

    def check_text_lengths(self, max_sequence_length, prompt_embeds=None, negative_prompt_embeds=None):
        """Text token counts the connectors can take: `max_sequence_length` a positive multiple of the connectors'
        learnable registers, at most `validation.MAX_SEQUENCE_LENGTH` (or the text encoder's positions); text
        embeddings of at least one such multiple of tokens."""
        registers = connector_registers(self.connectors)
        encoder_config = getattr(self.text_encoder, "config", None)
        positions = getattr(getattr(encoder_config, "text_config", encoder_config), "max_position_embeddings", None)
        bound = min(MAX_SEQUENCE_LENGTH, positions) if isinstance(positions, int) else MAX_SEQUENCE_LENGTH
        if (
            isinstance(max_sequence_length, bool)
            or not isinstance(max_sequence_length, int)
            or not 1 <= max_sequence_length <= bound
            or max_sequence_length % registers
        ):
            raise ValueError(
                f"max_sequence_length must be a positive multiple of {registers} (the connectors' learnable "
                f"registers) up to {bound}, got {shown(max_sequence_length)}"
            )
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and (embeds.shape[1] < 1 or embeds.shape[1] % registers):
                raise ValueError(
                    f"{name} has {embeds.shape[1]} tokens; the connectors need a positive multiple of {registers} "
                    "(their learnable registers; encode_prompt pads to max_sequence_length)"
                )

    def check_context_widths(self, prompt_contexts, negative_prompt_contexts):
        """`(video, audio)` contexts of at least one token and the widths the transformer's cross-attention takes
        (`cross_attention_dim` / `audio_cross_attention_dim`; `caption_channels` with its own projections)."""
        config = self.transformer.config
        text_dim = config.get("caption_channels") if config.get("use_prompt_embeddings", False) else None
        widths = (text_dim or config.cross_attention_dim, text_dim or config.audio_cross_attention_dim)
        for name, value in (
            ("prompt_contexts", prompt_contexts),
            ("negative_prompt_contexts", negative_prompt_contexts),
        ):
            for index, (modality, tensor, width) in enumerate(zip(("video", "audio"), value or (), widths)):
                if tensor.shape[1] < 1:
                    raise ValueError(f"{name}[{index}] (the {modality} context) has 0 tokens")
                if tensor.shape[2] != width:
                    raise ValueError(
                        f"{name}[{index}] (the {modality} context) has width {tensor.shape[2]}, the transformer takes "
                        f"{width}; pass (video_context, audio_context) in that order"
                    )

    def check_callback(self, callback_on_step_end, callback_on_step_end_tensor_inputs):
        """A callable (or None) and a list of the names in `_callback_tensor_inputs` (None: no tensors)."""
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(
                f"callback_on_step_end must be callable (pipe, step, timestep, callback_kwargs) or None, got "
                f"{shown(callback_on_step_end)}"
            )
        names = callback_on_step_end_tensor_inputs
        if names is None:
            return
        if not isinstance(names, (list, tuple)):
            raise TypeError(
                f"callback_on_step_end_tensor_inputs must be a list of names (e.g. ['latents']) or None, got "
                f"{shown(names)}"
            )
        bad = [n for n in names if n not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {shown(bad)}; this pipeline offers "
                f"{self._callback_tensor_inputs}"
            )
