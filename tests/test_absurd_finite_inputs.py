"""Finite but absurd numbers (1e30, 3e38, 10**400, subnormals) given to the public API are refused before compute with
a ValueError / TypeError naming the argument, instead of NaN output or an OverflowError from deep inside; a value
just inside each bound (`validation`) still runs and gives finite output."""

import math

import numpy as np
import pytest
import torch
from converted_folder import converted_folder
from family_call import FAMILY_MODELS, family_call, family_pipes
from prompt_contexts import contexts
from test_transformer_diffusers_interop import forward_kwargs, randomize_, tiny_diffusers_config

from ltx2_diffusers import (
    LTX2AudioVideoTransformer,
    MultiModalGuidance,
    load_audio,
)
from ltx2_diffusers.audio.mel import log_mel_spectrogram, mel_filterbank, resample_waveform
from ltx2_diffusers.schedules import ltx2_sigmas
from ltx2_diffusers.validation import (
    MAX_CONTEXT_ABS,
    MAX_EMBEDDED_VALUE,
    MAX_LIMIT_OVERRIDE,
    MAX_LOG_MEL_ABS,
    MAX_NORMALISED_INPUT_ABS,
    MAX_WAVEFORM_ABS,
    check_all_bounded,
    check_bounded,
    check_latents,
)


HUGE = 10**400  # an int no float holds
GUIDANCE = MultiModalGuidance(stg_blocks=[1])
AUDIO = (0.3 * np.sin(np.linspace(0.0, 400.0, 16000))).astype(np.float32)[None].repeat(2, 0)  # 1 s at 16 kHz
LOUD = np.sign(AUDIO).astype(np.float64) * 1e39  # finite in float64, infinite in float32
EDGE = np.sign(AUDIO) * np.float32(MAX_WAVEFORM_ABS)  # exactly at the waveform bound
IMAGE = np.full((64, 64, 3), 128, dtype=np.uint8)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    return family_pipes(converted_folder(tmp_path_factory.mktemp("absurd"), 61))


def forbidden(*args, **kwargs):
    raise AssertionError("a model ran before the input was refused")


@pytest.fixture
def no_compute(pipes, monkeypatch):
    """Every model of the pipelines (they share them) raises if it runs."""
    for name in FAMILY_MODELS:
        monkeypatch.setattr(getattr(pipes["av"], name), "forward", forbidden)


@pytest.fixture
def no_layer_runs(pipes, monkeypatch):
    """The transformer, audio VAE and vocoder run their own checks, but none of their layers may run."""
    for name in ("transformer", "audio_vae", "vocoder"):
        for child in getattr(pipes["av"], name).children():
            monkeypatch.setattr(child, "forward", forbidden)


def call(pipe, **kwargs):
    return family_call(pipe, GUIDANCE, AUDIO, IMAGE, **kwargs)


def scaled_contexts(value, seed=0):
    """Tiny post-connector contexts with every value of magnitude `value` (random signs)."""
    return tuple(torch.sign(c) * value for c in contexts(seed, "2.3", tokens=16))


def embeds(pipe, value):
    """128 tokens of raw text-encoder features, every value of magnitude `value`."""
    width = 4 * pipe.connectors.config.caption_channels
    return torch.sign(torch.randn(1, 128, width, generator=torch.Generator().manual_seed(1))) * value


MASK = torch.ones(1, 128, dtype=torch.long)  # `embeds`' tokens, all attended


def finite(*tensors):
    return all(bool(torch.isfinite(torch.as_tensor(t)).all()) for t in tensors)


