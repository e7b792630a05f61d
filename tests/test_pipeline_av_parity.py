"""LTX2AudioVideoPipeline vs ltx-pipelines' TI2VidTwoStagesPipeline (dev) and DistilledPipeline (distilled): same
files, contexts and seed -> same frames and waveform (fp32, CPU), with and without image conditions (frame 0
and a keyframe); bit-exact with reference_arithmetic=True."""

import dataclasses

import numpy as np
import PIL.Image
import prompt_contexts
import pytest
import torch
from factories import build_checkpoint, build_lora, build_upsampler, checkpoint_config, vocoder_config
from ltx_pipelines.utils.constants import LTX_2_3_PARAMS, LTX_2_PARAMS
from reference_av_pipeline import run_reference_distilled, run_reference_ti2vid

from ltx2_diffusers import LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline, MultiModalGuidance
from ltx2_diffusers.schedules import DISTILLED_SIGMAS


HEIGHT = WIDTH = 128
NUM_FRAMES, FPS, STEPS, SEED = 9, 24.0, 3, 7
LORA_STRENGTH = 0.6
TOL = 1e-4


@pytest.fixture(scope="module", params=["2.3", "2.0"])
def files(request, tmp_path_factory):
    version = request.param
    root = tmp_path_factory.mktemp("av")
    config = checkpoint_config(version)
    config["vocoder"] = vocoder_config(version, initial_channel=64, bwe_initial_channel=32)  # narrowest that works
    checkpoint = build_checkpoint(root / f"ltx-{version}-tiny.safetensors", version, seed=31, config=config)
    image = root / "image.png"
    PIL.Image.fromarray(np.random.default_rng(2).integers(0, 255, (80, 112, 3), dtype=np.uint8)).save(image)
    return dict(
        version=version,
        checkpoint=checkpoint,
        upsampler=build_upsampler(root / "upsampler.safetensors", seed=32),
        lora=build_lora(root / "lora.safetensors", checkpoint, seed=33, dtype=torch.float32),
        image=image,
        num_layers=config["transformer"]["num_layers"],
    )


def contexts(seed, version):
    return prompt_contexts.contexts(seed, version, tokens=16)


def reference_params(files):
    """The reference's defaults for the version (detect_params), the STG block moved into the tiny model."""
    params = LTX_2_3_PARAMS if files["version"] == "2.3" else LTX_2_PARAMS
    block = [files["num_layers"] - 1]
    return (
        dataclasses.replace(params.video_guider_params, stg_blocks=block),
        dataclasses.replace(params.audio_guider_params, stg_blocks=block),
    )


def to_guidance(params) -> MultiModalGuidance:
    return MultiModalGuidance(**{f.name: getattr(params, f.name) for f in dataclasses.fields(MultiModalGuidance)})


def pipeline(files, cls=LTX2AudioVideoPipeline, variant="dev"):
    kwargs = dict(spatial_upsampler_path=files["upsampler"], torch_dtype=torch.float32)
    if variant == "dev":
        kwargs["distilled_lora"] = (files["lora"], LORA_STRENGTH)
    pipe = cls.from_single_file(files["checkpoint"], **kwargs)
    if variant != "dev":
        pipe.register_to_config(model_variant=variant)
    return pipe


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


IMAGE_CASES = {"text": [], "image_and_keyframe": [(0, 1.0, 33), (8, 0.7, 33)]}


