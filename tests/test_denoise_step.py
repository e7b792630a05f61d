"""The two-modality guided step (pipelines/ltx2_denoise.py) against ltx-pipelines' guider denoising function and
Euler loop on a tiny random transformer (fp32, CPU); the pipelines' loop is this step."""

import contextlib
import dataclasses
import types

import pytest
import torch
from factories import build_checkpoint, load_reference
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams
from ltx_core.guidance.perturbations import (
    BatchedPerturbationConfig,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)
from ltx_core.model.transformer.model import X0Model
from ltx_core.types import LatentState as RefLatentState
from ltx_pipelines.utils.helpers import (
    modality_from_latent_state,
    multi_modal_guider_denoising_func,
    simple_denoising_func,
)
from ltx_pipelines.utils.samplers import euler_denoising_loop

from ltx2_diffusers import LTX2AudioVideoTransformer, MultiModalGuidance
from ltx2_diffusers.models.rope import audio_coords, video_coords
from ltx2_diffusers.pipelines import ltx2_stages as stages
from ltx2_diffusers.pipelines.ltx2_base import LTX2PipelineBase
from ltx2_diffusers.pipelines.ltx2_denoise import (
    PassX0,
    PromptContexts,
    StepGuidance,
    advance,
    guided_x0,
    has_uniform_timesteps,
    predict_pass_x0,
)


TOL = 1e-5
FRAMES, HEIGHT, WIDTH, AUDIO_FRAMES, TEXT, NEG_TEXT = 2, 2, 3, 5, 6, 4
NUM_LAYERS = 3


@pytest.fixture(scope="module", params=["2.3", "2.0"])
def models(request, tmp_path_factory):
    version = request.param
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    build_checkpoint(
        path,
        version,
        seed=11,
        components=("transformer",),
        num_layers=NUM_LAYERS,
        av_ca_timestep_scale_multiplier=1000.0 if version == "2.3" else 1.0,
    )
    ours = LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32)
    return ours, X0Model(load_reference(path, "transformer", dtype=torch.float32))


