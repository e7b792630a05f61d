"""AutoencoderAudioMel: parity with ltx-core (fp32, every weight random), diffusers interop, single file, keys."""

import copy
import json
import math

import pytest
import torch
from diffusers import AutoencoderKLLTX2Audio
from factories import REFERENCE_KEYS, needs_reference_keys
from ltx_core.components.patchifiers import AudioPatchifier
from ltx_core.model.audio_vae import AudioDecoderConfigurator, AudioEncoderConfigurator, AudioProcessor, encode_audio
from ltx_core.types import Audio

from ltx2_diffusers import AutoencoderAudioMel
from ltx2_diffusers.loaders.single_file import read_checkpoint_config
from ltx2_diffusers.loaders.single_file_audio_vae import AUDIO_VAE_KEY_TABLE, audio_vae_config_from_original


KEYS = REFERENCE_KEYS
TOL = 1e-5


def section(**ddconfig) -> dict:
    """A tiny original `audio_vae` metadata section: ch 16, z 4, 16 mel bins (statistics: 4 x 4 = 16 = ch)."""
    dd = {
        "ch": 16,
        "out_ch": 2,
        "ch_mult": [1, 2, 4],
        "num_res_blocks": 2,
        "z_channels": 4,
        "double_z": True,
        "in_channels": 2,
        "mel_bins": 16,
        "resolution": 256,
        "attn_resolutions": [],
        "mid_block_add_attention": False,
        "norm_type": "pixel",
        "causality_axis": "height",
        **ddconfig,
    }
    return {
        "model": {"params": {"ddconfig": dd, "sampling_rate": 16000}},
        "preprocessing": {"stft": {"filter_length": 1024, "hop_length": 160, "win_length": 1024, "causal": True}},
    }


VARIANTS = {
    "released_layout": section(),
    "with_attention": section(mid_block_add_attention=True, attn_resolutions=[256, 64], num_res_blocks=1),
}


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Distinct random values for every parameter and persistent buffer (ltx-core initialises some to constants)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if name.endswith("std-of-means") or name.endswith("latents_std"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.ndim >= 2:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(t[0].numel()))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2)


def reference_pair(cfg: dict, seed: int = 0):
    config = {"audio_vae": cfg}
    enc = AudioEncoderConfigurator.from_config(config).eval()
    dec = AudioDecoderConfigurator.from_config(config).eval()
    randomize(enc, seed)
    randomize(dec, seed + 1)
    dec.per_channel_statistics.load_state_dict(enc.per_channel_statistics.state_dict())
    return enc, dec


def ours_from_reference(cfg: dict, enc, dec) -> AutoencoderAudioMel:
    """Our model with the reference weights, renamed through AUDIO_VAE_KEY_TABLE (as from a file)."""
    file_sd = {f"audio_vae.encoder.{k}": v for k, v in enc.state_dict().items() if not k.startswith("per_channel")}
    file_sd.update(
        {f"audio_vae.decoder.{k}": v for k, v in dec.state_dict().items() if not k.startswith("per_channel")}
    )
    file_sd.update({f"audio_vae.{k}": v for k, v in enc.state_dict().items() if k.startswith("per_channel")})
    model = AutoencoderAudioMel(**audio_vae_config_from_original(cfg)).eval()
    model.load_state_dict({AUDIO_VAE_KEY_TABLE.map_key(k): v for k, v in file_sd.items()}, strict=True)
    return model


def waveform(rate: int, seconds: float, channels: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(rate * seconds)) / rate
    chirp = 0.4 * torch.sin(2 * math.pi * (150 + 900 * t) * t)
    return torch.stack([chirp.roll(31 * c) + 0.05 * torch.randn(t.shape, generator=gen) for c in range(channels)])


@pytest.fixture(scope="module", params=list(VARIANTS))
def models(request):
    cfg = VARIANTS[request.param]
    enc, dec = reference_pair(cfg)
    return cfg, enc, dec, ours_from_reference(cfg, enc, dec)