def check(out, reference, exact=False):
    frames, _, waveform, rate = reference
    ours = out.frames.permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W) like the reference decoder output
    assert ours.shape == frames.shape and out.audio.shape == waveform.shape
    assert out.audio_sample_rate == rate
    video_diff, audio_diff = max_diff(ours, frames), max_diff(out.audio, waveform)
    print(f"frames max|d| = {video_diff:.3g}, waveform max|d| = {audio_diff:.3g}")
    assert ours.std() > 0.01 and out.audio.std() > 0
    if exact:
        assert video_diff == 0.0 and audio_diff == 0.0
    assert video_diff <= TOL and audio_diff <= TOL


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_seed_parity_with_ti2vid_at_its_defaults(files, case):
    version = files["version"]
    images = [(str(files["image"]), *item) for item in IMAGE_CASES[case]]
    video_params, audio_params = reference_params(files)
    positive, negative = contexts(0, version), contexts(1, version)
    reference = run_reference_ti2vid(
        checkpoint=files["checkpoint"], upsampler=files["upsampler"], distilled_lora=files["lora"],
        distilled_strength=LORA_STRENGTH, positive=positive, negative=negative, seed=SEED, height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FPS, num_inference_steps=STEPS,
        video_guider_params=video_params, audio_guider_params=audio_params, images=images,
    )  # fmt: skip
    pipe = pipeline(files)
    defaults = pipe.version_defaults()
    # our defaults are the reference's (only the STG block differs: the tiny model has fewer blocks)
    assert defaults.video_guidance == dataclasses.replace(
        to_guidance(video_params), stg_blocks=defaults.video_guidance.stg_blocks
    )
    assert defaults.audio_guidance == dataclasses.replace(
        to_guidance(audio_params), stg_blocks=defaults.audio_guidance.stg_blocks
    )
    common = dict(
        prompt_contexts=positive, negative_prompt_contexts=negative, conditions=images, height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FPS, num_inference_steps=STEPS,
        video_guidance=to_guidance(video_params), audio_guidance=to_guidance(audio_params), output_type="pt",
    )  # fmt: skip
    check(pipe(**common, generator=torch.Generator().manual_seed(SEED)), reference)
    exact = pipe(**common, generator=torch.Generator().manual_seed(SEED), reference_arithmetic=True)
    check(exact, reference, exact=True)


def test_image_to_audio_video_pins_the_image_at_frame_0(files):
    version = files["version"]
    video_params, audio_params = reference_params(files)
    positive, negative = contexts(2, version), contexts(3, version)
    reference = run_reference_ti2vid(
        checkpoint=files["checkpoint"], upsampler=files["upsampler"], distilled_lora=files["lora"],
        distilled_strength=LORA_STRENGTH, positive=positive, negative=negative, seed=SEED + 1, height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FPS, num_inference_steps=2,
        video_guider_params=video_params, audio_guider_params=audio_params, images=[(str(files["image"]), 0, 0.8)],
    )  # fmt: skip
    pipe = pipeline(files, LTX2ImageToAudioVideoPipeline)
    out = pipe(
        PIL.Image.open(files["image"]), image_strength=0.8, prompt_contexts=positive,
        negative_prompt_contexts=negative, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FPS,
        num_inference_steps=2, video_guidance=to_guidance(video_params), audio_guidance=to_guidance(audio_params),
        generator=torch.Generator().manual_seed(SEED + 1), output_type="pt",
    )  # fmt: skip
    check(out, reference)


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_distilled_checkpoint_is_the_distilled_pipeline(files, case):
    """model_variant="distilled": the 8 distilled sigmas, no guidance, no stage-2 LoRA, by default."""
    images = [(str(files["image"]), *item) for item in IMAGE_CASES[case]]
    positive = contexts(4, files["version"])
    reference = run_reference_distilled(
        checkpoint=files["checkpoint"], upsampler=files["upsampler"], positive=positive, seed=SEED, height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FPS, images=images,
    )  # fmt: skip
    pipe = pipeline(files, variant="distilled")
    assert pipe.distilled_lora is None
    defaults = pipe.version_defaults()
    assert defaults.sigmas == DISTILLED_SIGMAS and defaults.video_guidance is None and not defaults.stage_2_lora
    common = dict(
        prompt_contexts=positive, conditions=images, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        frame_rate=FPS, output_type="pt",
    )  # fmt: skip
    check(pipe(**common, generator=torch.Generator().manual_seed(SEED)), reference)
    exact = pipe(**common, generator=torch.Generator().manual_seed(SEED), reference_arithmetic=True)
    check(exact, reference, exact=True)
    if case == "text":  # sigmas= through the scheduler: a dev pipeline given the table, no guidance, LoRA at 0
        dev = pipeline(files)
        out = dev(
            **common, sigmas=list(DISTILLED_SIGMAS), video_guidance=MultiModalGuidance.disabled(),
            audio_guidance=MultiModalGuidance.disabled(), distilled_lora_scale=0.0,
            generator=torch.Generator().manual_seed(SEED),
        )  # fmt: skip
        check(out, reference)


