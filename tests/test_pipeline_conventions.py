"""diffusers conventions of LTX2AudioToVideoPipeline: output layouts, generator lists, callback timesteps and
stage index, flat guidance aliases, docs, VAE tiling switches, offload order, cheap checks before any model."""

import inspect
import re

import numpy as np
import pytest
import torch
from test_pipeline import call
from test_pipeline import setup as pipeline_setup  # noqa: F401  (module fixture reused)

from ltx2_diffusers import (
    LTX2AudioToVideoPipeline,
    LTX2AudioVideoPipeline,
    LTX2ImageCondition,
    LTX2ImageToAudioVideoPipeline,
    MultiModalGuidance,
)
from ltx2_diffusers.pipelines.ltx2_base import VersionDefaults
from ltx2_diffusers.schedules import STAGE_2_DISTILLED_SIGMAS, ltx2_sigmas


@pytest.fixture(scope="module")
def setup(pipeline_setup):  # noqa: F811
    return pipeline_setup


def test_pt_is_frames_channels_first_and_matches_np(setup):
    pipe = setup["pipe"]
    pt = call(pipe, setup["audio"], output_type="pt").frames
    np_frames = call(pipe, setup["audio"], output_type="np").frames
    assert pt.shape == (1, 9, 3, 128, 128)  # (B, F, C, H, W)
    assert np_frames.shape == (1, 9, 128, 128, 3)  # (B, F, H, W, C)
    assert torch.equal(pt.permute(0, 1, 3, 4, 2), torch.from_numpy(np_frames))


def test_generator_list_of_one_equals_the_generator(setup):
    pipe = setup["pipe"]
    single = call(pipe, setup["audio"], output_type="latent").frames
    listed = call(pipe, setup["audio"], output_type="latent", generator=[torch.Generator().manual_seed(0)]).frames
    assert torch.equal(single, listed)
    with pytest.raises(ValueError, match="generator"):
        call(pipe, setup["audio"], generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(TypeError, match="generator"):
        call(pipe, setup["audio"], generator=0)


def test_callback_gets_timesteps_continuous_steps_and_the_stage(setup):
    pipe = setup["pipe"]
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, float(t), p.stage_index, p.num_timesteps))
        return kwargs

    call(pipe, setup["audio"], output_type="latent", num_inference_steps=3, callback_on_step_end=callback)
    stage_1 = [float(s) * 1000 for s in ltx2_sigmas(3)[:-1]]
    stage_2 = [s * 1000 for s in STAGE_2_DISTILLED_SIGMAS[:-1]]
    assert [s[0] for s in seen] == list(range(3 + len(stage_2)))
    assert [s[2] for s in seen] == [0] * 3 + [1] * len(stage_2)
    assert np.allclose([s[1] for s in seen], stage_1 + stage_2, rtol=0, atol=1e-3)
    assert {s[3] for s in seen} == {3 + len(stage_2)}


def test_flat_guidance_aliases_map_onto_multimodal_guidance(setup, monkeypatch):
    pipe = setup["pipe"]
    explicit = MultiModalGuidance(cfg_scale=2.5, stg_scale=0.5, rescale_scale=0.3, modality_scale=1.5, stg_blocks=[1])
    expected = call(pipe, setup["audio"], output_type="latent", video_guidance=explicit).frames
    # aliases start from the version defaults; the tiny model has 2 blocks, so its defaults name block 1
    defaults = VersionDefaults(2, MultiModalGuidance(stg_blocks=[1]), None)
    monkeypatch.setattr(pipe, "version_defaults", lambda: defaults)
    aliased = call(
        pipe, setup["audio"], output_type="latent", video_guidance=None, guidance_scale=2.5, stg_scale=0.5,
        rescale_scale=0.3, modality_scale=1.5,
    ).frames  # fmt: skip
    assert torch.equal(aliased, expected)
    assert not torch.equal(call(pipe, setup["audio"], output_type="latent", video_guidance=None).frames, expected)
    # alias agreeing with video_guidance: accepted, same frames; contradicting: refused
    same = call(pipe, setup["audio"], output_type="latent", video_guidance=explicit, guidance_scale=2.5).frames
    assert torch.equal(same, expected)
    with pytest.raises(ValueError, match="guidance_scale=4.0 contradicts video_guidance.cfg_scale"):
        call(pipe, setup["audio"], video_guidance=explicit, guidance_scale=4.0)
    with pytest.raises(ValueError, match="must be finite"):
        call(pipe, setup["audio"], video_guidance=None, guidance_scale=float("nan"))


def test_guidance_scale_below_one_is_refused_and_one_means_no_cfg(setup, monkeypatch):
    """diffusers reads `guidance_scale <= 1` as no CFG; through the alias (the reference's `cfg_scale`) 1.0 is no
    CFG and below 1 is refused, explaining; `MultiModalGuidance(cfg_scale=0.5)` keeps the reference's formula."""
    pipe = setup["pipe"]
    defaults = VersionDefaults(2, MultiModalGuidance(stg_blocks=[1]), None)  # the tiny model's 2 blocks
    monkeypatch.setattr(pipe, "version_defaults", lambda: defaults)
    forwards = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        for scale in (0.0, 0.5, -2):
            with pytest.raises(
                ValueError, match=rf"guidance_scale={scale!r} is below 1: .*guidance_scale=1\.0 for no CFG"
            ):
                call(pipe, setup["audio"], video_guidance=None, guidance_scale=scale)
        assert forwards == []
    finally:
        hook.remove()
    call(pipe, setup["audio"], output_type="latent", stage_2=False, video_guidance=None, guidance_scale=1.0)
    assert pipe.guidance_scale == 1.0 and pipe.do_classifier_free_guidance is False
    literal = MultiModalGuidance(cfg_scale=0.5, stg_blocks=[1])
    by_literal = call(pipe, setup["audio"], output_type="latent", stage_2=False, video_guidance=literal).frames
    assert pipe.guidance_scale == 0.5 and pipe.do_classifier_free_guidance is True
    # the alias repeating the explicit guidance is redundant, not contradictory: accepted, the same call
    repeated = call(
        pipe, setup["audio"], output_type="latent", stage_2=False, video_guidance=literal, guidance_scale=0.5
    ).frames
    assert torch.equal(repeated, by_literal)
    with pytest.raises(ValueError, match="guidance_scale=0.25 is below 1"):
        call(pipe, setup["audio"], video_guidance=literal, guidance_scale=0.25)