def make_states(model, *, seed=0, audio_frozen=False, conditioned_frames=1):
    """Our states and the reference's, sharing tensors: random latents and clean latents, the first latent frame
    conditioned (mask 0.3), audio fully denoised or frozen (mask 0, latent == clean)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    tokens = FRAMES * HEIGHT * WIDTH
    video_latent = torch.randn(1, tokens, c.in_channels, generator=g)
    video_clean = torch.randn(1, tokens, c.in_channels, generator=g)
    video_mask = torch.ones(1, tokens, 1)
    video_mask[:, : conditioned_frames * HEIGHT * WIDTH] = 0.3
    audio_clean = torch.randn(1, AUDIO_FRAMES, c.audio_in_channels, generator=g)
    if audio_frozen:
        audio_latent, audio_mask = audio_clean.clone(), torch.zeros(1, AUDIO_FRAMES, 1)
    else:
        audio_latent, audio_mask = (
            torch.randn(1, AUDIO_FRAMES, c.audio_in_channels, generator=g),
            torch.ones(1, AUDIO_FRAMES, 1),
        )
    vc = video_coords(1, FRAMES, HEIGHT, WIDTH, fps=24.0, dtype=torch.float32)
    ac = audio_coords(1, AUDIO_FRAMES)
    ours = (
        stages.LatentState(video_latent, video_clean, video_mask, vc, tokens),
        stages.LatentState(audio_latent, audio_clean, audio_mask, ac, AUDIO_FRAMES),
    )
    reference = (
        RefLatentState(latent=video_latent, denoise_mask=video_mask, positions=vc, clean_latent=video_clean),
        RefLatentState(latent=audio_latent, denoise_mask=audio_mask, positions=ac, clean_latent=audio_clean),
    )
    return ours, reference


def make_contexts(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    text_dim = c.caption_channels if c.use_prompt_embeddings else None
    vd, ad = text_dim or c.cross_attention_dim, text_dim or c.audio_cross_attention_dim
    return PromptContexts(
        video=torch.randn(1, TEXT, vd, generator=g),
        audio=torch.randn(1, TEXT, ad, generator=g),
        negative_video=torch.randn(1, TEXT, vd, generator=g),
        negative_audio=torch.randn(1, TEXT, ad, generator=g),
    )


def ref_params(guidance: MultiModalGuidance | None) -> MultiModalGuiderParams:
    if guidance is None:
        return MultiModalGuiderParams()
    return MultiModalGuiderParams(**{f.name: getattr(guidance, f.name) for f in dataclasses.fields(guidance)})


def reference_denoise_fn(reference, contexts, guidance: StepGuidance):
    if guidance.unguided:
        return simple_denoising_func(contexts.video, contexts.audio, reference)
    return multi_modal_guider_denoising_func(
        MultiModalGuider(ref_params(guidance.video), contexts.negative_video),
        MultiModalGuider(ref_params(guidance.audio), contexts.negative_audio),
        contexts.video,
        contexts.audio,
        reference,
    )


def max_diff(a, b):
    return (a - b).abs().max().item()


TI2VID = StepGuidance(
    video=MultiModalGuidance(cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[1]),
    audio=MultiModalGuidance(cfg_scale=7.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[2]),
)
STEP_CASES = {
    "ti2vid_defaults": TI2VID,
    "audio_cfg_only": StepGuidance(
        video=MultiModalGuidance.disabled(),
        audio=MultiModalGuidance(cfg_scale=7.0, stg_scale=0.0, rescale_scale=0.0, modality_scale=1.0),
    ),
    "video_stg_all_blocks_audio_none": StepGuidance(
        video=MultiModalGuidance(cfg_scale=1.0, stg_scale=2.0, rescale_scale=0.5, modality_scale=2.0, stg_blocks=None)
    ),
    "audio_stg_isolated_video_none": StepGuidance(
        audio=MultiModalGuidance(
            cfg_scale=2.0, stg_scale=0.5, rescale_scale=0.0, modality_scale=2.5, stg_blocks=[0, 2]
        )
    ),
    "unguided": StepGuidance(),
}


@pytest.mark.parametrize("batch_size", [None, 1, 3])
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_guided_step_matches_reference(models, case, batch_size):
    ours, reference = models
    guidance = STEP_CASES[case]
    (video, audio), (ref_video, ref_audio) = make_states(ours)
    contexts = make_contexts(ours)
    sigmas = torch.tensor([0.8, 0.55, 0.0])
    with torch.no_grad():
        x0 = guided_x0(ours, video, audio, sigmas[0], 0, contexts, guidance, batch_size=batch_size)
        ref = reference_denoise_fn(reference, contexts, guidance)(ref_video, ref_audio, sigmas, 0)
    assert max_diff(x0.video, ref[0]) <= TOL
    assert max_diff(x0.audio, ref[1]) <= TOL


def test_negative_context_of_another_length_runs_alone(models):
    ours, reference = models
    (video, audio), (ref_video, ref_audio) = make_states(ours, seed=4)
    contexts = make_contexts(ours)
    contexts = dataclasses.replace(contexts, negative_video=contexts.negative_video[:, :NEG_TEXT])
    contexts = dataclasses.replace(contexts, negative_audio=contexts.negative_audio[:, :NEG_TEXT])
    sigmas = torch.tensor([0.6, 0.0])
    with torch.no_grad():
        x0 = guided_x0(ours, video, audio, sigmas[0], 0, contexts, TI2VID)
        ref = reference_denoise_fn(reference, contexts, TI2VID)(ref_video, ref_audio, sigmas, 0)
    assert max_diff(x0.video, ref[0]) <= TOL
    assert max_diff(x0.audio, ref[1]) <= TOL


def run_loop(model, video, audio, sigmas, contexts, guidance, batch_size=None):
    previous = None
    for i in range(len(sigmas) - 1):
        previous = guided_x0(model, video, audio, sigmas[i], i, contexts, guidance, previous, batch_size=batch_size)
        video = advance(video, previous.video, sigmas[i], sigmas[i + 1])
        audio = advance(audio, previous.audio, sigmas[i], sigmas[i + 1])
    return video, audio


LOOP_CASES = {
    "ti2vid_skip1": (
        StepGuidance(dataclasses.replace(TI2VID.video, skip_step=1), dataclasses.replace(TI2VID.audio, skip_step=1)),
        False,
    ),
    "ti2vid": (TI2VID, False),
    "a2v_frozen_audio_video_skip2": (StepGuidance(dataclasses.replace(TI2VID.video, skip_step=2)), True),
    "unguided": (StepGuidance(), False),
}


@pytest.mark.parametrize("case", list(LOOP_CASES))
def test_euler_loop_matches_reference(models, case):
    """Several steps through the reference's ``euler_denoising_loop`` (mask blend + Euler for both modalities);
    a frozen modality stays exactly where it was."""
    ours, reference = models
    guidance, audio_frozen = LOOP_CASES[case]
    (video, audio), (ref_video, ref_audio) = make_states(ours, seed=2, audio_frozen=audio_frozen)
    contexts = make_contexts(ours, seed=3)
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.0])
    with torch.no_grad():
        video_out, audio_out = run_loop(ours, video, audio, sigmas, contexts, guidance)
        ref_v, ref_a = euler_denoising_loop(
            sigmas, ref_video, ref_audio, EulerDiffusionStep(), reference_denoise_fn(reference, contexts, guidance)
        )
    assert max_diff(video_out.latent, ref_v.latent) <= TOL
    assert max_diff(audio_out.latent, ref_a.latent) <= TOL
    if audio_frozen:
        assert torch.equal(audio_out.latent, audio.latent)


def test_mixed_skip_with_two_denoised_modalities_is_refused(models):
    ours, _ = models
    (video, audio), _ = make_states(ours)
    guidance = StepGuidance(dataclasses.replace(TI2VID.video, skip_step=1), TI2VID.audio)
    previous = PassX0(video.latent, audio.latent)
    with pytest.raises(ValueError, match="skip_step"):
        guided_x0(ours, video, audio, torch.tensor(0.5), 1, make_contexts(ours), guidance, previous)


def test_missing_negative_context_is_refused(models):
    ours, _ = models
    (video, audio), _ = make_states(ours)
    contexts = dataclasses.replace(make_contexts(ours), negative_audio=None)
    with pytest.raises(ValueError, match="negative_audio"):
        predict_pass_x0(ours, video, audio, torch.tensor(0.5), ("cond", "uncond"), contexts, TI2VID)


# ---------------------------------------------------------------------------------------------------------------
# The pipelines' loop (LTX2PipelineBase.denoise) is this module's step: the same states, bit for bit; the STG
# pass's shared prefix (batched forwards outside reference_arithmetic) within TOL of the reference.


class _Denoiser:
    """Just what ``LTX2PipelineBase.denoise`` reads from self."""

    denoise = LTX2PipelineBase.denoise
    _step_callback = LTX2PipelineBase._step_callback
    transformer_acceleration = LTX2PipelineBase.transformer_acceleration
    _execution_device = torch.device("cpu")
    interrupt = False

    def __init__(self, transformer, reference_arithmetic):
        self.transformer = transformer
        self._reference_arithmetic = reference_arithmetic

    def progress_bar(self, total):
        return contextlib.nullcontext(types.SimpleNamespace(update=lambda: None))


A2V_VIDEO_CASES = {
    "a2v_defaults": MultiModalGuidance(),
    "a2v_skip1_all_blocks": MultiModalGuidance(stg_blocks=None, skip_step=1),
    "a2v_cfg_only": MultiModalGuidance(stg_scale=0.0, modality_scale=1.0, rescale_scale=0.0),
    "stage2_unguided": None,
}


@pytest.mark.parametrize("batch_size", [None, 1])
@pytest.mark.parametrize("case", list(A2V_VIDEO_CASES))
def test_pipeline_loop_is_the_step_and_keeps_frozen_audio(models, case, batch_size):
    """Audio-to-video's loop (video guidance only, audio frozen): under reference_arithmetic exactly the pure
    loop (no shared prefix); by default within TOL of it (the STG pass reuses the conditional pass's prefix)."""
    ours, _ = models
    video_guidance = A2V_VIDEO_CASES[case]
    if video_guidance is not None and video_guidance.stg_blocks is not None:
        video_guidance = dataclasses.replace(video_guidance, stg_blocks=[1])
    (video, audio), _ = make_states(ours, seed=5, audio_frozen=True)
    contexts = dataclasses.replace(make_contexts(ours, seed=6), negative_audio=None)
    sigmas = torch.tensor([1.0, 0.85, 0.6, 0.3, 0.0])
    guidance = StepGuidance(video_guidance)
    with torch.no_grad():
        exact = _Denoiser(ours, True).denoise(video, audio, sigmas, contexts, guidance, None, (), batch_size)
        shared = _Denoiser(ours, False).denoise(video, audio, sigmas, contexts, guidance, None, (), batch_size)
        expected = run_loop(ours, video, audio, sigmas, contexts, guidance, batch_size)
    assert max_diff(exact[0].latent, expected[0].latent) == 0.0
    assert exact[1] is audio and shared[1] is audio  # a frozen state is never stepped
    assert max_diff(shared[0].latent, expected[0].latent) <= TOL


@pytest.mark.parametrize("case", ["ti2vid_defaults", "video_stg_all_blocks_audio_none"])
def test_shared_prefix_step_matches_reference(models, case):
    ours, reference = models
    guidance = STEP_CASES[case]
    (video, audio), (ref_video, ref_audio) = make_states(ours, seed=12)
    contexts = make_contexts(ours, seed=13)
    sigmas = torch.tensor([0.7, 0.0])
    with torch.no_grad():
        x0 = guided_x0(ours, video, audio, sigmas[0], 0, contexts, guidance, share_prefix=True)
        ref = reference_denoise_fn(reference, contexts, guidance)(ref_video, ref_audio, sigmas, 0)
    assert max_diff(x0.video, ref[0]) <= TOL
    assert max_diff(x0.audio, ref[1]) <= TOL


def test_timestep_scale_multiplier_is_the_transformers(tmp_path):
    """Timesteps are scaled by the checkpoint's ``timestep_scale_multiplier`` (the reference model scales inside),
    not by a fixed 1000."""
    path = build_checkpoint(
        tmp_path / "m.safetensors", "2.3", seed=3, components=("transformer",), num_layers=NUM_LAYERS,
        timestep_scale_multiplier=400,
    )  # fmt: skip
    ours = LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32)
    assert ours.config.timestep_scale_multiplier == 400
    reference = X0Model(load_reference(path, "transformer", dtype=torch.float32))
    (video, audio), (ref_video, ref_audio) = make_states(ours, seed=14)
    contexts = make_contexts(ours, seed=15)
    sigmas = torch.tensor([0.6, 0.0])
    with torch.no_grad():
        x0 = guided_x0(ours, video, audio, sigmas[0], 0, contexts, TI2VID, batch_size=1)
        ref = reference_denoise_fn(reference, contexts, TI2VID)(ref_video, ref_audio, sigmas, 0)
    assert max_diff(x0.video, ref[0]) == 0.0 and max_diff(x0.audio, ref[1]) == 0.0