def test_seed_parity_other_size_rate_and_negative_length(files):
    """Non-square, 17 frames at 25 fps, a negative text of another length (its passes run one by one), audio
    guidance without STG."""
    version = files["version"]
    video_params, audio_params = reference_params(files)
    audio_params = dataclasses.replace(audio_params, stg_scale=0.0, cfg_scale=4.0, modality_scale=2.0)
    positive = contexts(8, version)
    negative = tuple(c[:, :11] for c in contexts(9, version))
    size = dict(height=192, width=128, num_frames=17, frame_rate=25.0)
    reference = run_reference_ti2vid(
        checkpoint=files["checkpoint"], upsampler=files["upsampler"], distilled_lora=files["lora"],
        distilled_strength=LORA_STRENGTH, positive=positive, negative=negative, seed=SEED + 2,
        num_inference_steps=2, video_guider_params=video_params, audio_guider_params=audio_params, **size,
    )  # fmt: skip
    out = pipeline(files)(
        prompt_contexts=positive, negative_prompt_contexts=negative, num_inference_steps=2,
        video_guidance=to_guidance(video_params), audio_guidance=to_guidance(audio_params),
        generator=torch.Generator().manual_seed(SEED + 2), output_type="pt", **size,
    )  # fmt: skip
    check(out, reference)


def test_different_skip_steps_are_refused_before_any_model(files, monkeypatch):
    pipe = pipeline(files)

    def forbidden(*args, **kwargs):
        raise AssertionError("a model ran before the checks")

    monkeypatch.setattr(pipe.transformer, "forward", forbidden)
    guidance = MultiModalGuidance(stg_blocks=[0])
    with pytest.raises(ValueError, match="skip_step must be equal"):
        pipe(
            prompt_contexts=contexts(0, files["version"]), negative_prompt_contexts=contexts(1, files["version"]),
            height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, video_guidance=dataclasses.replace(guidance, skip_step=1),
            audio_guidance=guidance,
        )  # fmt: skip


def test_bfloat16_reference_arithmetic_is_bit_exact(files, tmp_path):
    """In bf16 (the reference's native precision) with a bf16 LoRA as released, `reference_arithmetic=True`
    reproduces TI2VidTwoStagesPipeline's frames and waveform bit for bit, image conditions included."""
    version = files["version"]
    lora = build_lora(tmp_path / "lora-bf16.safetensors", files["checkpoint"], seed=34)  # bf16, like the release
    video_params, audio_params = reference_params(files)
    positive, negative = contexts(10, version), contexts(11, version)
    images = [(str(files["image"]), 0, 1.0, 33), (str(files["image"]), 8, 0.7, 33)]
    reference = run_reference_ti2vid(
        checkpoint=files["checkpoint"], upsampler=files["upsampler"], distilled_lora=lora,
        distilled_strength=LORA_STRENGTH, positive=positive, negative=negative, seed=SEED, height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FPS, num_inference_steps=2,
        video_guider_params=video_params, audio_guider_params=audio_params, images=images, dtype=torch.bfloat16,
    )  # fmt: skip
    pipe = LTX2AudioVideoPipeline.from_single_file(
        files["checkpoint"], spatial_upsampler_path=files["upsampler"], distilled_lora=(lora, LORA_STRENGTH),
        torch_dtype=torch.bfloat16,
    )  # fmt: skip
    out = pipe(
        prompt_contexts=tuple(c.to(torch.bfloat16) for c in positive),
        negative_prompt_contexts=tuple(c.to(torch.bfloat16) for c in negative), conditions=images, height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FPS, num_inference_steps=2,
        video_guidance=to_guidance(video_params), audio_guidance=to_guidance(audio_params),
        generator=torch.Generator().manual_seed(SEED), output_type="pt", reference_arithmetic=True,
    )  # fmt: skip
    check(out, reference, exact=True)