@torch.no_grad()
def test_encoder_parity(models):
    _, enc, _, ours = models
    mel = torch.randn(2, 2, 37, 16, generator=torch.Generator().manual_seed(3))
    expected = enc(mel)  # normalised (B, C, T', F')
    raw = ours.encode(mel).latent_dist.parameters[:, : ours.config.latent_channels]
    tokens = ours.normalize_tokens(ours.patchify_latents(raw))
    delta = (tokens - AudioPatchifier(patch_size=1).patchify(expected)).abs().max().item()
    print(f"audio encoder: max|delta| = {delta:.3g}")
    assert expected.shape == (2, 4, 10, 4) and delta <= TOL
    assert torch.equal(
        ours.unpatchify_tokens(tokens),
        ours.normalize_tokens(ours.patchify_latents(raw)).reshape(2, 10, 4, 4).permute(0, 2, 1, 3),
    )


@torch.no_grad()
def test_decoder_parity(models):
    _, _, dec, ours = models
    latents = torch.randn(2, 4, 6, 4, generator=torch.Generator().manual_seed(4))  # normalised, reference layout
    expected = dec(latents)
    tokens = AudioPatchifier(patch_size=1).patchify(latents)
    out = ours.decode_tokens(tokens)
    raw = ours.unpatchify_tokens(ours.denormalize_tokens(tokens))
    delta = (out - expected).abs().max().item()
    print(f"audio decoder: max|delta| = {delta:.3g}")
    assert out.shape == expected.shape == (2, 2, 21, 16) and delta <= TOL
    assert torch.equal(ours.decode(raw).sample, out)


@torch.no_grad()
@pytest.mark.parametrize("rate", [44100, 16000])
def test_encode_waveform_matches_encode_audio(models, rate):
    _, enc, _, ours = models
    wav = waveform(rate, 0.77)
    expected = encode_audio(Audio(waveform=wav[None], sampling_rate=rate), enc)  # (1, C, T, F) normalised
    expected_tokens = AudioPatchifier(patch_size=1).patchify(expected)
    tokens = ours.encode_waveform(wav, rate)
    delta = (tokens - expected_tokens).abs().max().item()
    print(f"encode_waveform vs encode_audio @ {rate} Hz: max|delta| = {delta:.3g}, tokens {tuple(tokens.shape)}")
    assert tokens.shape == (1, expected.shape[2], 16) and delta <= TOL
    # batched input, and the mel layout is the reference's
    batched = ours.encode_waveform(torch.stack([wav, wav.flip(0)]), rate)
    assert (batched[:1] - tokens).abs().max() <= TOL
    mel = AudioProcessor(16000, 16, 160, 1024).waveform_to_mel(Audio(waveform=wav[None], sampling_rate=rate))
    assert (ours.waveform_to_mel(wav, rate) - mel).abs().max() <= TOL


@torch.no_grad()
def test_bf16_encode_waveform_matches_reference(tmp_path, models):
    """bf16 as in the pipelines: the mel is computed in float32, then cast; statistics cast to bf16."""
    _, enc, dec, ours = models
    ours.save_pretrained(tmp_path)
    model = AutoencoderAudioMel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    wav = waveform(44100, 0.5)
    enc16, dec16 = copy.deepcopy(enc).to(torch.bfloat16), copy.deepcopy(dec).to(torch.bfloat16)
    expected = encode_audio(Audio(waveform=wav[None], sampling_rate=44100), enc16)
    tokens = model.encode_waveform(wav, 44100)
    assert tokens.dtype == torch.bfloat16 and torch.equal(tokens, AudioPatchifier(patch_size=1).patchify(expected))
    assert torch.equal(model.decode_tokens(tokens), dec16(expected))


