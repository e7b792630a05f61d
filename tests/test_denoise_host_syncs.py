"""The denoising loop queues its later steps without waiting for the device: from a stage's second step on, neither
the transformer's forward nor the Euler step reads a tensor's value on the host (`item`, `tolist`, `bool`, a
copy to the host) or builds a tensor from Python values (on a GPU a copy from host memory, which waits for the
queued work). The loop checks the latents itself instead: after a stage's first step and at its end, naming the
stage and the step (weights holding NaN make the call fail there, before any output)."""

import numpy as np
import pytest
import torch
from converted_folder import converted_folder
from factories import transformer_parity_inputs
from family_call import family_call, family_pipes, tiny_call_args
from host_reads import HostReads

from ltx2_diffusers import LTX2AudioVideoTransformer, MultiModalGuidance
from ltx2_diffusers.models import rope
from ltx2_diffusers.pipelines import ltx2_base


GUIDANCE = MultiModalGuidance(cfg_scale=2.5, stg_blocks=[1], modality_scale=2.0, rescale_scale=0.5)

AUDIO = (0.3 * np.sin(np.linspace(0.0, 400.0, 16000))).astype(np.float32)[None].repeat(2, 0)  # 1 s at 16 kHz
IMAGE = np.full((64, 64, 3), 128, dtype=np.uint8)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    return family_pipes(converted_folder(tmp_path_factory.mktemp("syncs"), 41))


@pytest.fixture(scope="module")
def pipe(pipes):
    return pipes["av"]


def _call(pipe, steps=4, **kwargs):
    args = tiny_call_args(pipe, GUIDANCE, steps=steps)
    args.update(kwargs)
    return pipe(**args)


@pytest.mark.parametrize("name", ["av", "a2v", "i2av"])
def test_later_steps_read_nothing_back(pipes, monkeypatch, name):
    """Steps 2.. of both stages (the batched guided forward with STG and isolated items; audio-to-video's frozen
    audio, image-to-audio-video's conditioned frame) make no syncing call, the
    Euler steps take their sigmas as host numbers, and the first step's forward still checks its inputs' values
    (one `_check_values` per stage)."""
    reads, steps_seen, checks, host_sigmas = HostReads(), [], [], []
    real_guided, real_advance = ltx2_base.guided_x0, ltx2_base.advance
    real_check = LTX2AudioVideoTransformer._check_values

    def guided(*args, **kwargs):
        steps_seen.append(args[4])
        if args[4] == 0:
            return real_guided(*args, **kwargs)
        with reads:
            return real_guided(*args, **kwargs)

    def advance(state, denoised, sigma, sigma_next):
        host_sigmas.append(type(sigma) is float and type(sigma_next) is float)  # no device tensor to read back
        return real_advance(state, denoised, sigma, sigma_next)

    def check_values(tensors):
        checks.append(len(steps_seen))
        return real_check(tensors)

    monkeypatch.setattr(ltx2_base, "guided_x0", guided)
    monkeypatch.setattr(ltx2_base, "advance", advance)
    monkeypatch.setattr(LTX2AudioVideoTransformer, "_check_values", staticmethod(check_values))
    family_call(pipes[name], GUIDANCE, AUDIO, IMAGE, num_inference_steps=4)
    assert steps_seen == [0, 1, 2, 3, 0, 1, 2]  # stage 1: 4 steps; stage 2: the 3 distilled sigmas
    assert reads.calls == []
    assert host_sigmas and all(host_sigmas)  # each denoised modality at each step
    assert checks == [1, 5]  # the first forward of each stage


def test_rope_frequencies_reuse_their_device_copy():
    """The frequency grid is copied to a device once, not at every forward."""
    coords = torch.rand(1, 3, 8, 2)
    kwargs = dict(dim=24, max_pos=(20, 2048, 2048), num_heads=2)
    first = rope.rope_frequencies(coords, **kwargs)
    with HostReads(device_moves=True) as reads:
        second = rope.rope_frequencies(coords, **kwargs)
    assert reads.calls == []
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    grid = rope._device_frequency_grid(10000.0, 3, 24, True, torch.device("cpu"))
    assert grid is rope._device_frequency_grid(10000.0, 3, 24, True, torch.device("cpu"))
    assert torch.equal(grid, rope._frequency_grid(10000.0, 3, 24, True))


def test_nan_weights_refused_after_the_first_step(pipe):
    """A transformer whose weights hold NaN: the call fails after stage 1's first step, naming it and the cause
    (before: at the second forward, blaming its `hidden_states`)."""
    weight = pipe.transformer.proj_out.bias
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0] = float("nan")
        with pytest.raises(ValueError, match=r"the video latent after step 1 of stage 1 holds NaN .*weights holding"):
            _call(pipe, steps=4)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


