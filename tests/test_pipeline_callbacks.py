"""Step callbacks of the LTX-2 pipelines: what a callback returns is checked when it returns it, its arguments are
checked before any model, an interrupt stops the call where it is (no further stage), and diffusers' call
properties (`guidance_scale`, `do_classifier_free_guidance`, `current_timestep`, `num_timesteps`) describe it."""

import numpy as np
import pytest
import soundfile as sf
import torch
from converted_folder import converted_folder
from family_call import family_pipes, tiny_call_args

from ltx2_diffusers import LTX2AudioVideoPipeline, MultiModalGuidance
from ltx2_diffusers.pipelines import ltx2_stages as stages


GUIDANCE = MultiModalGuidance(cfg_scale=2.5, stg_blocks=[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("callbacks")
    folder = converted_folder(root, 31)
    rate = 16000
    sf.write(root / "a.wav", np.sin(np.arange(rate) / rate * 2 * np.pi * 220).astype(np.float32) * 0.3, rate)
    pipes = family_pipes(folder)
    return dict(av=pipes["av"], a2v=pipes["a2v"], audio=str(root / "a.wav"))


def call(pipe, setup, **kwargs):
    args = tiny_call_args(pipe, GUIDANCE, steps=3, audio=setup["audio"])
    args.update(kwargs)
    return pipe(**args)


@pytest.fixture
def forwards(setup, monkeypatch):
    """Counts transformer forwards (both pipelines share the transformer)."""
    transformer = setup["av"].transformer
    count = {"n": 0}
    forward = transformer.forward

    def counting(*args, **kwargs):
        count["n"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(transformer, "forward", counting)
    return count


# ------------------------------------------------------------------------------------------------ callback outputs
def _nan(name):
    return lambda p, i, t, kw: {name: kw[name] * float("nan")}


@pytest.mark.parametrize(
    ("pipe_name", "callback", "inputs", "error", "match"),
    [
        ("av", _nan("latents"), ["latents"], ValueError, "callback_on_step_end's latents holds NaN"),
        ("av", _nan("audio_latents"), ["audio_latents"], ValueError, "callback_on_step_end's audio_latents holds"),
        ("a2v", _nan("latents"), ["latents"], ValueError, "callback_on_step_end's latents holds NaN"),
        (
            "av",
            lambda p, i, t, kw: {"latents": torch.zeros(1, 128, 2, 1, 1)},
            ["latents"],
            ValueError,
            r"callback_on_step_end's latents has shape \(1, 128, 2, 1, 1\); .* \(1, 2, 128\)",
        ),
        (
            "av",
            lambda p, i, t, kw: {"latents": torch.zeros(1, 7, 128)},
            ["latents"],
            ValueError,
            r"callback_on_step_end's latents has shape \(1, 7, 128\)",
        ),
        (
            "av",
            lambda p, i, t, kw: {"latents": kw["latents"].double()},
            ["latents"],
            ValueError,
            "callback_on_step_end's latents has dtype torch.float64; .* torch.float32",
        ),
        (
            "av",
            lambda p, i, t, kw: {"latents": kw["latents"] + 1e30},
            ["latents"],
            ValueError,
            "callback_on_step_end's latents holds values of magnitude",
        ),
        (
            "a2v",
            lambda p, i, t, kw: {"audio_latents": torch.zeros(1, 9, 128)},
            ["latents"],
            ValueError,
            "callback_on_step_end returned 'audio_latents', which this pipeline does not take back",
        ),
        ("av", lambda p, i, t, kw: {"latents": 1.0}, ["latents"], TypeError, "latents must be a torch.Tensor"),
        ("av", lambda p, i, t, kw: [kw], ["latents"], TypeError, "must return a dict of tensors or None"),
    ],
)
def test_callback_outputs_are_refused_when_returned(setup, forwards, pipe_name, callback, inputs, error, match):
    with pytest.raises(error, match=match):
        call(setup[pipe_name], setup, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs)
    assert forwards["n"] == 1  # at the first step's callback, not deep in a later forward


def test_callback_outputs_that_keep_the_contract_are_used(setup):
    pipe = setup["av"]
    base = call(pipe, setup, stage_2=False)

    def zero_last(p, i, t, kw):
        return {"latents": torch.zeros_like(kw["latents"])} if i == p.num_timesteps - 1 else None

    zeroed = call(pipe, setup, stage_2=False, callback_on_step_end=zero_last)
    assert torch.equal(zeroed.frames, torch.zeros_like(base.frames))
    assert torch.equal(zeroed.audio, base.audio)


# ------------------------------------------------------------------------------------------------ callback arguments
def test_tensor_inputs_none_means_no_tensors(setup):
    seen = []
    call(
        setup["av"], setup, stage_2=False, callback_on_step_end=lambda p, i, t, kw: seen.append(kw),
        callback_on_step_end_tensor_inputs=None,
    )  # fmt: skip
    assert seen == [{}, {}, {}]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs="latents"),
            TypeError,
            r"callback_on_step_end_tensor_inputs must be a list of names \(e.g. \['latents'\]\) or None, got 'latents'",
        ),
        (dict(callback_on_step_end=5), TypeError, "callback_on_step_end must be callable"),
        (
            dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["x" * 100] * 10**6),
            ValueError,
            "callback_on_step_end_tensor_inputs has",
        ),
    ],
)
def test_callback_arguments_are_refused_before_any_model(setup, forwards, kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        call(setup["av"], setup, **kwargs)
    assert forwards["n"] == 0
    assert len(str(caught.value)) < 500  # a user's list is shown cut, never megabytes


# ------------------------------------------------------------------------------------------------ interrupt
@pytest.mark.parametrize("pipe_name", ["av", "a2v"])
def test_an_interrupt_in_stage_1_returns_the_latents_after_that_step(setup, pipe_name, caplog):
    pipe = setup[pipe_name]
    seen = {}

    def stop_after_step_1(p, i, t, kw):
        seen.setdefault("stages", []).append(p.stage_index)
        if i == 1:
            seen.update({k: v.clone() for k, v in kw.items()})
            p._interrupt = True
        return kw

    out = call(
        pipe, setup, callback_on_step_end=stop_after_step_1,
        callback_on_step_end_tensor_inputs=list(pipe._callback_tensor_inputs),
    )  # fmt: skip
    assert seen["stages"] == [0, 0]  # no further step, no stage 2
    assert "interrupted in stage 1: stage 2 does not run" in caplog.text
    size = stages.video_latent_size(9, 32, 32)  # the stage-1 (half) resolution
    assert out.frames.shape == (1, 128, *size)
    assert torch.equal(out.frames, stages.unpatchify_video(seen["latents"], size))
    if pipe_name == "av":
        assert torch.equal(out.audio, seen["audio_latents"])
    # decoded: the stage-1 frames at half the height and width
    frames = call(pipe, setup, output_type="pt", callback_on_step_end=stop_after_step_1).frames
    assert frames.shape == (1, 9, 3, 32, 32) and torch.isfinite(frames).all()


def test_an_interrupt_in_stage_2_stops_there(setup):
    pipe = setup["av"]
    steps = []

    def stop_in_stage_2(p, i, t, kw):
        steps.append((p.stage_index, i))
        if p.stage_index == 1:
            p._interrupt = True
        return kw

    out = call(pipe, setup, callback_on_step_end=stop_in_stage_2)
    assert steps == [(0, 0), (0, 1), (0, 2), (1, 3)]
    assert out.frames.shape == (1, 128, *stages.video_latent_size(9, 64, 64))


# ------------------------------------------------------------------------------------------------ properties
def test_call_properties_inside_a_callback(setup):
    pipe = LTX2AudioVideoPipeline.from_pipe(setup["av"])
    pipe.set_progress_bar_config(disable=True)
    assert pipe.num_timesteps is None and pipe.current_timestep is None and pipe.guidance_scale is None
    assert pipe.do_classifier_free_guidance is False
    seen = []

    def record(p, i, t, kw):
        seen.append((p.guidance_scale, p.do_classifier_free_guidance, p.current_timestep, t, p.num_timesteps))
        return kw

    call(pipe, setup, callback_on_step_end=record)
    # stage 1 guided, stage 2 unguided (diffusers' "no CFG": 1.0, False); after the call, the call's stage 1
    assert [s[:2] for s in seen] == [(2.5, True)] * 3 + [(1.0, False)] * 3
    assert (pipe.guidance_scale, pipe.do_classifier_free_guidance) == (2.5, True)
    assert all(torch.equal(torch.as_tensor(s[2]), torch.as_tensor(s[3])) for s in seen)
    assert {s[4] for s in seen} == {6}  # 3 stage-1 steps + the 3 of stage 2
    assert pipe.current_timestep is None  # outside the loops again

    seen.clear()
    disabled = MultiModalGuidance.disabled()
    call(pipe, setup, stage_2=False, video_guidance=disabled, audio_guidance=disabled, callback_on_step_end=record)
    assert [s[:2] for s in seen] == [(1.0, False)] * 3
    seen.clear()
    call(pipe, setup, stage_2=False, video_guidance=GUIDANCE, audio_guidance=disabled, callback_on_step_end=record)
    assert [s[:2] for s in seen] == [(2.5, True)] * 3
    seen.clear()  # audio CFG alone is CFG too (diffusers' LTX2Pipeline: guidance_scale or audio_guidance_scale > 1)
    call(pipe, setup, stage_2=False, video_guidance=disabled, audio_guidance=GUIDANCE, callback_on_step_end=record)
    assert [s[:2] for s in seen] == [(1.0, True)] * 3


@pytest.mark.parametrize("pipe_name", ["av", "a2v"])
def test_diffusers_callback_properties_in_each_stage(setup, pipe_name):
    """What a diffusers callback reads: `guidance_scale` / `do_classifier_free_guidance` of the stage it runs in,
    `num_timesteps`, `interrupt`, `attention_kwargs`, `_callback_tensor_inputs` (the names it may ask for)."""
    pipe = setup[pipe_name]
    seen = {}

    def record(p, i, t, kw):
        seen.setdefault(p.stage_index, []).append(
            (p.guidance_scale, p.do_classifier_free_guidance, p.num_timesteps, p.interrupt, p.attention_kwargs)
        )
        assert set(kw) == set(p._callback_tensor_inputs)
        return kw

    call(
        pipe, setup, callback_on_step_end=record, attention_kwargs={"scale": 1.0},
        callback_on_step_end_tensor_inputs=list(pipe._callback_tensor_inputs),
    )  # fmt: skip
    assert seen[0] == [(2.5, True, 6, False, {"scale": 1.0})] * 3
    assert seen[1] == [(1.0, False, 6, False, {"scale": 1.0})] * 3
    assert pipe._callback_tensor_inputs == (["latents", "audio_latents"] if pipe_name == "av" else ["latents"])


def test_current_timestep_is_none_after_a_failed_call(setup):
    pipe = LTX2AudioVideoPipeline.from_pipe(setup["av"])
    pipe.set_progress_bar_config(disable=True)
    seen = []

    def fail(p, i, t, kw):
        seen.append(p.current_timestep)
        raise RuntimeError("the user's callback fails")

    with pytest.raises(RuntimeError, match="the user's callback fails"):
        call(pipe, setup, callback_on_step_end=fail)
    assert seen and seen[0] is not None
    assert pipe.current_timestep is None


def test_the_users_progress_bar_description_is_kept_before_the_stage(setup):
    """`set_progress_bar_config(desc=...)` is the user's: each stage's bar reads "<desc>: stage N"."""
    import io

    pipe = LTX2AudioVideoPipeline.from_pipe(setup["av"])
    shown = io.StringIO()
    pipe.set_progress_bar_config(desc="my job", file=shown, disable=False)
    call(pipe, setup)
    text = shown.getvalue()
    assert "my job: stage 1" in text and "my job: stage 2" in text
    pipe.set_progress_bar_config(file=io.StringIO(), disable=False)  # no desc of the user's: the stage alone
    call(pipe, setup)
    assert "stage 1" in pipe._progress_bar_config["file"].getvalue()
