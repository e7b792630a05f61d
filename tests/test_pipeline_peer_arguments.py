"""diffusers' `LTX2Pipeline` argument names in our three pipelines: the ones with the same meaning are taken
(`num_videos_per_prompt=1`, `attention_kwargs`, `decode_timestep`, `decode_noise_scale`), the others refused with a
ValueError naming what to pass instead (not Python's TypeError), before any model; `output_type="latent"` outputs
decode with `pipe.decode` / `pipe.decode_audio` as documented."""

import numpy as np
import pytest
import soundfile as sf
import torch
from converted_folder import converted_folder
from factories import build_checkpoint
from family_call import family_pipes, tiny_call_args

from ltx2_diffusers import (
    LTX2AudioVideoPipeline,
    MultiModalGuidance,
)


GUIDANCE = MultiModalGuidance(cfg_scale=2.5, stg_blocks=[1])
IMAGE = np.full((64, 64, 3), 128, dtype=np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer")
    folder = converted_folder(root, 31)
    rate = 16000
    sf.write(root / "a.wav", np.sin(np.arange(rate) / rate * 2 * np.pi * 220).astype(np.float32) * 0.3, rate)
    return dict(family_pipes(folder), audio=str(root / "a.wav"), root=root)


def call(setup, name, **kwargs):
    pipe = setup[name]
    args = tiny_call_args(pipe, GUIDANCE, steps=2, audio=setup["audio"])
    if name == "i2av":
        args["image"] = IMAGE
    args.update(kwargs)
    return pipe(**args)


@pytest.fixture
def forwards(setup, monkeypatch):
    transformer = setup["av"].transformer
    seen = []
    forward = transformer.forward

    def spying(*args, **kwargs):
        seen.append(kwargs.get("attention_kwargs"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(transformer, "forward", spying)
    return seen


# ------------------------------------------------------------------------------------------------ refused names
@pytest.mark.parametrize("name", ["av", "a2v", "i2av"])
@pytest.mark.parametrize(
    ("argument", "value", "match"),
    [
        ("timesteps", [999, 500], "timesteps is an argument of diffusers' LTX2Pipeline .* pass sigmas="),
        ("spatio_temporal_guidance_blocks", [1], r"video_guidance=MultiModalGuidance\(stg_blocks="),
        ("audio_guidance_scale", 7.0, "audio_guidance_scale is an argument of diffusers' LTX2Pipeline"),
        ("audio_latents", torch.zeros(1, 8, 4, 16), "audio_latents is an argument of diffusers' LTX2Pipeline"),
        ("enable_prompt_enhancement", True, "pass enhance_prompt=True"),
    ],
)
def test_peer_only_arguments_are_refused_with_what_to_use(setup, forwards, name, argument, value, match):
    with pytest.raises(ValueError, match=match) as caught:
        call(setup, name, **{argument: value})
    assert type(setup[name]).__name__ in str(caught.value)
    assert forwards == []


def test_the_audio_arguments_say_why_per_pipeline(setup):
    with pytest.raises(ValueError, match="audio_guidance=MultiModalGuidance"):
        call(setup, "av", audio_guidance_scale=7.0)
    with pytest.raises(ValueError, match="the audio is given, not generated"):
        call(setup, "a2v", audio_guidance_scale=7.0)
    with pytest.raises(ValueError, match="the audio latents come from audio="):
        call(setup, "a2v", audio_latents=torch.zeros(1))


def test_an_unknown_name_is_still_pythons_type_error(setup):
    with pytest.raises(TypeError, match="guidance_scal"):
        call(setup, "av", guidance_scal=2.0)


# ------------------------------------------------------------------------------------------------ taken names
@pytest.mark.parametrize("name", ["av", "a2v", "i2av"])
def test_num_videos_per_prompt_one_is_taken_more_refused(setup, forwards, name):
    base = call(setup, name, stage_2=False)
    same = call(setup, name, stage_2=False, num_videos_per_prompt=1)
    assert torch.equal(same.frames, base.frames) and torch.equal(same.audio, base.audio)
    forwards.clear()
    for value in (2, 0, True, "1"):
        with pytest.raises(ValueError, match="num_videos_per_prompt must be 1, got .* one video per call"):
            call(setup, name, num_videos_per_prompt=value)
    assert forwards == []


@pytest.mark.parametrize("name", ["av", "a2v", "i2av"])
def test_attention_kwargs_reach_every_forward_and_the_property(setup, forwards, name):
    seen = []
    call(
        setup, name, attention_kwargs={"scale": 0.5},
        callback_on_step_end=lambda p, i, t, kw: seen.append(p.attention_kwargs),
    )  # fmt: skip
    assert forwards and all(kwargs == {"scale": 0.5} for kwargs in forwards)
    assert seen and all(kwargs == {"scale": 0.5} for kwargs in seen)
    forwards.clear()
    with pytest.raises(ValueError, match=r"attention_kwargs has \['dropout'\]: .* reads only 'scale'"):
        call(setup, name, attention_kwargs={"scale": 1.0, "dropout": 0.1})
    with pytest.raises(TypeError, match="attention_kwargs must be a dict or None, got list"):
        call(setup, name, attention_kwargs=[("scale", 1.0)])
    with pytest.raises(ValueError, match=r'attention_kwargs\["scale"\] must be'):  # before any model
        call(setup, name, attention_kwargs={"scale": float("nan")})
    assert forwards == []


@pytest.mark.parametrize("name", ["av", "a2v"])
def test_decode_arguments_are_refused_where_they_cannot_apply(setup, forwards, name):
    assert setup[name].vae.config.timestep_conditioning is False  # LTX-2.3's VAE
    with pytest.raises(ValueError, match="decode_timestep: this video VAE's decoder is not timestep-conditioned"):
        call(setup, name, output_type="np", decode_timestep=0.05)
    with pytest.raises(ValueError, match="decode_noise_scale applies to the decode, which output_type='latent' skips"):
        call(setup, name, decode_noise_scale=0.025)
    for bad in (1.5, float("nan"), "0.1"):
        with pytest.raises(ValueError, match=r"decode_timestep must be None or a number in \[0, 1\]"):
            call(setup, name, output_type="np", decode_timestep=bad)
    assert forwards == []


@pytest.fixture(scope="module")
def conditioned(setup):
    """The tiny pipeline with a timestep-conditioned (LTX-2) video VAE."""
    from ltx2_diffusers.loaders.single_file_video_vae import load_video_vae_from_single_file

    path = build_checkpoint(
        setup["root"] / "vae20.safetensors", "2.0", seed=32, components=("vae",), dtype=torch.float32
    )
    vae = load_video_vae_from_single_file(path, torch_dtype=torch.float32).eval()
    assert vae.config.timestep_conditioning
    pipe = LTX2AudioVideoPipeline(**{**setup["av"].components, "vae": vae})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_decode_timestep_and_noise_scale_are_honoured(conditioned):
    pipe = conditioned
    latents = torch.randn(1, 128, 2, 2, 2, generator=torch.Generator().manual_seed(3))

    def decode(**settings):
        return pipe.decode(latents, torch.Generator().manual_seed(0), "pt", **settings)

    default = decode()
    assert torch.equal(decode(decode_timestep=0.05, decode_noise_scale=0.025), default)  # the reference's values
    assert torch.equal(decode(decode_timestep=0.3), decode(decode_timestep=0.3, decode_noise_scale=0.3))  # peer rule
    assert not torch.equal(decode(decode_timestep=0.3, decode_noise_scale=0.025), default)
    assert not torch.equal(decode(decode_timestep=0.05, decode_noise_scale=0.3), default)
    # no noise: the VAE's own decode of the denormalised latent at that timestep
    expected = pipe.vae.decode(pipe.denormalize_latents(latents), temb=torch.tensor([0.2]), return_dict=False)[0]
    assert torch.allclose(decode(decode_timestep=0.2, decode_noise_scale=0.0), ((expected + 1) / 2).clamp(0, 1)
                          .permute(0, 2, 1, 3, 4), atol=1e-6)  # fmt: skip


def test_a_call_passes_the_decode_settings_on(conditioned, monkeypatch):
    seen = []
    decode = type(conditioned).decode
    monkeypatch.setattr(type(conditioned), "decode", lambda self, *a, **kw: seen.append(kw) or decode(self, *a, **kw))
    args = tiny_call_args(conditioned, GUIDANCE, steps=2)
    conditioned(**{**args, "output_type": "np", "stage_2": False, "decode_timestep": 0.1, "decode_noise_scale": 0.2})
    assert seen == [dict(decode_timestep=0.1, decode_noise_scale=0.2)]


# ------------------------------------------------------------------------------------------------ latent output
@pytest.mark.parametrize("name", ["av", "a2v"])
def test_latent_output_decodes_as_documented(setup, name):
    """`output_type="latent"`: `pipe.decode(frames, generator, ...)` gives the decoded call's frames, and for the
    generated audio `pipe.decode_audio(audio)` its waveform and rate (the tiny 2.3 VAE draws no decode noise)."""
    pipe = setup[name]
    decoded = call(setup, name, output_type="np", return_dict=False)
    latent = call(setup, name, return_dict=False)
    assert len(decoded) == len(latent) == 3
    frames, audio, rate = latent
    assert frames.shape == (1, 128, 2, 2, 2)
    assert np.array_equal(pipe.decode(frames, None, "np"), decoded[0])
    assert decoded[1].ndim == 2 and decoded[1].dtype == torch.float32  # [channels, samples], not batched
    if name == "av":
        assert audio.ndim == 3 and audio.shape[0] == 1 and rate is None  # (1, T, 128) tokens
        waveform, sample_rate = pipe.decode_audio(audio)
        assert torch.equal(waveform, decoded[1]) and sample_rate == decoded[2]
    else:
        assert torch.equal(audio, decoded[1]) and rate == decoded[2]  # the input samples either way


def test_attention_kwargs_scale_scales_the_users_lora(setup):
    """`attention_kwargs={"scale": 0}` switches the user's adapter off (diffusers' `apply_lora_scale`), as
    `disable_lora()` does; 1 keeps it."""
    from factories import build_lora

    pipe = LTX2AudioVideoPipeline.from_pretrained(setup["root"] / "converted")
    pipe.set_progress_bar_config(disable=True)
    lora = build_lora(setup["root"] / "user_lora.safetensors", setup["root"] / "ltx-2.3.safetensors", seed=77)
    pipe.load_lora_weights(lora, adapter_name="style")

    def run(**kwargs):
        return pipe(**{**tiny_call_args(pipe, GUIDANCE, steps=2), "stage_2": False, **kwargs})

    styled = run()
    off = run(attention_kwargs={"scale": 0.0})
    on = run(attention_kwargs={"scale": 1.0})
    pipe.disable_lora()
    disabled = run()
    assert not torch.allclose(styled.frames, disabled.frames)
    assert torch.allclose(off.frames, disabled.frames, atol=1e-6) and torch.allclose(
        off.audio, disabled.audio, atol=1e-6
    )
    assert torch.equal(on.frames, styled.frames)


def test_attention_kwargs_scale_leaves_the_users_adapter_weights(setup):
    """A call with `attention_kwargs={"scale": s}` leaves the user's `set_adapters` weights exactly as set: diffusers
    undoes a scale of 0 by resetting every adapter to weight 1 (a later plain call then ran at weight 1, not 0.5)."""
    from factories import build_lora

    pipe = LTX2AudioVideoPipeline.from_pretrained(setup["root"] / "converted")
    pipe.set_progress_bar_config(disable=True)
    lora = build_lora(setup["root"] / "user_lora.safetensors", setup["root"] / "ltx-2.3.safetensors", seed=77)
    pipe.load_lora_weights(lora, adapter_name="style")
    pipe.set_adapters(["style"], [0.5])

    def scalings():
        return [dict(m.scaling) for m in pipe.transformer.modules() if isinstance(getattr(m, "scaling", None), dict)]

    def run(**kwargs):
        return pipe(**{**tiny_call_args(pipe, GUIDANCE, steps=2), "stage_2": False, **kwargs}).frames

    before, first = scalings(), run()
    for scale in (0.0, 0.3):
        run(attention_kwargs={"scale": scale})
        assert scalings() == before
    assert torch.equal(run(), first)


def test_guidance_rescale_is_rescale_scale(setup, monkeypatch):
    """diffusers' `guidance_rescale` is the same std rescale of the guided x0 as `rescale_scale` (the peer's
    `rescale_noise_cfg` at batch 1 is ltx-core's formula): taken as its alias, both given must agree."""
    from ltx2_diffusers.pipelines.ltx2_base import VersionDefaults

    pipe = setup["av"]
    monkeypatch.setattr(pipe, "version_defaults", lambda: VersionDefaults(2, MultiModalGuidance(stg_blocks=[1]), None))
    flat = dict(video_guidance=None, audio_guidance=None, stage_2=False)
    expected = call(setup, "av", **flat, rescale_scale=0.3).frames
    assert torch.equal(call(setup, "av", **flat, guidance_rescale=0.3).frames, expected)
    assert torch.equal(call(setup, "av", **flat, guidance_rescale=0.3, rescale_scale=0.3).frames, expected)
    assert not torch.equal(call(setup, "av", **flat).frames, expected)
    with pytest.raises(ValueError, match="rescale_scale=0.3 and guidance_rescale=0.5 name the same scale"):
        call(setup, "av", **flat, rescale_scale=0.3, guidance_rescale=0.5)
    with pytest.raises(ValueError, match="guidance_rescale=0.5 contradicts video_guidance.rescale_scale=0.7"):
        call(setup, "a2v", guidance_rescale=0.5)
    for value in ([0.3], np.array([0.3]), "0.3"):  # named, not compared (a list was "unhashable type")
        with pytest.raises((TypeError, ValueError), match="guidance_rescale"):
            call(setup, "av", **flat, guidance_rescale=value)


@pytest.mark.parametrize("scale", [torch.tensor([1.0, 2.0]), np.array([1.0, 2.0]), "1"])
def test_a_direct_forward_names_a_scale_that_is_no_number(setup, scale):
    """Checked before it is compared with 1 (was torch's 'ambiguous' RuntimeError / numpy's ValueError)."""
    with pytest.raises((TypeError, ValueError), match=r'attention_kwargs\["scale"\] must be'):
        setup["av"].transformer(None, None, None, None, attention_kwargs={"scale": scale})
