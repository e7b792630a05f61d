"""diffusers' `from_pipe` between the LTX-2 pipelines (every ordered pair, the same class too): the new pipeline
shares every component and gives what a freshly loaded pipeline of its class gives."""

import numpy as np
import pytest
import soundfile as sf
import torch
from converted_folder import converted_folder
from family_call import tiny_call_args

from ltx2_diffusers import (
    LTX2AudioToVideoPipeline,
    LTX2AudioVideoPipeline,
    LTX2ImageToAudioVideoPipeline,
    MultiModalGuidance,
)


CLASSES = (LTX2AudioToVideoPipeline, LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline)
COMPONENTS = ("transformer", "vae", "audio_vae", "connectors", "vocoder", "latent_upsampler", "distilled_lora")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("from_pipe")
    folder = converted_folder(root, 21)
    rate = 16000
    t = np.arange(int(rate * 0.5)) / rate
    sf.write(root / "a.wav", np.stack([np.sin(2 * np.pi * 250 * t), np.cos(2 * np.pi * 4 * t)], 1) * 0.3, rate)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    fresh = {cls: cls.from_pretrained(folder) for cls in CLASSES}
    for pipe in fresh.values():
        pipe.set_progress_bar_config(disable=True)
    expected = {cls: run(pipe, root, image) for cls, pipe in fresh.items()}
    return dict(root=root, image=image, fresh=fresh, expected=expected)


def run(pipe, root, image):
    args = tiny_call_args(pipe, MultiModalGuidance(stg_blocks=[1]), seed=3, audio=str(root / "a.wav"))
    if isinstance(pipe, LTX2ImageToAudioVideoPipeline):
        args["image"] = image
    out = pipe(**args)
    return out.frames, out.audio


@pytest.mark.parametrize("source", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("target", CLASSES, ids=lambda c: c.__name__)
def test_from_pipe_shares_the_components_and_matches_a_fresh_pipeline(setup, source, target):
    base = setup["fresh"][source]
    pipe = target.from_pipe(base)
    assert type(pipe) is target
    for name in COMPONENTS:
        assert getattr(pipe, name) is getattr(base, name), name
    for key in ("model_version", "distilled_lora_scale", "model_variant"):
        assert pipe.config[key] == base.config[key], key
    pipe.set_progress_bar_config(disable=True)
    frames, audio = run(pipe, setup["root"], setup["image"])
    expected_frames, expected_audio = setup["expected"][target]
    assert torch.equal(frames, expected_frames)
    assert torch.equal(audio, expected_audio)


def _dtypes(pipe):
    return {
        f"{name}.{key}": tensor.dtype
        for name in COMPONENTS
        if isinstance(getattr(pipe, name, None), torch.nn.Module)
        for key, tensor in [*getattr(pipe, name).named_parameters(), *getattr(pipe, name).named_buffers()]
    }


def test_from_pipe_leaves_the_source_pipelines_dtypes_as_they_are(setup):
    """diffusers' `from_pipe` ends with `to(dtype=torch.float32)`, casting the shared components in place: a
    bfloat16 pipeline with an fp8-cast transformer keeps every parameter's dtype and its output."""
    from ltx2_diffusers.cli_running import fp8_cast

    base = LTX2AudioVideoPipeline.from_pretrained(setup["root"] / "converted", dtype=torch.bfloat16)
    base.set_progress_bar_config(disable=True)
    assert fp8_cast(base.transformer)
    before = _dtypes(base)
    assert {torch.bfloat16, torch.float8_e4m3fn} <= set(before.values())
    expected = run(base, setup["root"], setup["image"])
    for target in CLASSES:
        pipe = target.from_pipe(base)
        assert _dtypes(base) == before, target.__name__
        assert _dtypes(pipe) == before, target.__name__
    frames, audio = run(base, setup["root"], setup["image"])
    assert torch.equal(frames, expected[0])
    assert torch.equal(audio, expected[1])


def test_from_pipe_with_an_explicit_dtype_casts_as_diffusers_does(setup):
    base = LTX2AudioVideoPipeline.from_pretrained(setup["root"] / "converted", dtype=torch.bfloat16)
    pipe = LTX2ImageToAudioVideoPipeline.from_pipe(base, dtype=torch.float32)
    assert set(_dtypes(pipe).values()) == {torch.float32}
    assert pipe.transformer is base.transformer


def test_from_pipe_carries_the_pipeline_level_settings(setup):
    """`enable_vae_tiling` and `set_transformer_acceleration` follow the shared components to the new pipeline;
    a component passed in comes without the settings about it (a freshly loaded pipeline's defaults)."""
    from ltx2_diffusers.pipelines.acceleration import TransformerAcceleration

    base = LTX2AudioToVideoPipeline.from_pretrained(setup["root"] / "converted")
    base.enable_vae_tiling(tile_size_in_pixels=256, tile_size_in_frames=None)
    base.set_transformer_acceleration(compile=False, attention_backend=None)
    for target in CLASSES:
        pipe = target.from_pipe(base)
        assert pipe.vae_tiling == base.vae_tiling is not None
        assert pipe.transformer_acceleration == TransformerAcceleration(False, None)
    other = LTX2AudioToVideoPipeline.from_pretrained(setup["root"] / "converted")
    pipe = LTX2AudioVideoPipeline.from_pipe(base, vae=other.vae, transformer=other.transformer)
    assert pipe.vae_tiling is None
    assert pipe.transformer_acceleration == TransformerAcceleration()


def test_from_pipe_carries_the_memory_budgets_decode_estimate(setup, monkeypatch):
    """A budget that counted the channels-last decode walk (`enable_memory_budget`) refuses the
    `reference_arithmetic=True` calls of a pipeline made from it by `from_pipe`, as it does its own."""
    from ltx2_diffusers.pipelines.ltx2_base import LTX2PipelineBase

    monkeypatch.setattr(LTX2PipelineBase, "CHANNELS_LAST_DECODE_DEVICES", ("cpu",))  # the walk on this device
    base = LTX2AudioVideoPipeline.from_pretrained(setup["root"] / "converted")
    tier = base.enable_memory_budget(1000, "cpu", height=64, width=64, num_frames=9)
    pipe = LTX2AudioToVideoPipeline.from_pipe(base)
    assert pipe._memory_tier == tier
    args = tiny_call_args(pipe, MultiModalGuidance(stg_blocks=[1]), audio=str(setup["root"] / "a.wav"))
    with pytest.raises(ValueError, match=r"reference_arithmetic=True decodes through vae.decode"):
        pipe(**{**args, "output_type": "pt"}, reference_arithmetic=True)


def test_from_pipe_keeps_layerwise_casting_working(setup):
    """A transformer stored in float8 with bfloat16 compute (diffusers' `enable_layerwise_casting`) is not cast to
    float32 by `from_pipe`: both pipelines still run, the source's output unchanged."""
    base = LTX2AudioVideoPipeline.from_pretrained(setup["root"] / "converted", dtype=torch.bfloat16)
    base.set_progress_bar_config(disable=True)
    base.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    expected = run(base, setup["root"], setup["image"])
    pipe = LTX2ImageToAudioVideoPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    frames, audio = run(base, setup["root"], setup["image"])
    assert torch.equal(frames, expected[0]) and torch.equal(audio, expected[1])
    frames, _ = run(pipe, setup["root"], setup["image"])
    assert torch.isfinite(frames.float()).all()
