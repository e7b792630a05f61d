"""Held-out configurations of the text/image -> audio+video family, drawn from a seed, run against ltx-pipelines 1.0.

Each case is a tiny random checkpoint at a transformer shape, size, frame count, frame rate, guidance, image
conditions and sigma table that no parity test uses; ``run_case`` runs ``LTX2AudioVideoPipeline`` (or
``LTX2ImageToAudioVideoPipeline``) and the reference (``TI2VidTwoStagesPipeline``, or ``DistilledPipeline`` for the
distilled variant) on the same files, contexts and seed, fp32 CPU, and returns max |Δ| of frames and waveform.
Used by ``tests/test_pipeline_heldout.py`` and ``benchmarks/heldout_family.py``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
from unittest import mock

import ltx_pipelines.ti2vid_two_stages as ti2vid
import numpy as np
import PIL.Image
import torch
from factories import build_checkpoint, build_lora, build_upsampler, checkpoint_config, vocoder_config
from ltx_core.components.guiders import MultiModalGuiderParams
from reference_av_pipeline import run_reference_distilled, run_reference_ti2vid

from ltx2_diffusers import LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline, MultiModalGuidance
from ltx2_diffusers.pipelines.image_conditions import DEFAULT_IMAGE_CRF


#: The issue's bound (fp32 CPU, frames in [0, 1] and waveform).
TOL = 1e-4

# Shapes the parity tests do not use (they use 2 layers, video 2x32, audio 2x16, 128x128 / 192x128, 9 / 17 frames).
_VIDEO_HEADS = ((4, 16), (3, 32), (1, 64), (2, 48))
_AUDIO_HEADS = ((4, 8), (1, 32), (3, 16))
_SIZES = ((192, 320), (320, 192), (256, 192), (128, 320))
_FRAMES = (9, 25, 33)
_RATES = (24.0, 25.0, 30.0)


@dataclasses.dataclass(frozen=True)
class HeldoutCase:
    seed: int
    version: str
    variant: str  # "dev" | "distilled"
    pipeline: str  # "av" | "i2av"
    num_layers: int
    video_heads: tuple[int, int]
    audio_heads: tuple[int, int]
    height: int
    width: int
    num_frames: int
    frame_rate: float
    steps: int | None
    sigmas: tuple[float, ...] | None
    video_guidance: MultiModalGuidance | None
    audio_guidance: MultiModalGuidance | None
    conditions: tuple[tuple[int, float, int], ...]  # (frame_index, strength, crf); frame 0 is the i2av image
    lora_strength: float
    negative_length: int

    def label(self) -> str:
        kind = f"{self.pipeline}/{self.variant}"
        shape = f"L{self.num_layers} v{self.video_heads[0]}x{self.video_heads[1]} a{self.audio_heads[0]}x{self.audio_heads[1]}"
        steps = f"sigmas{len(self.sigmas) - 1}" if self.sigmas else f"steps{self.steps}"
        return (
            f"{self.version} {kind} {shape} {self.height}x{self.width} {self.num_frames}f@{self.frame_rate:g} "
            f"{steps} imgs{len(self.conditions)}"
        )


def _guidance(rng: random.Random, num_layers: int, skip_step: int) -> MultiModalGuidance:
    blocks = sorted(rng.sample(range(num_layers), rng.randint(1, num_layers)))
    return MultiModalGuidance(
        cfg_scale=rng.choice((1.0, round(rng.uniform(1.5, 8.0), 2))),
        stg_scale=rng.choice((0.0, round(rng.uniform(0.3, 2.0), 2))),
        rescale_scale=rng.choice((0.0, round(rng.uniform(0.2, 1.0), 2))),
        modality_scale=rng.choice((1.0, round(rng.uniform(1.5, 4.0), 2))),
        stg_blocks=blocks,
        skip_step=skip_step,
    )


def _sigma_table(rng: random.Random) -> tuple[float, ...]:
    n = rng.randint(2, 4)
    inner = sorted((round(rng.uniform(0.05, 0.98), 4) for _ in range(n - 1)), reverse=True)
    return (1.0, *inner, 0.0)


def draw_case(seed: int) -> HeldoutCase:
    """One held-out configuration, deterministic in ``seed``."""
    rng = random.Random(f"ltx2-heldout-{seed}")
    version = rng.choice(("2.0", "2.3"))
    variant = "distilled" if rng.random() < 0.25 else "dev"
    pipeline = "i2av" if rng.random() < 0.3 else "av"
    num_layers = rng.choice((3, 4))
    num_frames = rng.choice(_FRAMES)
    height, width = rng.choice(_SIZES)
    conditions = []
    if pipeline == "i2av":
        conditions.append((0, round(rng.uniform(0.4, 0.95), 2), DEFAULT_IMAGE_CRF))  # image= takes the default
    for _ in range(rng.randint(0, 2) if pipeline == "i2av" else rng.randint(1, 2)):
        frame = rng.randint(1, num_frames - 1)
        if all(frame != c[0] for c in conditions):
            conditions.append((frame, round(rng.uniform(0.3, 0.95), 2), rng.choice((0, 23, 33))))
    steps = sigmas = video_guidance = audio_guidance = None
    if variant == "dev":
        if rng.random() < 0.4:
            sigmas = _sigma_table(rng)
        else:
            steps = rng.randint(2, 4)
        skip_step = rng.choice((0, 0, 1, 2))
        video_guidance = _guidance(rng, num_layers, skip_step)
        audio_guidance = _guidance(rng, num_layers, skip_step)
    # The audio<->video cross attention runs its RoPE at the audio width split over the VIDEO heads (ltx-core's
    # and ours): the audio width / 2 must divide by the video head count, or neither model can run.
    video_heads = rng.choice(_VIDEO_HEADS)
    audio_heads = rng.choice(_AUDIO_HEADS)
    while (audio_heads[0] * audio_heads[1] // 2) % video_heads[0]:
        audio_heads = rng.choice(_AUDIO_HEADS)
    return HeldoutCase(
        seed=seed,
        version=version,
        variant=variant,
        pipeline=pipeline,
        num_layers=num_layers,
        video_heads=video_heads,
        audio_heads=audio_heads,
        height=height,
        width=width,
        num_frames=num_frames,
        frame_rate=rng.choice(_RATES),
        steps=steps,
        sigmas=sigmas,
        video_guidance=video_guidance,
        audio_guidance=audio_guidance,
        conditions=tuple(conditions),
        lora_strength=round(rng.uniform(0.3, 1.0), 2),
        negative_length=rng.choice((16, 7, 23)),
    )


def _config(case: HeldoutCase) -> dict:
    config = checkpoint_config(
        case.version,
        num_layers=case.num_layers,
        num_attention_heads=case.video_heads[0],
        attention_head_dim=case.video_heads[1],
        audio_num_attention_heads=case.audio_heads[0],
        audio_attention_head_dim=case.audio_heads[1],
    )
    config["vocoder"] = vocoder_config(case.version, initial_channel=64, bwe_initial_channel=32)
    return config


def heldout_contexts(seed: int, config: dict, version: str, length: int = 16):
    """Random post-connector `(video, audio)` contexts of `length` tokens for a held-out `config`."""
    g = torch.Generator().manual_seed(seed)
    section = config["transformer"]
    video_dim = section["num_attention_heads"] * section["attention_head_dim"]
    audio_dim = section["audio_num_attention_heads"] * section["audio_attention_head_dim"]
    if version == "2.0":
        video_dim = audio_dim = section["caption_channels"]
    return torch.randn(1, length, video_dim, generator=g), torch.randn(1, length, audio_dim, generator=g)


def _reference_params(guidance: MultiModalGuidance) -> MultiModalGuiderParams:
    return MultiModalGuiderParams(**dataclasses.asdict(guidance))


class _FixedSchedule:
    table: tuple[float, ...] = ()

    def execute(self, steps, **kwargs):
        return torch.tensor(self.table)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def run_case(case: HeldoutCase, root: str | pathlib.Path, ours_overrides: dict | None = None) -> dict:
    """Run ours and the reference on ``case``; returns max |Δ| of frames and waveform and the output stds.
    ``ours_overrides``: call arguments changed on our side only (a negative control of the comparison)."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = _config(case)
    checkpoint = build_checkpoint(
        root / f"ltx-{case.version}.safetensors", case.version, seed=case.seed, config=config
    )
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=case.seed + 1)
    rng = np.random.default_rng(case.seed)
    images = []
    for i, (frame, strength, crf) in enumerate(case.conditions):
        path = root / f"image{i}.png"
        h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        images.append((str(path), frame, strength, crf))
    positive = heldout_contexts(case.seed + 2, config, case.version)
    negative = heldout_contexts(case.seed + 3, config, case.version, case.negative_length)
    size = dict(height=case.height, width=case.width, num_frames=case.num_frames, frame_rate=case.frame_rate)
    seed = case.seed + 4

    if case.variant == "distilled":
        reference = run_reference_distilled(
            checkpoint=checkpoint, upsampler=upsampler, positive=positive, seed=seed, images=images, **size
        )
        pipe = LTX2AudioVideoPipeline if case.pipeline == "av" else LTX2ImageToAudioVideoPipeline
        pipe = pipe.from_single_file(
            checkpoint, spatial_upsampler_path=upsampler, model_variant="distilled", torch_dtype=torch.float32
        )
        kwargs = dict(prompt_contexts=positive)
    else:
        lora = build_lora(root / "lora.safetensors", checkpoint, seed=case.seed + 5, dtype=torch.float32)
        steps = case.steps if case.sigmas is None else len(case.sigmas) - 1
        schedule = type("_Schedule", (_FixedSchedule,), {"table": case.sigmas})
        patch = mock.patch.object(ti2vid, "LTX2Scheduler", schedule) if case.sigmas else mock.MagicMock()
        with patch:
            reference = run_reference_ti2vid(
                checkpoint=checkpoint, upsampler=upsampler, distilled_lora=lora,
                distilled_strength=case.lora_strength, positive=positive, negative=negative, seed=seed,
                num_inference_steps=steps, video_guider_params=_reference_params(case.video_guidance),
                audio_guider_params=_reference_params(case.audio_guidance), images=images, **size,
            )  # fmt: skip
        pipe = LTX2AudioVideoPipeline if case.pipeline == "av" else LTX2ImageToAudioVideoPipeline
        pipe = pipe.from_single_file(
            checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, case.lora_strength),
            torch_dtype=torch.float32,
        )  # fmt: skip
        kwargs = dict(
            prompt_contexts=positive, negative_prompt_contexts=negative, video_guidance=case.video_guidance,
            audio_guidance=case.audio_guidance,
        )  # fmt: skip
        if case.sigmas:
            kwargs["sigmas"] = list(case.sigmas)
        else:
            kwargs["num_inference_steps"] = case.steps
    if case.pipeline == "i2av":
        image, _, strength, crf = images[0]
        assert crf == DEFAULT_IMAGE_CRF  # image= takes the default crf
        kwargs.update(image=PIL.Image.open(image), image_strength=strength, conditions=images[1:])
    else:
        kwargs["conditions"] = images
    kwargs.update(size, generator=torch.Generator().manual_seed(seed), output_type="pt")
    out = pipe(**{**kwargs, **(ours_overrides or {})})
    frames, _, waveform, rate = reference
    ours = out.frames.permute(0, 2, 1, 3, 4)
    if ours.shape != frames.shape or out.audio.shape != waveform.shape or out.audio_sample_rate != rate:
        raise AssertionError(
            f"shapes differ: frames {tuple(ours.shape)} vs {tuple(frames.shape)}, audio {tuple(out.audio.shape)} "
            f"vs {tuple(waveform.shape)}, rate {out.audio_sample_rate} vs {rate}"
        )
    return dict(
        case=case.label(),
        seed=case.seed,
        frames_max_abs_diff=max_diff(ours, frames),
        waveform_max_abs_diff=max_diff(out.audio, waveform),
        frames_std=ours.std().item(),
        waveform_std=out.audio.std().item(),
    )