# --------------------------------------------------------------------------------------------------- pipelines
PIPELINE_CASES = [
    # post-connector contexts: 1e30 gave NaN frames
    ("prompt_contexts", lambda p: dict(prompt_contexts=scaled_contexts(1e30)), ValueError),
    ("prompt_contexts", lambda p: dict(prompt_contexts=scaled_contexts(-3e38)), ValueError),
    ("prompt_contexts", lambda p: dict(prompt_contexts=scaled_contexts(MAX_CONTEXT_ABS * 1.01)), ValueError),
    ("negative_prompt_contexts", lambda p: dict(negative_prompt_contexts=scaled_contexts(1e30, 1)), ValueError),
    # raw text-encoder features: above 3e17 the connectors' per-token RMS overflows and zeroes the prompt
    (
        "prompt_embeds",
        lambda p: dict(prompt_contexts=None, prompt_embeds=embeds(p, 1e30), prompt_attention_mask=MASK),
        ValueError,
    ),
    (
        "negative_prompt_embeds",
        lambda p: dict(
            negative_prompt_contexts=None, negative_prompt_embeds=embeds(p, 3e38), negative_prompt_attention_mask=MASK
        ),
        ValueError,
    ),
    # integers beyond float's range: an OverflowError before
    ("guidance_scale", lambda p: dict(video_guidance=None, guidance_scale=HUGE), ValueError),
    ("stg_scale", lambda p: dict(video_guidance=None, stg_scale=HUGE), ValueError),
    ("frame_rate", lambda p: dict(frame_rate=HUGE), ValueError),
    ("distilled_lora_scale", lambda p: dict(distilled_lora_scale=HUGE), ValueError),
    ("sigmas entry", lambda p: dict(num_inference_steps=None, sigmas=[HUGE, 0.0]), ValueError),
]


@pytest.mark.parametrize("kind", ["av", "a2v", "i2av"])
@pytest.mark.parametrize(("name", "kwargs", "error"), PIPELINE_CASES, ids=[c[0] for c in PIPELINE_CASES])
def test_pipelines_refuse_absurd_numbers_before_any_model(pipes, no_compute, kind, name, kwargs, error):
    pipe = pipes[kind]
    with pytest.raises(error) as caught:
        call(pipe, **kwargs(pipe))
    assert name in str(caught.value), str(caught.value)
    assert len(str(caught.value)) < 600


A2V_CASES = [
    ("audio_start_time", dict(audio_start_time=HUGE)),  # an OverflowError before
    ("start_time", dict(audio_start_time=1e308)),  # start * rate overflowed to inf: an OverflowError before
    ("max_num_frames", dict(num_frames=None, max_num_frames=HUGE)),  # (limit + 8) / fps overflowed
    ("max_num_frames", dict(num_frames=None, max_num_frames=MAX_LIMIT_OVERRIDE + 1)),
    ("`audio` array holds values of magnitude 1e+39", dict(audio=LOUD)),  # reported as infinite before
    ("`audio` array", dict(audio=torch.from_numpy(AUDIO) * 1e30)),  # clipped into a square wave before
]


@pytest.mark.parametrize(("name", "kwargs"), A2V_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(A2V_CASES)])
def test_audio_to_video_refuses_absurd_audio_numbers_before_any_model(pipes, no_compute, name, kwargs):
    with pytest.raises(ValueError) as caught:
        call(pipes["a2v"], **kwargs)
    assert name in str(caught.value), str(caught.value)
    assert len(str(caught.value)) < 600


def test_pipelines_run_just_inside_the_bounds(pipes):
    """Contexts at `MAX_CONTEXT_ABS`, raw features at `MAX_NORMALISED_INPUT_ABS` (above Gemma's ~1e5 massive
    activations), the largest override, durations beyond any stream and audio at `MAX_WAVEFORM_ABS`: finite."""
    av, a2v = pipes["av"], pipes["a2v"]
    out = call(av, prompt_contexts=scaled_contexts(MAX_CONTEXT_ABS), negative_prompt_contexts=scaled_contexts(-1e4, 1))
    assert finite(out.frames, out.audio)
    big = embeds(av, MAX_NORMALISED_INPUT_ABS)
    out = call(av, prompt_contexts=None, prompt_embeds=big, prompt_attention_mask=MASK, stage_2=False)
    assert finite(out.frames, out.audio)
    out = call(a2v, num_frames=None, max_num_frames=MAX_LIMIT_OVERRIDE, audio_max_duration=HUGE, stage_2=False)
    assert out.frames.shape[2] == 3 and finite(out.frames)  # 1 s at 24 fps: 17 frames, 3 latent frames
    out = call(a2v, audio=EDGE, audio_max_duration=1e308, stage_2=False)
    # kept as they are, as ltx-pipelines reads float samples beyond full scale (tests/test_a2v_heldout.py)
    assert finite(out.frames) and out.audio.abs().max() == MAX_WAVEFORM_ABS


# ------------------------------------------------------------------------------------------------- transformer
def transformer_call(transformer, **extra):
    kwargs = forward_kwargs(transformer, batch=1, **extra)
    with torch.no_grad():
        return transformer(**kwargs)