def test_docs_example_and_signature():
    doc = LTX2AudioToVideoPipeline.__call__.__doc__
    assert "Args:" in doc and ">>> out = pipe(" in doc and "Returns:" in doc
    parameters = inspect.signature(LTX2AudioToVideoPipeline.__call__).parameters
    for name in ("guidance_scale", "stg_scale", "modality_scale", "rescale_scale", "callback_on_step_end"):
        assert name in parameters and f"{name}" in doc
    missing = [p for p in parameters if p != "self" and p not in doc]
    assert not missing, missing


def test_vae_tiling_switches(setup):
    pipe = setup["pipe"]
    full = call(pipe, setup["audio"], output_type="pt").frames
    # ltx-core's tiling (its parity with the reference: test_tiled_decode_pipeline)
    pipe.enable_vae_tiling(tile_size_in_pixels=64, tile_overlap_in_pixels=32)
    try:
        assert pipe.vae_tiling.tile_size_in_pixels == 64 and not pipe.vae.use_tiling
        tiled = call(pipe, setup["audio"], output_type="pt").frames
    finally:
        pipe.disable_vae_tiling()
    assert pipe.vae_tiling is None and not pipe.vae.use_tiling
    assert tiled.shape == full.shape and torch.isfinite(tiled).all()
    assert torch.equal(call(pipe, setup["audio"], output_type="pt").frames, full)


def test_offload_order_frees_the_transformer_before_decoding():
    order = LTX2AudioToVideoPipeline.model_cpu_offload_seq.split("->")
    assert order.index("transformer") < order.index("vae") and order[-1] == "vae"
    assert order.index("latent_upsampler") < order.index("transformer")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(conditions=[("missing.png", 0, 1.0)]), "does not exist"),
        (dict(conditions=[(__file__, 0, 1.0)]), r"conditions\[0\].*cannot be read as an image"),
        (dict(audio="no-such-audio.wav"), "not a readable file"),
        (dict(generator=[1, 2]), "generator"),
    ],
)
def test_cheap_checks_run_before_any_model(setup, kwargs, match, monkeypatch):
    pipe = setup["pipe"]

    def forbidden(*args, **kw):
        raise AssertionError("a model ran before the checks")

    for name in ("transformer", "connectors", "audio_vae", "vae", "latent_upsampler"):
        monkeypatch.setattr(getattr(pipe, name), "forward", forbidden)
    monkeypatch.setattr(pipe.audio_vae, "encode_waveform", forbidden)
    monkeypatch.setattr(pipe.vae, "encode", forbidden)
    with pytest.raises((ValueError, TypeError), match=match):
        call(pipe, kwargs.pop("audio", setup["audio"]), **kwargs)


def test_condition_image_objects_pass_the_checks(setup):
    pipe = setup["pipe"]
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    out = call(pipe, setup["audio"], output_type="latent", conditions=[LTX2ImageCondition(image, 0, 1.0)])
    assert torch.isfinite(out.frames).all()


def test_pipeline_callback_objects(setup):
    from diffusers.callbacks import PipelineCallback

    class Record(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            seen.append((step_index, pipeline.stage_index, tuple(callback_kwargs)))
            return callback_kwargs

    seen = []
    call(setup["pipe"], setup["audio"], output_type="latent", callback_on_step_end=Record())
    assert [s[0] for s in seen] == list(range(len(seen))) and seen[-1][1] == 1 and seen[0][2] == ("latents",)


@pytest.mark.parametrize("cls", [LTX2AudioToVideoPipeline, LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline])
def test_every_pipeline_documents_and_exposes_its_arguments(cls):
    """Args naming every parameter, an example whose keywords are parameters and that loads with `dtype=` (diffusers
    0.42 deprecates `torch_dtype=` with a FutureWarning); the image pipeline's `**kwargs` expose its sibling's
    arguments to introspection."""
    doc = cls.__call__.__doc__
    parameters = inspect.signature(cls.__call__).parameters
    assert "Args:" in doc and ">>> out = pipe(" in doc and "Returns:" in doc
    assert not [p for p in parameters if p != "self" and p not in doc]
    assert set(re.findall(r"\.\.\.\s+(\w+)=", doc)) <= set(parameters)
    assert "dtype=torch.bfloat16" in doc and "torch_dtype" not in doc
    assert "kwargs" not in parameters
    sibling = inspect.signature(LTX2AudioVideoPipeline.__call__).parameters
    if cls is LTX2ImageToAudioVideoPipeline:
        assert list(parameters)[:4] == ["self", "image", "prompt", "image_strength"]
        assert set(parameters) == set(sibling) | {"image", "image_strength"}