_REF_KIND = {
    "skip_video_self_attn": PerturbationType.SKIP_VIDEO_SELF_ATTN,
    "skip_audio_self_attn": PerturbationType.SKIP_AUDIO_SELF_ATTN,
    "skip_a2v_cross_attn": PerturbationType.SKIP_A2V_CROSS_ATTN,
    "skip_v2a_cross_attn": PerturbationType.SKIP_V2A_CROSS_ATTN,
}


@pytest.mark.parametrize("batch_size", [None, 1])
def test_every_pass_matches_the_reference_forward(models, batch_size):
    """Each pass's x0 of both modalities (before guidance) against one reference X0Model call built as the
    reference's guider step builds it: the pass's contexts and its PerturbationConfig."""
    ours, reference = models
    (video, audio), (ref_video, ref_audio) = make_states(ours, seed=8)
    contexts = make_contexts(ours, seed=9)
    sigma = torch.tensor(0.7)
    passes = TI2VID.passes(0)
    assert passes == ("cond", "uncond", "perturbed", "isolated")
    with torch.no_grad():
        x0 = predict_pass_x0(ours, video, audio, sigma, passes, contexts, TI2VID, batch_size=batch_size)
        for name in passes:
            video_ctx, audio_ctx = TI2VID.contexts(name, contexts)
            config = PerturbationConfig(
                [Perturbation(_REF_KIND[p.kind], p.blocks and list(p.blocks)) for p in TI2VID.perturbations(name)]
            )
            ref = reference(
                video=modality_from_latent_state(ref_video, video_ctx, sigma),
                audio=modality_from_latent_state(ref_audio, audio_ctx, sigma),
                perturbations=BatchedPerturbationConfig([config]),
            )
            assert max_diff(x0[name].video, ref[0]) <= TOL, name
            assert max_diff(x0[name].audio, ref[1]) <= TOL, name
            if batch_size == 1:
                assert max_diff(x0[name].video, ref[0]) == 0.0 and max_diff(x0[name].audio, ref[1]) == 0.0, name