@torch.no_grad()
def test_encode_waveform_mono_is_duplicated(models):
    _, enc, _, ours = models
    mono = waveform(22050, 0.6, channels=1)
    expected = encode_audio(Audio(waveform=mono.repeat(2, 1)[None], sampling_rate=22050), enc)
    tokens = ours.encode_waveform(mono, 22050)
    assert (tokens - AudioPatchifier(patch_size=1).patchify(expected)).abs().max() <= TOL


@torch.no_grad()
def test_diffusers_interop_both_ways(tmp_path):
    cfg = VARIANTS["released_layout"]
    enc, dec = reference_pair(cfg, seed=7)
    ours = ours_from_reference(cfg, enc, dec)
    mel = torch.randn(1, 2, 29, 16, generator=torch.Generator().manual_seed(5))
    z = torch.randn(1, 4, 5, 4, generator=torch.Generator().manual_seed(6))

    ours.save_pretrained(tmp_path / "ours")
    theirs = AutoencoderKLLTX2Audio.from_pretrained(tmp_path / "ours").eval()
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert all(json.loads(json.dumps(theirs.config[k])) == saved[k] for k in theirs.config if not k.startswith("_"))
    assert torch.equal(theirs.encode(mel).latent_dist.parameters, ours.encode(mel).latent_dist.parameters)
    assert torch.equal(theirs.decode(z).sample, ours.decode(z).sample)
    assert torch.equal(theirs.latents_mean, ours.latents_mean) and torch.equal(theirs.latents_std, ours.latents_std)

    theirs2 = AutoencoderKLLTX2Audio(
        **{k: v for k, v in ours.config.items() if k != "n_fft" and not k.startswith("_")}
    )
    randomize(theirs2, 11)
    theirs2.save_pretrained(tmp_path / "theirs")
    back = AutoencoderAudioMel.from_pretrained(tmp_path / "theirs").eval()
    assert back.config.n_fft == 1024 and back.config.latent_channels == 4
    sd_a, sd_b = theirs2.state_dict(), back.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert torch.equal(theirs2.encode(mel).latent_dist.parameters, back.encode(mel).latent_dist.parameters)
    assert torch.equal(theirs2.decode(z).sample, back.decode(z).sample)


def test_defaults_match_diffusers_and_release():
    import inspect

    ours = {k: p.default for k, p in inspect.signature(AutoencoderAudioMel.__init__).parameters.items() if k != "self"}
    theirs = {
        k: p.default for k, p in inspect.signature(AutoencoderKLLTX2Audio.__init__).parameters.items() if k != "self"
    }
    assert {k: ours[k] for k in theirs} == theirs and ours["n_fft"] == 1024
    released = {
        "model": {
            "params": {
                "ddconfig": {
                    "ch": 128,
                    "ch_mult": [1, 2, 4],
                    "num_res_blocks": 2,
                    "z_channels": 8,
                    "double_z": True,
                    "in_channels": 2,
                    "out_ch": 2,
                    "mel_bins": 64,
                    "resolution": 256,
                    "attn_resolutions": [],
                    "mid_block_add_attention": False,
                    "norm_type": "pixel",
                    "causality_axis": "height",
                },
                "sampling_rate": 16000,
            }
        },
        "preprocessing": {
            "stft": {"filter_length": 1024, "hop_length": 160, "win_length": 1024, "causal": True},
            "mel": {"n_mel_channels": 64, "mel_fmin": 0, "mel_fmax": 8000},
        },
    }
    mapped = audio_vae_config_from_original(released)
    assert mapped == {k: (tuple(v) if isinstance(v, list) else v) for k, v in ours.items()}


