"""`sigmas=` and the registered scheduler on the audio-to-video pipeline: the table runs through `pipe.scheduler`
(its options honoured), a scheduler that cannot run LTX-2's Euler loop is refused before any model runs."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from test_pipeline import call
from test_pipeline import setup as pipeline_setup  # noqa: F401  (module fixture reused)

from ltx2_diffusers.schedules import DISTILLED_SIGMAS, flow_match_scheduler_config, ltx2_sigmas


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