# ---------------------------------------------------------------------------------------------------------------
# One timestep per item where a modality's tokens share it (outside reference_arithmetic): the AdaLN runs once per
# item and broadcasts; the reference computes it per token.


def test_uniform_timesteps_are_found_from_the_mask():
    video = stages.video_state((2, 2, 3), 4, 24.0, batch_size=2, dtype=torch.float32, device=torch.device("cpu"))
    assert has_uniform_timesteps(video)
    assert has_uniform_timesteps(stages.frozen_audio_state(torch.randn(1, 5, 8), torch.float32))
    assert has_uniform_timesteps(stages.replace(video, denoise_mask=torch.tensor([[[0.3]] * 12, [[1.0]] * 12])))
    conditioned = stages.condition_latent_frame(video, torch.randn(2, 4, 1, 2, 3), frame=1, strength=0.6)
    assert not has_uniform_timesteps(conditioned)
    keyframe = stages.append_keyframe(video, torch.randn(2, 4, 1, 2, 3), frame_index=8, strength=1.0, fps=24.0)
    assert not has_uniform_timesteps(keyframe)


@pytest.mark.parametrize("audio_frozen", [False, True])
@pytest.mark.parametrize("case", ["ti2vid_defaults", "audio_stg_isolated_video_none", "unguided"])
def test_per_item_timesteps_step_matches_reference(models, case, audio_frozen):
    ours, reference = models
    guidance = STEP_CASES[case]
    (video, audio), (ref_video, ref_audio) = make_states(
        ours, seed=16, audio_frozen=audio_frozen, conditioned_frames=0
    )
    assert has_uniform_timesteps(video) and has_uniform_timesteps(audio)
    contexts = make_contexts(ours, seed=17)
    sigmas = torch.tensor([0.65, 0.0])
    calls = []
    hook = ours.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append((kwargs["timestep"].shape, kwargs["audio_timestep"].shape)),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            x0 = guided_x0(ours, video, audio, sigmas[0], 0, contexts, guidance, per_item_timesteps=(True, True))
            ref = reference_denoise_fn(reference, contexts, guidance)(ref_video, ref_audio, sigmas, 0)
    finally:
        hook.remove()
    n = len(guidance.passes(0))
    assert calls == [(torch.Size([n]), torch.Size([n]))]
    assert max_diff(x0.video, ref[0]) <= TOL
    assert max_diff(x0.audio, ref[1]) <= TOL


@pytest.mark.parametrize("conditioned_frames", [0, 1])
@pytest.mark.parametrize("reference_arithmetic", [False, True])
def test_pipeline_loop_passes_per_item_timesteps_where_uniform(models, reference_arithmetic, conditioned_frames):
    """The loop hands the transformer one timestep per item for a uniform modality (here the frozen audio, and
    the video without a conditioned frame), per-token ones otherwise and always under reference_arithmetic."""
    ours, _ = models
    (video, audio), _ = make_states(ours, seed=18, audio_frozen=True, conditioned_frames=conditioned_frames)
    contexts = dataclasses.replace(make_contexts(ours, seed=19), negative_audio=None)
    shapes = []
    hook = ours.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append((kwargs["timestep"].ndim, kwargs["audio_timestep"].ndim)),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            _Denoiser(ours, reference_arithmetic).denoise(
                video, audio, torch.tensor([1.0, 0.7, 0.0]), contexts, StepGuidance(MultiModalGuidance(stg_blocks=[1]))
            )
    finally:
        hook.remove()
    video_ndim = 2 if reference_arithmetic or conditioned_frames else 1
    assert shapes == [(video_ndim, 2 if reference_arithmetic else 1)] * 2