TRANSFORMER_CASES = [
    ("hidden_states", lambda k: dict(hidden_states=torch.full_like(k["hidden_states"], 1e30))),
    ("audio_hidden_states", lambda k: dict(audio_hidden_states=torch.full_like(k["audio_hidden_states"], -3e38))),
    ("encoder_hidden_states", lambda k: dict(encoder_hidden_states=k["encoder_hidden_states"].sign() * 1e30)),
    (
        "audio_encoder_hidden_states",
        lambda k: dict(audio_encoder_hidden_states=k["audio_encoder_hidden_states"] * 1e6),
    ),
    ("timestep", lambda k: dict(timestep=torch.full_like(k["timestep"], float("nan")))),
    ("timestep", lambda k: dict(timestep=HUGE)),
    ("audio_timestep", lambda k: dict(audio_timestep=1e30)),
    ("sigma", lambda k: dict(sigma=torch.full_like(k["sigma"], 3e38))),
    ("video_coords", lambda k: dict(video_coords=torch.full((1, 3, 12, 2), 3e38))),
    ("audio_coords", lambda k: dict(audio_coords=torch.full((1, 1, 5, 2), float("nan")))),
    ("fps", lambda k: dict(fps=HUGE)),
    ("fps", lambda k: dict(fps=1e-40)),
    ("num_frames", lambda k: dict(num_frames=10**6)),  # 6e6 tokens of coordinates were built first
    ("audio_num_frames", lambda k: dict(audio_num_frames=10**9)),
    ("encoder_attention_mask", lambda k: dict(encoder_attention_mask=torch.full((1, 7), 1e30))),
    ("audio_encoder_attention_mask", lambda k: dict(audio_encoder_attention_mask=torch.full((1, 1, 7), float("nan")))),
    (
        "perturbation_mask",
        lambda k: dict(spatio_temporal_guidance_blocks=[0], perturbation_mask=torch.full((1,), 1e30)),
    ),
    ("video_self_attention_mask", lambda k: dict(video_self_attention_mask=torch.full((1, 12, 12), float("nan")))),
    ('attention_kwargs["scale"]', lambda k: dict(attention_kwargs={"scale": 1e30})),  # NaN with an adapter before
    ('attention_kwargs["scale"]', lambda k: dict(attention_kwargs={"scale": HUGE})),
]


@pytest.mark.parametrize(
    ("name", "extra"), TRANSFORMER_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TRANSFORMER_CASES)]
)
def test_transformer_refuses_absurd_numbers_before_compute(pipes, no_layer_runs, name, extra):
    transformer = pipes["av"].transformer
    with pytest.raises((ValueError, TypeError)) as caught:
        transformer_call(transformer, **extra(forward_kwargs(transformer, batch=1)))
    assert name in str(caught.value), str(caught.value)


def test_transformer_runs_just_inside_the_bounds(pipes):
    transformer = pipes["av"].transformer
    base = forward_kwargs(transformer, batch=1)
    for extra in (
        dict(hidden_states=base["hidden_states"].sign() * MAX_NORMALISED_INPUT_ABS),
        dict(audio_encoder_hidden_states=base["audio_encoder_hidden_states"].sign() * MAX_CONTEXT_ABS),
        dict(timestep=MAX_EMBEDDED_VALUE, audio_sigma=torch.full((1,), -MAX_EMBEDDED_VALUE)),
        dict(encoder_attention_mask=torch.tensor([[0.0, 0.5, 1, 1, 1, 1, 1]])),
        dict(audio_encoder_attention_mask=torch.tensor([[[-math.inf, -1e4, 0, 0, 0, 0, 0]]])),
        dict(spatio_temporal_guidance_blocks=[0], perturbation_mask=torch.zeros(1)),
        dict(fps=240.0),
    ):
        assert finite(*transformer_call(transformer, **extra)), extra


def test_transformer_lora_scale_bounded_before_the_adapters_are_scaled():
    """`attention_kwargs["scale"]` multiplies every PEFT adapter: 1e30 gave NaN outputs; the bound (10) runs."""
    from peft import LoraConfig

    model = randomize_(LTX2AudioVideoTransformer(**tiny_diffusers_config("2.3"))).eval()
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for scale in (1e30, float("nan"), HUGE):
        with pytest.raises(ValueError, match=r'attention_kwargs\["scale"\]'):
            transformer_call(model, attention_kwargs={"scale": scale})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert finite(*transformer_call(model, attention_kwargs={"scale": 10.0}))