@needs_reference_keys
def test_key_table_covers_full_listing():
    shapes = {}
    for name in ("audio_encoder", "audio_decoder"):
        shapes.update(json.loads((KEYS / f"{name}.json").read_text()))
    txt = set()
    for name in ("audio_encoder", "audio_decoder"):
        lines = (KEYS / f"{name}.txt").read_text().splitlines()[1:]
        txt.update(line.split()[0] for line in lines if line.strip())
    mapped = {}
    for key, (shape, _) in shapes.items():
        assert AUDIO_VAE_KEY_TABLE.owns(key) and not AUDIO_VAE_KEY_TABLE.is_ignored(key), key
        new = AUDIO_VAE_KEY_TABLE.map_key(key)
        assert new not in mapped, f"{key} and {mapped[new][0]} both map to {new}"
        mapped[new] = (key, tuple(shape))
    with torch.device("meta"):
        full = AutoencoderAudioMel()
    ours = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert set(mapped) == set(ours)
    assert all(mapped[k][1] == ours[k] for k in ours)
    # the compressed listings name the same keys (with {i} for indices)
    import re

    assert {re.sub(r"\.\d+\.", ".{i}.", re.sub(r"\.\d+\.", ".{i}.", k)) for k in shapes} == txt
    assert AUDIO_VAE_KEY_TABLE.is_ignored("audio_vae.per_channel_statistics.mean-of-stds")
    assert not AUDIO_VAE_KEY_TABLE.owns("vae.per_channel_statistics.mean-of-means")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"attn_type": "linear"}, "attn_type"),
        ({"resamp_with_conv": False}, "resamp_with_conv"),
        ({"norm_type": "batch"}, "norm_type"),
        ({"causality_axis": "depth"}, "causality_axis"),
    ],
)
def test_config_mapping_rejects_unsupported_layouts(change, match):
    with pytest.raises(ValueError, match=match):
        audio_vae_config_from_original(section(**change))


def test_config_mapping_errors_and_defaults():
    with pytest.raises(ValueError, match="ddconfig"):
        audio_vae_config_from_original({"model": {"params": {}}})
    with pytest.raises(ValueError, match="dict"):
        audio_vae_config_from_original(["audio_vae"])
    sparse = audio_vae_config_from_original({"model": {"params": {"ddconfig": {"mel_bins": 64}}}})
    # absent keys take ltx-core's configurator defaults (mid attention on, attn_resolutions {8, 16, 32})
    assert sparse["mid_block_add_attention"] is True and sparse["attn_resolutions"] == (8, 16, 32)
    assert sparse["n_fft"] == 1024 and sparse["mel_hop_length"] == 160 and sparse["sample_rate"] == 16000


