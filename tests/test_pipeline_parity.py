"""LTX2AudioToVideoPipeline vs ltx-pipelines' A2VidPipelineTwoStage: same files, audio, contexts and seed -> same
video (fp32, CPU), and the ORIGINAL audio samples back."""

import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from factories import build_checkpoint, build_lora, build_upsampler
from ltx_core.components.guiders import MultiModalGuiderParams
from prompt_contexts import contexts  # noqa: F401  (imported from here by other test modules)
from reference_pipeline import run_reference_a2vid

from ltx2_diffusers import (
    AutoencoderAudioMel,
    LTX2AudioToVideoPipeline,
    LTX2AudioVideoTransformer,
    LTX2ImageCondition,
    MultiModalGuidance,
)
from ltx2_diffusers.schedules import flow_match_scheduler_config


HEIGHT = WIDTH = 128
NUM_FRAMES, FPS, STEPS, SEED = 9, 24.0, 3, 10
LORA_STRENGTH = 0.8


@pytest.fixture(scope="module", params=["2.3", "2.0"])
def files(request, tmp_path_factory):
    version = request.param
    root = tmp_path_factory.mktemp("a2v")
    checkpoint = build_checkpoint(root / f"ltx-{version}-tiny.safetensors", version, seed=1)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=2)
    # float32 LoRA: ltx-core computes the fused delta in the LoRA file's dtype (a bf16 file rounds it).
    lora = build_lora(root / "distilled-lora.safetensors", checkpoint, seed=3, dtype=torch.float32)
    rate = 44100
    t = np.arange(int(rate * 1.2)) / rate
    left = 0.4 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    right = 0.3 * np.sign(np.sin(2 * np.pi * 2 * t)) * np.exp(-((t * 8) % 1) * 5)
    audio = root / "audio.wav"
    sf.write(audio, np.stack([left, right], axis=1).astype(np.float32), rate, subtype="FLOAT")
    image = root / "image.png"
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(image)
    return dict(checkpoint=checkpoint, upsampler=upsampler, lora=lora, audio=audio, image=image, version=version)


def our_pipeline(files):
    from ltx2_diffusers.loaders.single_file_upsampler import load_latent_upsampler_from_single_file
    from ltx2_diffusers.loaders.single_file_video_vae import load_video_vae_from_single_file

    checkpoint = files["checkpoint"]
    pipe = LTX2AudioToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**flow_match_scheduler_config()),
        vae=load_video_vae_from_single_file(checkpoint, torch_dtype=torch.float32),
        audio_vae=AutoencoderAudioMel.from_single_file(checkpoint, torch_dtype=torch.float32),
        connectors=None,
        transformer=LTX2AudioVideoTransformer.from_single_file(checkpoint, torch_dtype=torch.float32),
        latent_upsampler=load_latent_upsampler_from_single_file(files["upsampler"], torch_dtype=torch.float32),
        distilled_lora_scale=LORA_STRENGTH,
    )
    pipe.load_lora_weights(files["lora"], adapter_name="distilled")
    return pipe


@pytest.mark.parametrize(
    "guidance",
    [
        MultiModalGuidance(cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[1]),
        MultiModalGuidance(
            cfg_scale=2.0, stg_scale=0.5, rescale_scale=0.0, modality_scale=1.5, stg_blocks=[0, 1], skip_step=1
        ),
    ],
    ids=["defaults", "skip_step"],
)
@pytest.mark.parametrize("with_images", [False, True], ids=["no_images", "images"])
def test_seed_parity_with_reference(files, guidance, with_images):
    version = files["version"]
    positive, negative = contexts(0, version), contexts(1, version)
    # frame 0 replaces the first latent frame; frame 8 is appended as keyframe tokens (crf 33 H.264 round trip)
    images = [(str(files["image"]), 0, 1.0, 33), (str(files["image"]), 8, 0.7, 33)] if with_images else []
    reference_frames, _, reference_audio, reference_rate = run_reference_a2vid(
        checkpoint=files["checkpoint"],
        upsampler=files["upsampler"],
        distilled_lora=files["lora"],
        distilled_strength=LORA_STRENGTH,
        audio_path=files["audio"],
        positive=positive,
        negative=negative,
        seed=SEED,
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        frame_rate=FPS,
        num_inference_steps=STEPS,
        guider_params=MultiModalGuiderParams(
            cfg_scale=guidance.cfg_scale,
            stg_scale=guidance.stg_scale,
            rescale_scale=guidance.rescale_scale,
            modality_scale=guidance.modality_scale,
            stg_blocks=list(guidance.stg_blocks),
            skip_step=guidance.skip_step,
        ),
        images=images,
    )
    pipe = our_pipeline(files)
    out = pipe(
        audio=files["audio"],
        prompt_contexts=positive,
        negative_prompt_contexts=negative,
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        frame_rate=FPS,
        num_inference_steps=STEPS,
        video_guidance=guidance,
        conditions=[LTX2ImageCondition(*image) for image in images],
        generator=torch.Generator().manual_seed(SEED),
        output_type="pt",
    )
    frames = out.frames.permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W) like the reference decoder output
    assert frames.shape == reference_frames.shape
    diff = (frames - reference_frames).abs().max().item()
    print(f"A2V parity {version}: frames max|d| = {diff:.3g}")
    assert diff <= 1e-4, diff
    assert frames.std() > 0.01  # not a constant image
    assert out.audio_sample_rate == reference_rate
    assert torch.equal(out.audio, reference_audio.float().reshape(out.audio.shape))
    source, rate = sf.read(files["audio"], dtype="float32", always_2d=True)
    n = round(NUM_FRAMES / FPS * rate)
    assert torch.equal(out.audio, torch.from_numpy(source[:n].T.copy()))
    exact = pipe(
        audio=files["audio"], prompt_contexts=positive, negative_prompt_contexts=negative, height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FPS, num_inference_steps=STEPS, video_guidance=guidance,
        conditions=[LTX2ImageCondition(*image) for image in images], generator=torch.Generator().manual_seed(SEED),
        output_type="pt", reference_arithmetic=True,
    ).frames.permute(0, 2, 1, 3, 4)  # fmt: skip
    assert torch.equal(exact, reference_frames)  # one pass per forward, ltx-core's LoRA fusion: bit for bit