# ------------------------------------------------------------------------------------ audio VAE and vocoder
MEL = torch.sin(torch.arange(2 * 9 * 64, dtype=torch.float32)).reshape(1, 2, 9, 64)
WAVE = torch.from_numpy(AUDIO)
AUDIO_MODEL_CASES = [
    ("`x`", lambda vae, voc: vae.encode(MEL * 3e38)),  # NaN before
    ("`x`", lambda vae, voc: vae.encode(MEL * 1e30)),
    ("`z`", lambda vae, voc: vae.decode(torch.full((1, 8, 3, 16), -3e38))),  # NaN before
    ("`tokens`", lambda vae, voc: vae.decode_tokens(torch.full((1, 3, 128), 1e30))),
    ("`waveform`", lambda vae, voc: vae.encode_waveform(WAVE * 3e38, 16000)),  # NaN before
    ("`waveform`", lambda vae, voc: vae.waveform_to_mel(WAVE * 1e30, 16000)),
    ("`mel`", lambda vae, voc: voc(MEL * 3e38)),  # NaN before
    ("`mel`", lambda vae, voc: voc(MEL * (MAX_LOG_MEL_ABS * 1.01))),
]


@pytest.mark.parametrize(
    ("name", "run"), AUDIO_MODEL_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(AUDIO_MODEL_CASES)]
)
def test_audio_models_refuse_absurd_values_before_compute(pipes, no_layer_runs, name, run):
    with pytest.raises(ValueError) as caught, torch.no_grad():
        run(pipes["av"].audio_vae, pipes["av"].vocoder)
    assert name in str(caught.value), str(caught.value)


F8 = torch.float8_e4m3fn
FLOAT8_CASES = [
    ("hidden_states", lambda p: transformer_call(p.transformer, hidden_states=forward_kwargs(p.transformer, batch=1)[
        "hidden_states"].to(F8))),
    ("`x`", lambda p: p.audio_vae.encode(MEL.to(F8))),
    ("`waveform`", lambda p: p.audio_vae.encode_waveform(WAVE.to(F8), 16000)),
    ("`mel`", lambda p: p.vocoder(MEL.to(F8))),
    ("latents", lambda p: check_latents("latents", torch.zeros(1, 2).to(F8))),
]  # fmt: skip


@pytest.mark.parametrize(("name", "run"), FLOAT8_CASES, ids=[c[0] for c in FLOAT8_CASES])
def test_float8_inputs_are_refused_naming_the_argument(pipes, no_layer_runs, name, run):
    """float8 stores weights; no operation computes in it: a TypeError naming the input, not torch's `aminmax`
    NotImplementedError or a failure inside a layer."""
    with pytest.raises(TypeError, match="16 bits or more") as caught, torch.no_grad():
        run(pipes["av"])
    assert name in str(caught.value), str(caught.value)


def test_audio_models_run_just_inside_the_bounds(pipes):
    vae, vocoder = pipes["av"].audio_vae, pipes["av"].vocoder
    with torch.no_grad():
        assert finite(vae.encode(MEL.sign() * MAX_LOG_MEL_ABS).latent_dist.parameters)
        assert finite(vae.decode(torch.full((1, 8, 3, 16), -MAX_NORMALISED_INPUT_ABS)).sample)
        assert finite(vae.encode_waveform(WAVE.sign() * MAX_WAVEFORM_ABS, 16000))
        assert finite(vocoder(MEL.sign() * MAX_LOG_MEL_ABS))


