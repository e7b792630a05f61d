"""`sigmas=` and the registered scheduler on the audio-to-video pipeline: the table runs through `pipe.scheduler`
(its options honoured), a scheduler that cannot run LTX-2's Euler loop is refused before any model runs."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from test_pipeline import call
from test_pipeline import setup as pipeline_setup  # noqa: F401  (module fixture reused)

from ltx2_diffusers.schedules import (
    DISTILLED_SIGMAS,
    STAGE_2_DISTILLED_SIGMAS,
    flow_match_scheduler_config,
    ltx2_sigmas,
)


@pytest.fixture
def pipe(pipeline_setup):  # noqa: F811
    pipe = pipeline_setup["pipe"]
    scheduler = pipe.scheduler
    yield pipe
    pipe.scheduler = scheduler


def test_sigmas_equal_to_the_default_table_give_the_same_video(pipe, pipeline_setup):  # noqa: F811
    audio = pipeline_setup["audio"]
    default = call(pipe, audio, output_type="latent").frames
    assert torch.equal(call(pipe, audio, output_type="latent", sigmas=ltx2_sigmas(2).tolist()).frames, default)
    assert torch.equal(
        call(pipe, audio, output_type="latent", sigmas=ltx2_sigmas(2)[:-1], num_inference_steps=None).frames, default
    )
    other = call(pipe, audio, output_type="latent", sigmas=list(DISTILLED_SIGMAS), num_inference_steps=None)
    assert not torch.equal(other.frames, default)
    with pytest.raises(ValueError, match="num_inference_steps=2 but sigmas holds 8 steps"):
        call(pipe, audio, sigmas=list(DISTILLED_SIGMAS))
    with pytest.raises(ValueError, match="decrease strictly"):
        call(pipe, audio, sigmas=[0.5, 0.9, 0.0], num_inference_steps=None)


def test_the_registered_schedulers_options_are_used(pipe, pipeline_setup):  # noqa: F811
    """A user's FlowMatchEulerDiscreteScheduler (static shift 3) shifts the table: the same video as the default
    scheduler given the shifted table; every step's callback timestep is the scheduler's."""
    audio = pipeline_setup["audio"]
    shift = 3.0
    table = ltx2_sigmas(2)[:-1]
    shifted = (shift * table / (1 + (shift - 1) * table)).tolist()
    expected = call(pipe, audio, output_type="latent", stage_2=False, sigmas=shifted, num_inference_steps=None)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(**{**flow_match_scheduler_config(), "shift": shift})
    seen = []

    def callback(p, i, t, kwargs):
        seen.append(float(t))
        return {}

    ours = call(pipe, audio, output_type="latent", stage_2=False, callback_on_step_end=callback)
    assert (ours.frames - expected.frames).abs().max().item() <= 1e-6
    assert seen == pytest.approx([s * 1000 for s in shifted], abs=1e-3)


def test_an_unsupported_scheduler_is_refused_by_name_before_any_model(pipe, pipeline_setup, monkeypatch):  # noqa: F811
    def forbidden(*args, **kwargs):
        raise AssertionError("a model ran before the checks")

    monkeypatch.setattr(pipe.transformer, "forward", forbidden)
    monkeypatch.setattr(pipe.audio_vae, "encode_waveform", forbidden)
    pipe.scheduler = EulerDiscreteScheduler()
    with pytest.raises(ValueError, match="EulerDiscreteScheduler is not supported"):
        call(pipe, pipeline_setup["audio"])
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    with pytest.raises(ValueError, match="stochastic_sampling"):
        call(pipe, pipeline_setup["audio"])


@pytest.mark.parametrize(
    "options", [{"shift": 3.0}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}], ids=str
)
def test_stage_2_runs_the_distilled_table_verbatim_whatever_the_users_scheduler(pipe, pipeline_setup, options):  # noqa: F811
    """The user's scheduler options shape stage 1 (their choice); stage 2 runs STAGE_2_DISTILLED_SIGMAS as they are,
    and the registered scheduler is left as stage 1 set it."""
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(**{**flow_match_scheduler_config(), **options})
    stage_sigmas = []
    denoise = pipe.denoise

    def spy(video, audio, sigmas, *args, **kwargs):
        stage_sigmas.append(sigmas.clone())
        return denoise(video, audio, sigmas, *args, **kwargs)

    pipe.denoise = spy
    try:
        call(pipe, pipeline_setup["audio"], output_type="latent", num_inference_steps=4)
    finally:
        del pipe.denoise
    stage_1, stage_2 = stage_sigmas
    assert torch.equal(stage_2, torch.tensor(STAGE_2_DISTILLED_SIGMAS, dtype=torch.float32))
    reference = FlowMatchEulerDiscreteScheduler(**{**flow_match_scheduler_config(), **options})
    reference.set_timesteps(sigmas=ltx2_sigmas(4)[:-1].tolist())
    assert torch.equal(stage_1, reference.sigmas) and not torch.equal(stage_1, ltx2_sigmas(4))
    assert torch.equal(pipe.scheduler.sigmas, stage_1)