@pytest.mark.parametrize(("stage", "bad_forward", "match"), [(1, 2, "after step 4 of stage 1"), (2, 6, "of stage 2")])
def test_late_non_finite_prediction_refused_at_the_stage_end(pipe, monkeypatch, stage, bad_forward, match):
    """A prediction that turns non-finite after the first step (forwards are not checked any more) is refused at the
    end of its stage: stage 1's latents never reach stage 2, stage 2's never reach the output."""
    transformer = pipe.transformer
    forward, count = transformer.forward, {"n": 0}

    def sometimes_nan(*args, **kwargs):
        count["n"] += 1
        video, audio = forward(*args, **kwargs)
        return (video * float("nan"), audio) if count["n"] == bad_forward else (video, audio)

    monkeypatch.setattr(transformer, "forward", sometimes_nan)
    stage_2 = []
    real_denoise = type(pipe).denoise

    def denoise(self, *args, **kwargs):
        stage_2.append(kwargs.get("stage"))
        return real_denoise(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "denoise", denoise)
    with pytest.raises(ValueError, match=match):
        _call(pipe, steps=4)
    assert stage_2 == ([0] if stage == 1 else [0, 1])


def test_an_interrupted_stage_checks_its_latents_before_they_are_decoded(pipe, monkeypatch):
    """A prediction turning non-finite, then an interrupt: the latents of the steps run are checked at the stop."""
    transformer = pipe.transformer
    forward, count = transformer.forward, {"n": 0}

    def nan_at_second(*args, **kwargs):
        count["n"] += 1
        video, audio = forward(*args, **kwargs)
        return (video * float("nan"), audio) if count["n"] == 2 else (video, audio)

    def interrupt(p, i, t, kw):
        if i == 2:
            p._interrupt = True
        return {}

    monkeypatch.setattr(transformer, "forward", nan_at_second)
    with pytest.raises(ValueError, match="after step 3 of stage 1"):
        _call(pipe, steps=6, callback_on_step_end=interrupt)


def test_only_the_loops_own_forwards_skip_their_checks(pipe, monkeypatch):
    """The skip holds for the loop's thread and context only, and leaves nothing on the user's module: a direct call
    from another thread during a later step (whose forwards skip the scan) still refuses NaN inputs."""
    import threading

    transformer = pipe.transformer
    before = set(vars(transformer))
    _call(pipe, steps=2)
    assert set(vars(transformer)) == before
    x = transformer_parity_inputs(transformer.config)
    sigma = x["sigma"].expand(1) * 1000
    nan_call = dict(
        hidden_states=x["video"] * float("nan"), audio_hidden_states=x["audio"], encoder_hidden_states=x["ctx"],
        audio_encoder_hidden_states=x["actx"], timestep=x["vt"] * 1000, audio_timestep=x["at"] * 1000, sigma=sigma,
        audio_sigma=sigma, video_coords=x["vc"], audio_coords=x["ac"], use_cross_timestep=True, return_dict=False,
    )  # fmt: skip
    forward, count, outcome = transformer.forward, {"n": 0}, []

    def direct():
        try:
            with torch.no_grad():
                transformer(**nan_call)
            outcome.append(None)
        except ValueError as error:
            outcome.append(str(error))

    def spy(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 3:  # stage 1, step 3: this thread's forwards skip their scan now
            thread = threading.Thread(target=direct)
            thread.start()
            thread.join()
        return forward(*args, **kwargs)

    monkeypatch.setattr(transformer, "forward", spy)
    _call(pipe, steps=4)
    assert len(outcome) == 1 and outcome[0] is not None and "hidden_states holds NaN" in outcome[0]


def test_device_constants_are_plain_tensors_keyed_by_type():
    """Built under inference mode, a cached constant still serves a later call with autograd; values of another
    type get their own tensor; under a fake-tensor mode nothing is cached."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ltx2_diffusers.models.device_cache import device_constant

    cpu = torch.device("cpu")
    with torch.inference_mode():
        device_constant((0.25, 0.75, 0.125), cpu, torch.float32)
    x = torch.ones(3, requires_grad=True)
    (x * device_constant((0.25, 0.75, 0.125), cpu, torch.float32)).sum().backward()
    assert x.grad.tolist() == [0.25, 0.75, 0.125]
    assert device_constant((1, 0), cpu).dtype == torch.int64
    assert device_constant((1.0, 0.0), cpu).dtype == torch.float32
    device_constant((1.0, 0.0, 2.0), cpu, torch.int64)  # cached by an eager call first
    with FakeTensorMode():
        fake = device_constant((3, 1, 4), cpu)
        in_fake_mode = torch.ones(3, dtype=torch.int64) * device_constant((1.0, 0.0, 2.0), cpu, torch.int64)
    real = device_constant((3, 1, 4), cpu)
    assert type(real) is torch.Tensor and real is not fake and real.tolist() == [3, 1, 4]
    assert type(in_fake_mode) is not torch.Tensor  # a fake result: no real cached tensor leaked into the fake mode
    assert torch.signbit(device_constant((-0.0,), cpu, torch.float32)).item()  # -0.0 is not 0.0's entry
    assert not torch.signbit(device_constant((0.0,), cpu, torch.float32)).item()