# ------------------------------------------------------------------------------------- audio and mel helpers
HELPER_CASES = [
    ("start_time", ValueError, lambda: load_audio(AUDIO, start_time=1e308, sample_rate=16000)),  # OverflowError before
    ("start_time", ValueError, lambda: load_audio(AUDIO, start_time=HUGE, sample_rate=16000)),
    ("`source` array holds values of magnitude 1e+39", ValueError, lambda: load_audio(LOUD, sample_rate=16000)),
    ("`waveform`", ValueError, lambda: log_mel_spectrogram(WAVE[None] * 3e38, 16000)),  # NaN before
    ("hop_length", ValueError, lambda: log_mel_spectrogram(WAVE[None], 16000, hop_length=HUGE)),  # torch error before
    ("n_fft", TypeError, lambda: log_mel_spectrogram(WAVE[None], 16000, n_fft=1e30)),  # torch error before
    ("n_mels", ValueError, lambda: log_mel_spectrogram(WAVE[None], 16000, n_mels=HUGE)),
    ("rolloff", ValueError, lambda: resample_waveform(WAVE, 44100, 16000, rolloff=1e-40)),  # OverflowError before
    ("lowpass_filter_width", ValueError, lambda: resample_waveform(WAVE, 44100, 16000, lowpass_filter_width=HUGE)),
    ("f_max", ValueError, lambda: mel_filterbank(513, 0.0, 1e-40, 64, 16000)),  # NaN before
    ("f_max", ValueError, lambda: mel_filterbank(513, 0.0, HUGE, 64, 16000)),  # OverflowError before
    ("n_freqs", ValueError, lambda: mel_filterbank(10**9, 0.0, 8000.0, 64, 16000)),  # out of memory before
    ("sample_rate", ValueError, lambda: mel_filterbank(513, 0.0, 8000.0, 64, 10**30)),
    ("max_shift", ValueError, lambda: ltx2_sigmas(8, max_shift=HUGE)),
]


@pytest.mark.parametrize(
    ("name", "error", "run"), HELPER_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(HELPER_CASES)]
)
def test_audio_helpers_refuse_absurd_numbers(name, error, run):
    with pytest.raises(error) as caught:
        run()
    assert name in str(caught.value), str(caught.value)


def test_audio_helpers_run_just_inside_the_bounds():
    waveform, _ = load_audio(EDGE, max_duration=HUGE, sample_rate=16000)
    assert waveform.shape == (2, 16000) and waveform.abs().max() == MAX_WAVEFORM_ABS  # kept, as the reference
    edge = torch.from_numpy(EDGE)[None]
    assert finite(log_mel_spectrogram(edge, 16000, n_fft=64, hop_length=64, n_mels=33))
    assert finite(resample_waveform(WAVE, 44100, 16000, lowpass_filter_width=256, rolloff=0.5))
    assert finite(mel_filterbank(513, 8000.0 - 65, 8000.0, 64, 16000))  # 1 Hz per band
    assert finite(mel_filterbank(2**12, 0.0, 8000.0, 2**12, 16000))  # 2**24 elements


def test_check_bounded_reads_each_device_back_once(monkeypatch):
    """Tensors on one device, of any dtype and under any bound, are reduced and read back together: one `tolist()`
    (one device sync) per device."""
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or original(self))
    tensors = [("a", torch.zeros(3)), ("b", torch.ones(2, 2)), ("c", torch.zeros(4, dtype=torch.float64)), ("d", None)]
    check_bounded(tensors, 1.0, "test")
    assert reads == [(3, 2)]
    reads.clear()
    masks = [("m", torch.ones(2, 3, dtype=torch.int64))]
    check_all_bounded([(tensors, 1.0, "test", None), (masks, 1.0, "a mask", 0.0)])
    assert reads == [(4, 2)]
    with pytest.raises(ValueError, match=r"^b holds values of magnitude 2, above the bound of 1 \(test\)$"):
        check_bounded([("a", torch.zeros(3)), ("b", torch.full((2,), -2.0))], 1.0, "test")
    with pytest.raises(ValueError, match=r"^m holds values in \[-0\.5, 1\], outside \[0, 1\] \(a mask\)$"):
        check_bounded([("m", torch.tensor([-0.5, 1.0]))], 1.0, "a mask", low=0.0)
    check_bounded([("bias", torch.tensor([-math.inf, 0.0]))], 0.0, "bias", low=-math.inf)
    with pytest.raises(ValueError, match=r"^bias holds values in \[-inf, 1\], outside \[-inf, 0\] \(bias\)$"):
        check_bounded([("bias", torch.tensor([-math.inf, 1.0]))], 0.0, "bias", low=-math.inf)  # +1 named, not -inf
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^bias holds NaN or infinite values$"):
            check_bounded([("bias", torch.tensor([-math.inf, bad]))], 0.0, "bias", low=-math.inf)
