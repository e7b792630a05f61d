"""Guidance math and pass selection, bit-exact against ltx-core / ltx-pipelines."""

import dataclasses
import itertools

import pytest
import torch
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams
from ltx_core.guidance.perturbations import PerturbationType
from ltx_core.types import LatentState
from ltx_pipelines.utils.constants import LTX_2_3_HQ_PARAMS, LTX_2_3_PARAMS
from ltx_pipelines.utils.helpers import multi_modal_guider_denoising_func

from ltx2_diffusers.guidance import PASS_NAMES, MultiModalGuidance, combine_guidance, guidance_passes


FIELDS = ("cfg_scale", "stg_scale", "rescale_scale", "modality_scale", "stg_blocks", "skip_step")


def to_ref(guidance: MultiModalGuidance) -> MultiModalGuiderParams:
    return MultiModalGuiderParams(**{name: getattr(guidance, name) for name in FIELDS})


def fields_of(params) -> dict:
    return {name: getattr(params, name) for name in FIELDS}


def predictions(dtype, shape=(1, 96, 128), seed=0):
    """A conditional prediction and three nearby pass predictions, like a real model's."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(shape, generator=g) * 1.3 + 0.2
    others = [cond + 0.3 * torch.randn(shape, generator=g) for _ in range(3)]
    return [t.to(dtype) for t in (cond, *others)]


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def test_defaults_are_ltx_2_3_video_guidance():
    assert fields_of(MultiModalGuidance()) == fields_of(LTX_2_3_PARAMS.video_guider_params)


def test_disabled_is_reference_default_params():
    assert fields_of(MultiModalGuidance.disabled()) == fields_of(MultiModalGuiderParams())


def test_values_the_reference_accepts():
    hq_audio = LTX_2_3_HQ_PARAMS.audio_guider_params
    g = MultiModalGuidance(**fields_of(hq_audio))
    assert fields_of(g) == fields_of(hq_audio)
    g = MultiModalGuidance(rescale_scale=1.5, cfg_scale=-2, stg_blocks=None, skip_step=3)
    assert (g.rescale_scale, g.cfg_scale, g.stg_blocks, g.skip_step) == (1.5, -2.0, None, 3)
    assert MultiModalGuidance(stg_blocks=(3, 5)).stg_blocks == [3, 5]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"skip_step": -1}, ValueError, "skip_step"),
        ({"skip_step": 1.5}, TypeError, "skip_step"),
        ({"skip_step": True}, TypeError, "skip_step"),
        ({"cfg_scale": float("nan")}, ValueError, "cfg_scale"),
        ({"stg_scale": float("inf")}, ValueError, "stg_scale"),
        ({"rescale_scale": "0.7"}, TypeError, "rescale_scale"),
        ({"modality_scale": None}, TypeError, "modality_scale"),
        ({"cfg_scale": True}, TypeError, "cfg_scale"),
        ({"stg_blocks": 28}, TypeError, "stg_blocks"),
        ({"stg_blocks": "28"}, TypeError, "stg_blocks"),
        ({"stg_blocks": [28.0]}, TypeError, "stg_blocks"),
        ({"stg_blocks": [-1]}, ValueError, "stg_blocks"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        MultiModalGuidance(**kwargs)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MultiModalGuidance().cfg_scale = 2.0


@pytest.mark.parametrize("value", [1.0, 1 + 1e-12, 1 + 1e-6, 0.0, 1e-12, -1.0, 3.0, 7.0])
def test_needs_matches_reference(value):
    ours = MultiModalGuidance(cfg_scale=value, stg_scale=value, modality_scale=value)
    ref = MultiModalGuider(to_ref(ours))
    assert ours.needs_negative == ref.do_unconditional_generation()
    assert ours.needs_perturbed == ref.do_perturbed_generation()
    assert ours.needs_isolated == ref.do_isolated_modality_generation()


def test_should_skip_step_matches_reference():
    checked = 0
    for skip_step in range(5):
        ours = MultiModalGuidance(skip_step=skip_step)
        ref = MultiModalGuider(to_ref(ours))
        for step in range(20):
            assert ours.should_skip_step(step) == ref.should_skip_step(step), (skip_step, step)
            checked += ours.should_skip_step(step)
    assert checked > 0
    with pytest.raises(ValueError, match="step_index"):
        MultiModalGuidance(skip_step=1).should_skip_step(-1)


# ---------------------------------------------------------------------------------------------------------------
# Combination

GRID = list(itertools.product([1.0, 3.0], [0.0, 1.0], [1.0, 3.0], [0.0, 0.7]))
EXTRA = [(7.0, 1.0, 3.0, 0.7), (3.0, 0.0, 3.0, 0.45), (7.0, 0.0, 3.0, 1.0), (2.5, 0.5, 1.5, 1.3)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize(("cfg", "stg", "modality", "rescale"), GRID + EXTRA)
def test_combine_matches_reference(cfg, stg, modality, rescale, dtype):
    guidance = MultiModalGuidance(cfg_scale=cfg, stg_scale=stg, modality_scale=modality, rescale_scale=rescale)
    ref = MultiModalGuider(to_ref(guidance))
    cond, uncond, perturbed, isolated = predictions(dtype, seed=int(cfg * 100 + stg * 10 + modality + rescale))

    # Only the needed passes given; the reference gets 0.0 for the others, as its pipeline does.
    given = {
        "uncond": uncond if guidance.needs_negative else None,
        "perturbed": perturbed if guidance.needs_perturbed else None,
        "isolated": isolated if guidance.needs_isolated else None,
    }
    ours = combine_guidance(cond, **given, guidance=guidance)
    expected = ref.calculate(cond, *(0.0 if t is None else t for t in given.values()))
    assert ours.dtype == dtype
    assert torch.equal(ours, expected)

    # All passes given (the other modality needed them): the reference uses them all.
    ours = combine_guidance(cond, uncond, perturbed, isolated, guidance=guidance)
    assert torch.equal(ours, ref.calculate(cond, uncond, perturbed, isolated))

    if (cfg, stg, modality) == (1.0, 0.0, 1.0):
        assert torch.equal(combine_guidance(cond, guidance=guidance), cond if rescale == 0 else expected)
    else:
        assert not torch.equal(ours, cond)


def test_combine_rescale_uses_unbiased_whole_tensor_std():
    guidance = MultiModalGuidance(cfg_scale=3.0, stg_scale=0.0, modality_scale=1.0, rescale_scale=1.0)
    cond, uncond, _, _ = predictions(torch.float64, shape=(2, 40, 16))
    out = combine_guidance(cond, uncond, guidance=guidance)
    torch.testing.assert_close(out.std(), cond.std(), rtol=1e-12, atol=0)
    assert not torch.allclose(out.std(dim=-1), cond.std(dim=-1))  # not per-token


def test_combine_requires_needed_passes():
    cond, uncond, perturbed, isolated = predictions(torch.bfloat16)
    guidance = MultiModalGuidance()
    with pytest.raises(ValueError, match="'uncond'"):
        combine_guidance(cond, None, perturbed, isolated, guidance=guidance)
    with pytest.raises(ValueError, match="'perturbed'"):
        combine_guidance(cond, uncond, None, isolated, guidance=guidance)
    with pytest.raises(ValueError, match="'isolated'"):
        combine_guidance(cond, uncond, perturbed, guidance=guidance)


# ---------------------------------------------------------------------------------------------------------------
# Pass selection, checked by running the reference's per-step denoising function on a recording fake transformer


class RecordingTransformer:
    """Stands in for ltx-core's X0Model: names each call's pass and returns fixed per-(step, pass) outputs."""

    def __init__(self, neg_video_context):
        self.neg_video_context = neg_video_context
        self.step = None
        self.calls = []
        self.outputs = {}

    def pass_name(self, video, perturbations):
        if perturbations is None:
            return "uncond" if video.context is self.neg_video_context else "cond"
        types = {p.type for config in perturbations.perturbations for p in config.perturbations}
        if types == {PerturbationType.SKIP_A2V_CROSS_ATTN, PerturbationType.SKIP_V2A_CROSS_ATTN}:
            return "isolated"
        assert types <= {PerturbationType.SKIP_VIDEO_SELF_ATTN, PerturbationType.SKIP_AUDIO_SELF_ATTN}
        return "perturbed"

    def __call__(self, video, audio, perturbations):
        name = self.pass_name(video, perturbations)
        self.calls.append(name)
        key = (self.step, name)
        if key not in self.outputs:
            seed = 1000 * self.step + PASS_NAMES.index(name)
            _, v, _, _ = predictions(torch.bfloat16, shape=(1, 12, 128), seed=seed)
            _, a, _, _ = predictions(torch.bfloat16, shape=(1, 5, 128), seed=seed + 500)
            self.outputs[key] = (v, a)
        return self.outputs[key]


def latent_state(tokens, channels):
    latent = torch.zeros(1, tokens, channels, dtype=torch.bfloat16)
    return LatentState(
        latent=latent,
        denoise_mask=torch.ones(1, tokens, 1),
        positions=torch.zeros(1, 3, tokens),
        clean_latent=latent.clone(),
    )


AUDIO_DEFAULTS = MultiModalGuidance(**fields_of(LTX_2_3_PARAMS.audio_guider_params))
AUDIO_CASES = {
    "none": None,
    "audio_defaults": AUDIO_DEFAULTS,
    "audio_skip1": dataclasses.replace(AUDIO_DEFAULTS, skip_step=1),
    "audio_stg_only_skip2": MultiModalGuidance(
        cfg_scale=1.0, stg_scale=1.0, rescale_scale=0.0, modality_scale=1.0, stg_blocks=[3], skip_step=2
    ),
}
VIDEO_GRID = [
    MultiModalGuidance(cfg_scale=c, stg_scale=s, modality_scale=m, rescale_scale=0.7, skip_step=k)
    for c, s, m, k in itertools.product([1.0, 3.0], [0.0, 1.0], [1.0, 3.0], [0, 2])
]
NUM_STEPS = 7


@pytest.mark.parametrize("audio_case", list(AUDIO_CASES))
def test_passes_and_step_output_match_reference_denoising_func(audio_case):
    audio = AUDIO_CASES[audio_case]
    audio_ours = MultiModalGuidance.disabled() if audio is None else audio
    sigmas = torch.linspace(1.0, 0.0, NUM_STEPS + 1)
    video_state, audio_state = latent_state(12, 128), latent_state(5, 128)
    pos_v, neg_v, pos_a, neg_a = (torch.randn(1, 4, 8) for _ in range(4))
    seen = set()

    for video in VIDEO_GRID:
        transformer = RecordingTransformer(neg_v)
        step_fn = multi_modal_guider_denoising_func(
            video_guider=MultiModalGuider(to_ref(video), negative_context=neg_v),
            audio_guider=MultiModalGuider(to_ref(audio_ours), negative_context=neg_a),
            v_context=pos_v,
            a_context=pos_a,
            transformer=transformer,
        )
        last_v = last_a = None
        for step in range(NUM_STEPS):
            transformer.step, transformer.calls = step, []
            ref_v, ref_a = step_fn(video_state, audio_state, sigmas, step)

            passes = guidance_passes(video, audio, step_index=step)
            assert passes == tuple(transformer.calls), (video, step)
            seen.add(passes)

            outs = {name: transformer.outputs[(step, name)] for name in passes}
            guided = []
            for i, (guidance, last) in enumerate(((video, last_v), (audio_ours, last_a))):
                if guidance.should_skip_step(step):
                    guided.append(last)
                    continue
                per_pass = {name: outs[name][i] if name in outs else None for name in PASS_NAMES}
                guided.append(combine_guidance(*per_pass.values(), guidance=guidance))
            last_v, last_a = guided
            assert torch.equal(last_v, ref_v) and torch.equal(last_a, ref_a), (video, step)

    assert PASS_NAMES in seen
    if audio is None:
        assert ("cond",) in seen and len(seen) == 8
    if audio is not None and audio.skip_step > 0:
        assert () in seen  # both modalities skipped a step: no forward at all


def test_guidance_passes_orders_and_skips():
    video = MultiModalGuidance(skip_step=1)
    assert guidance_passes(video, step_index=0) == PASS_NAMES
    # A video-only skip step still runs the passes (the neutral audio guider never skips), as in the reference.
    assert guidance_passes(video, step_index=1) == PASS_NAMES
    assert guidance_passes(video, MultiModalGuidance(skip_step=1), step_index=1) == ()
    assert guidance_passes(MultiModalGuidance.disabled(), step_index=3) == ("cond",)
    only_iso = MultiModalGuidance(cfg_scale=1.0, stg_scale=0.0)
    assert guidance_passes(only_iso, step_index=0) == ("cond", "isolated")
    with pytest.raises(ValueError, match="step_index"):
        guidance_passes(video, step_index=-1)
