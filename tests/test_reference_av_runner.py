"""The test-side runners of ltx-pipelines' TI2VidTwoStagesPipeline and DistilledPipeline (reference_av_pipeline.py)
work on tiny original-format files: shapes, finite values, determinism by seed, image conditions honoured."""

import dataclasses

import numpy as np
import PIL.Image
import pytest
import torch
from factories import build_checkpoint, build_lora, build_upsampler, checkpoint_config, vocoder_config
from ltx_pipelines.utils.constants import LTX_2_3_PARAMS
from reference_av_pipeline import run_reference_distilled, run_reference_ti2vid


HEIGHT = WIDTH = 128
NUM_FRAMES, FPS, STEPS = 9, 24.0, 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("av")
    config = checkpoint_config("2.3")
    config["vocoder"] = vocoder_config("2.3", initial_channel=64, bwe_initial_channel=32)  # narrowest that works
    checkpoint = build_checkpoint(root / "ltx-2.3-tiny.safetensors", "2.3", seed=21, config=config)
    image = root / "image.png"
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 112, 3), dtype=np.uint8)).save(image)
    return dict(
        checkpoint=checkpoint,
        upsampler=build_upsampler(root / "upsampler.safetensors", seed=22),
        lora=build_lora(root / "lora.safetensors", checkpoint, seed=23, dtype=torch.float32),
        image=image,
        num_layers=checkpoint_config("2.3")["transformer"]["num_layers"],
    )


def contexts(seed):
    g = torch.Generator().manual_seed(seed)
    section = checkpoint_config("2.3")["transformer"]
    video_dim = section["num_attention_heads"] * section["attention_head_dim"]
    audio_dim = section["audio_num_attention_heads"] * section["audio_attention_head_dim"]
    return torch.randn(1, 16, video_dim, generator=g), torch.randn(1, 16, audio_dim, generator=g)


def ti2vid(files, seed, images=()):
    block = [files["num_layers"] - 1]
    return run_reference_ti2vid(
        checkpoint=files["checkpoint"],
        upsampler=files["upsampler"],
        distilled_lora=files["lora"],
        distilled_strength=0.6,
        positive=contexts(0),
        negative=contexts(1),
        seed=seed,
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        frame_rate=FPS,
        num_inference_steps=STEPS,
        video_guider_params=dataclasses.replace(LTX_2_3_PARAMS.video_guider_params, stg_blocks=block),
        audio_guider_params=dataclasses.replace(LTX_2_3_PARAMS.audio_guider_params, stg_blocks=block),
        images=images,
    )


def distilled(files, seed):
    return run_reference_distilled(
        checkpoint=files["checkpoint"],
        upsampler=files["upsampler"],
        positive=contexts(0),
        seed=seed,
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        frame_rate=FPS,
    )


def check_outputs(out):
    frames, latent, waveform, rate = out
    assert frames.shape == (1, 3, NUM_FRAMES, HEIGHT, WIDTH)
    assert latent.shape[0] == 1 and latent.shape[2:] == ((NUM_FRAMES - 1) // 8 + 1, HEIGHT // 32, WIDTH // 32)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1 and frames.std() > 0
    assert waveform.dim() == 2 and waveform.shape[1] > 0 and torch.isfinite(waveform).all() and waveform.std() > 0
    assert isinstance(rate, int) and rate > 0
    assert waveform.shape[1] == pytest.approx(NUM_FRAMES / FPS * rate, rel=0.2)


@pytest.fixture(scope="module")
def ti2vid_seed_5(files):
    return ti2vid(files, 5)


def test_ti2vid_runner_is_deterministic_by_seed(files, ti2vid_seed_5):
    first, again, other = ti2vid_seed_5, ti2vid(files, 5), ti2vid(files, 6)
    check_outputs(first)
    for a, b in zip(first[:3], again[:3]):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[2], other[2])


def test_distilled_runner_is_deterministic(files):
    first, again = distilled(files, 5), distilled(files, 5)
    check_outputs(first)
    for a, b in zip(first[:3], again[:3]):
        assert torch.equal(a, b)


def test_ti2vid_runner_honours_image_conditions(files, ti2vid_seed_5):
    conditioned = ti2vid(files, 5, images=[(str(files["image"]), 0, 1.0), (str(files["image"]), 8, 0.7)])
    check_outputs(conditioned)
    assert not torch.equal(ti2vid_seed_5[0], conditioned[0])