@pytest.mark.parametrize(
    "case",
    [
        dict(height=192, width=128, num_frames=17, frame_rate=25.0, audio_start_time=0.1, audio_max_duration=1.0),
        dict(height=64, width=128, num_frames=1, frame_rate=24.0, audio_start_time=0.0, audio_max_duration=None),
    ],
    ids=["non_square_25fps_offset_long_window", "single_frame"],
)
def test_seed_parity_sizes_rates_and_audio_windows(files, case):
    version = files["version"]
    positive, negative = contexts(2, version), contexts(3, version)
    guidance = MultiModalGuidance(stg_blocks=[0])
    reference_frames, _, reference_audio, _ = run_reference_a2vid(
        checkpoint=files["checkpoint"],
        upsampler=files["upsampler"],
        distilled_lora=files["lora"],
        distilled_strength=LORA_STRENGTH,
        audio_path=files["audio"],
        positive=positive,
        negative=negative,
        seed=SEED + 1,
        num_inference_steps=STEPS,
        guider_params=MultiModalGuiderParams(
            cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[0]
        ),
        **case,
    )
    out = our_pipeline(files)(
        audio=files["audio"],
        prompt_contexts=positive,
        negative_prompt_contexts=negative,
        num_inference_steps=STEPS,
        video_guidance=guidance,
        generator=torch.Generator().manual_seed(SEED + 1),
        output_type="pt",
        **case,
    )
    frames = out.frames.permute(0, 2, 1, 3, 4)
    assert frames.shape == reference_frames.shape
    diff = (frames - reference_frames).abs().max().item()
    print(f"A2V parity {version} {case}: frames max|d| = {diff:.3g}")
    assert diff <= 1e-4
    # the returned audio covers exactly the video (the reference returns the whole window it read)
    n = round(case["num_frames"] / case["frame_rate"] * out.audio_sample_rate)
    assert torch.equal(out.audio, reference_audio.reshape(out.audio.shape[0], -1)[:, :n].float())


@pytest.mark.parametrize("version", ["2.3", "2.0"])
def test_bfloat16_reference_arithmetic_is_bit_exact(tmp_path, version):
    """In bf16 (the reference's native precision), with a bf16 LoRA as released, `reference_arithmetic=True`
    reproduces A2VidPipelineTwoStage bit for bit: one pass per forward and LoRAs fused as ltx-core fuses them."""
    checkpoint = build_checkpoint(tmp_path / "ckpt.safetensors", version, seed=11)
    upsampler = build_upsampler(tmp_path / "ups.safetensors", seed=12)
    lora = build_lora(tmp_path / "lora.safetensors", checkpoint, seed=13)  # bf16, like the released file
    rate = 32000
    t = np.arange(int(rate * 0.5)) / rate
    sf.write(tmp_path / "a.wav", np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 7 * t)], 1) * 0.5, rate)
    positive, negative = contexts(4, version), contexts(5, version)
    guidance = MultiModalGuidance(stg_blocks=[1])
    common = dict(height=128, width=128, num_frames=9, frame_rate=FPS, num_inference_steps=STEPS)
    reference, *_ = run_reference_a2vid(
        checkpoint=checkpoint,
        upsampler=upsampler,
        distilled_lora=lora,
        distilled_strength=LORA_STRENGTH,
        audio_path=tmp_path / "a.wav",
        positive=positive,
        negative=negative,
        seed=SEED,
        guider_params=MultiModalGuiderParams(
            cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[1]
        ),
        dtype=torch.bfloat16,
        **common,
    )
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, LORA_STRENGTH), torch_dtype=torch.bfloat16
    )

    def ours(**kwargs):
        return pipe(
            audio=tmp_path / "a.wav",
            prompt_contexts=tuple(c.to(torch.bfloat16) for c in positive),
            negative_prompt_contexts=tuple(c.to(torch.bfloat16) for c in negative),
            video_guidance=guidance,
            generator=torch.Generator().manual_seed(SEED),
            output_type="pt",
            **common,
            **kwargs,
        ).frames.permute(0, 2, 1, 3, 4)

    assert torch.equal(ours(reference_arithmetic=True).float(), reference.float())
    # The default (batched passes, PEFT LoRA) is close but not bit-identical in bf16.
    diff = (ours().float() - reference.float()).abs().max().item()
    print(f"A2V bf16 {version}: reference_arithmetic bit-exact; default max|d| = {diff:.3g}")
    assert diff < 0.1