@torch.no_grad()
def test_bad_inputs():
    cfg = VARIANTS["released_layout"]
    model = AutoencoderAudioMel(**audio_vae_config_from_original(cfg))
    with pytest.raises(ValueError, match="channels"):
        model.encode_waveform(torch.zeros(3, 8000), 16000)
    with pytest.raises(ValueError, match="waveform"):
        model.encode_waveform(torch.zeros(8000), 16000)
    with pytest.raises(TypeError, match="waveform"):
        model.waveform_to_mel([0.0] * 8000, 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        model.encode_waveform(torch.zeros(2, 8000), -5)
    with pytest.raises(ValueError, match="features"):
        model.normalize_tokens(torch.zeros(1, 3, 12))
    with pytest.raises(ValueError, match="tokens"):
        model.unpatchify_tokens(torch.zeros(1, 3, 18))
    with pytest.raises(ValueError, match="latents"):
        model.patchify_latents(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="causality_axis"):
        AutoencoderAudioMel(causality_axis="time")


@torch.no_grad()
@pytest.mark.parametrize(
    "call, error, match",
    [
        # integer PCM is not silently cast to float: its raw values are 32767x too loud
        (lambda m: m.encode_waveform((torch.rand(2, 8000) * 2e4).to(torch.int16), 16000), TypeError, "`waveform`"),
        (lambda m: m.encode_waveform(torch.zeros(2, 8000, dtype=torch.bool), 16000), TypeError, "`waveform`"),
        (lambda m: m.encode_waveform(torch.zeros(2, 8000), float("nan")), ValueError, "`sample_rate`"),
        (lambda m: m.encode_waveform(torch.zeros(2, 8000), float("inf")), ValueError, "`sample_rate`"),
        (lambda m: m.encode_waveform(torch.zeros(2, 8000), 10**9), ValueError, "`sample_rate`"),
        (lambda m: m.encode_waveform(torch.full((2, 8000), float("nan")), 16000), ValueError, "`waveform`.*NaN"),
        (lambda m: m.encode(torch.zeros(1, 2, 10, 7)), ValueError, "`x`"),
        (lambda m: m.encode(torch.zeros(1, 3, 10, 16)), ValueError, "`x`"),
        (lambda m: m.encode(torch.zeros(1, 2, 10, 16, dtype=torch.long)), TypeError, "`x`"),
        (lambda m: m.decode(torch.zeros(1, 4, 0, 4)), ValueError, "`z`.*no frames"),
        (lambda m: m.decode_tokens(torch.zeros(1, 0, 16)), ValueError, "`tokens`.*no frames"),
        (lambda m: m.decode_tokens(torch.zeros(0, 3, 16)), ValueError, "`tokens`"),
        (lambda m: m.decode_tokens(torch.full((1, 3, 16), float("nan"))), ValueError, "`tokens`.*NaN"),
        (lambda m: m.decode_tokens(torch.zeros(1, 3, 16, dtype=torch.int32)), TypeError, "`tokens`"),
    ],
)
def test_garbage_is_refused_before_compute(call, error, match):
    model = AutoencoderAudioMel(base_channels=16, latent_channels=4, mel_bins=16)
    with pytest.raises(error, match=match):
        call(model)


@torch.no_grad()
def test_low_precision_waveform_is_encoded_as_float32():
    model = AutoencoderAudioMel(base_channels=16, latent_channels=4, mel_bins=16)
    wav = waveform(16000, 0.3).bfloat16()
    assert torch.equal(model.encode_waveform(wav, 16000), model.encode_waveform(wav.float(), 16000))


# ------------------------------------------------------------------------------------------ single file
factories = pytest.importorskip("factories")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio_vae_ckpt") / "tiny.safetensors"
    return factories.build_checkpoint(path, "2.3", seed=3, components=("audio_vae",))


@torch.no_grad()
def test_from_single_file_matches_reference(checkpoint):
    ref_enc = factories.load_reference(checkpoint, "audio_encoder")
    ref_dec = factories.load_reference(checkpoint, "audio_decoder")
    ours = AutoencoderAudioMel.from_single_file(checkpoint, torch_dtype=torch.float32)
    config, _ = read_checkpoint_config(checkpoint)
    assert dict(ours.config) | audio_vae_config_from_original(config["audio_vae"]) == dict(ours.config)
    wav = waveform(44100, 0.45)
    expected = AudioPatchifier(patch_size=1).patchify(
        encode_audio(Audio(waveform=wav[None], sampling_rate=44100), ref_enc)
    )
    tokens = ours.encode_waveform(wav, 44100)
    enc_delta = (tokens - expected).abs().max().item()
    latents = torch.randn(1, 8, 4, 16, generator=torch.Generator().manual_seed(2))
    dec_delta = (
        (ours.decode_tokens(AudioPatchifier(patch_size=1).patchify(latents)) - ref_dec(latents)).abs().max().item()
    )
    print(f"single file: encode_waveform max|delta| = {enc_delta:.3g}, decoder max|delta| = {dec_delta:.3g}")
    assert enc_delta <= TOL and dec_delta <= TOL
    native = AutoencoderAudioMel.from_single_file(checkpoint)
    assert native.dtype == torch.bfloat16 and not native.training


def test_from_single_file_errors(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="does not exist"):
        AutoencoderAudioMel.from_single_file(tmp_path / "nope.safetensors")
    only_vocoder = factories.build_checkpoint(tmp_path / "voc.safetensors", "2.0", components=("vocoder",))
    with pytest.raises(ValueError, match="audio_vae"):
        AutoencoderAudioMel.from_single_file(only_vocoder)
