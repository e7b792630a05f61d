"""LTX2HiFiGANVocoder: parity with ltx-core (LTX-2 and LTX-2.3 + BWE), diffusers interop, single file, keys."""

import copy
import json
import math
import re

import pytest
import torch
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE
from factories import REFERENCE_KEYS, needs_reference_keys
from ltx_core.model.audio_vae import VocoderConfigurator

from ltx2_diffusers import LTX2HiFiGANVocoder
from ltx2_diffusers.loaders.single_file_vocoder import VOCODER_KEY_TABLE, vocoder_config_from_original


KEYS = REFERENCE_KEYS
TOL = 1e-5
DILATIONS = [[1, 3, 5], [1, 2, 3]]

# Tiny original `vocoder` sections (ltx-core hard-codes 128 = 2 x 64 mel input channels).
TINY_20 = {
    "resblock": "1",
    "stereo": True,
    "upsample_initial_channel": 16,
    "upsample_rates": [3, 2],
    "upsample_kernel_sizes": [7, 4],
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": DILATIONS,
    "output_sampling_rate": 24000,
}
_AMP = {"resblock": "AMP1", "stereo": True, "activation": "snakebeta", "use_tanh_at_final": False}
TINY_23 = {
    "vocoder": {
        **_AMP,
        "upsample_initial_channel": 16,
        "upsample_rates": [5, 2],  # x10: 7 mel frames -> 70 samples, not a multiple of the hop (16)
        "upsample_kernel_sizes": [11, 4],
        "resblock_kernel_sizes": [3, 5],
        "resblock_dilation_sizes": DILATIONS,
        "use_bias_at_final": False,
    },
    "bwe": {
        **_AMP,
        "upsample_initial_channel": 16,
        "upsample_rates": [4, 3, 4],  # 48 = hop 16 x (48 kHz / 16 kHz)
        "upsample_kernel_sizes": [8, 7, 8],
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3, 5]],
        "use_bias_at_final": False,
        "input_sampling_rate": 16000,
        "output_sampling_rate": 48000,
        "n_fft": 64,
        "hop_length": 16,
        "num_mels": 64,
    },
}


def randomize(module: torch.nn.Module, seed: int, scale: float = 1.0) -> None:
    """Distinct random values for every parameter and persistent buffer (filters perturbed, STFT bases random)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("alpha", "beta"):
                t.copy_(torch.rand(t.shape, generator=gen) - 0.5)
            elif leaf == "filter":
                t.mul_(torch.rand(t.shape, generator=gen) * 0.4 + 0.8)
            elif leaf == "mel_basis":
                t.copy_(torch.rand(t.shape, generator=gen) * 0.1)
            elif leaf in ("forward_basis", "inverse_basis"):
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(t.shape[-1]))
            elif t.ndim >= 2:
                fan_in = (
                    t.shape[1] * t.shape[2]
                    if "upsamplers" not in name and ".ups." not in name
                    else t.shape[0] * t.shape[2] / 3
                )
                t.copy_(scale * torch.randn(t.shape, generator=gen) / math.sqrt(fan_in))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


def reference(section: dict, seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    model = VocoderConfigurator.from_config({"vocoder": section}).eval()
    randomize(model, seed, scale)
    return model


def ours_from_reference(section: dict, ref: torch.nn.Module, **overrides) -> LTX2HiFiGANVocoder:
    model = LTX2HiFiGANVocoder(**{**vocoder_config_from_original(section), **overrides}).eval()
    model.load_state_dict({VOCODER_KEY_TABLE.map_key(f"vocoder.{k}"): v for k, v in ref.state_dict().items()})
    return model


def mel(frames: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 2, frames, 64, generator=torch.Generator().manual_seed(seed)) - 2.0


@pytest.fixture(scope="module")
def ltx2():
    ref = reference(TINY_20, seed=0)
    return ref, ours_from_reference(TINY_20, ref)


@pytest.fixture(scope="module")
def ltx23():
    ref = reference(TINY_23, seed=1, scale=0.8)  # inner clamp active on ~25% of samples
    return ref, ours_from_reference(TINY_23, ref)


@torch.no_grad()
def test_ltx2_parity(ltx2):
    ref, ours = ltx2
    x = mel(7)
    expected, out = ref(x), ours(x)
    delta = (out - expected).abs().max().item()
    print(f"vocoder LTX-2: max|delta| = {delta:.3g}, out {tuple(out.shape)}")
    assert out.shape == (2, 2, 7 * 6) and delta <= TOL
    assert ours.sampling_rate == 24000
    # sensitivity: the final LeakyReLU slope is 0.01 (0.1 would be visible), tanh is applied
    wrong = copy.deepcopy(ours)
    wrong.act_out.negative_slope = 0.1
    assert (wrong(x) - expected).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("frames", [7, 8])
def test_ltx23_bwe_parity(ltx23, frames):
    ref, ours = ltx23
    x = mel(frames)
    expected, out = ref(x), ours(x)
    delta = (out - expected).abs().max().item()
    inner = 10 * frames
    print(f"vocoder LTX-2.3+BWE, {inner} samples (hop 16 divides: {inner % 16 == 0}): max|delta| = {delta:.3g}")
    assert out.shape == (2, 2, 3 * inner) and delta <= TOL
    assert ours.sampling_rate == 48000


@torch.no_grad()
def test_ltx23_inner_clamp_matters(ltx23):
    """The inner vocoder's output clamp is active on these weights (diffusers' converted config drops it)."""
    ref, _ = ltx23
    x = mel(7)
    no_clamp = ours_from_reference(TINY_23, ref, final_act_fn=None)
    pre = no_clamp.vocoder(x)
    assert 0.0 < (pre.abs() > 1).float().mean() < 0.5
    assert (no_clamp(x) - ref(x)).abs().max() > 1e-2


@torch.no_grad()
def test_resampler_built_on_cpu_in_float32():
    with torch.device("meta"):
        model = LTX2HiFiGANVocoder(**vocoder_config_from_original(TINY_23))
    ref = VocoderConfigurator.from_config({"vocoder": TINY_23})
    assert model.resampler.filter.device.type == "cpu" and model.resampler.filter.dtype == torch.float32
    assert torch.equal(model.resampler.filter, ref.resampler.filter)
    assert "resampler.filter" not in model.state_dict()


@torch.no_grad()
def test_dtype_round_trip_keeps_the_float32_resampler(ltx23):
    ref, ours = ltx23
    model = copy.deepcopy(ours).to(torch.bfloat16).to(torch.float32)
    assert model.resampler.filter.dtype == torch.float32
    x = mel(7)
    # weights went through bf16; the reference gets the same rounded weights, its resampler stays float32 too
    ref16 = copy.deepcopy(ref)
    ref16.load_state_dict({k: v.bfloat16().float() for k, v in ref.state_dict().items()})
    assert (model(x) - ref16(x)).abs().max() <= TOL


@torch.no_grad()
@pytest.mark.parametrize("variant", ["ltx2", "ltx23"])
def test_bf16_from_pretrained_matches_reference_in_bf16(tmp_path, request, variant):
    """As the pipelines run it: weights and buffers in bf16, the BWE Hann resampler kernel built in float32."""
    ref, ours = request.getfixturevalue(variant)
    ours.save_pretrained(tmp_path)
    model = LTX2HiFiGANVocoder.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)  # built under bf16 default
    ref16 = copy.deepcopy(ref).to(torch.bfloat16)
    if variant == "ltx23":
        assert model.resampler.filter.dtype == torch.float32
        ref16.resampler.filter = ref.resampler.filter  # ltx-core's builder leaves non-persistent buffers alone
    x = mel(7).bfloat16()
    out = model(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref16(x))


@torch.no_grad()
def test_diffusers_interop_ltx2(tmp_path, ltx2):
    _, ours = ltx2
    x = mel(5)
    ours.save_pretrained(tmp_path / "ours")
    theirs = LTX2Vocoder.from_pretrained(tmp_path / "ours").eval()
    assert torch.equal(theirs(x), ours(x))

    theirs = LTX2Vocoder(**{k: v for k, v in LTX2Vocoder.extract_init_dict(dict(ours.config))[0].items()})
    randomize(theirs, 5)
    theirs.save_pretrained(tmp_path / "theirs")
    back = LTX2HiFiGANVocoder.from_pretrained(tmp_path / "theirs").eval()
    assert back.config.bandwidth_extension is False and back.config.output_sampling_rate == 24000
    assert torch.equal(back(x), theirs.eval()(x))


@torch.no_grad()
def test_diffusers_interop_ltx23(tmp_path, ltx23):
    ref, ours = ltx23
    x = mel(8)  # diffusers' BWE needs a length that is a multiple of the hop
    ours.save_pretrained(tmp_path / "ours")
    theirs = LTX2VocoderWithBWE.from_pretrained(tmp_path / "ours").eval()
    sd_a, sd_b = ours.state_dict(), theirs.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert torch.equal(theirs(x), ours(x))

    kwargs = LTX2VocoderWithBWE.extract_init_dict(dict(ours.config))[0]
    theirs = LTX2VocoderWithBWE(**kwargs)
    randomize(theirs, 6)
    theirs.save_pretrained(tmp_path / "theirs")
    back = LTX2HiFiGANVocoder.from_pretrained(tmp_path / "theirs").eval()
    assert back.config.bandwidth_extension is True and back.config.final_act_fn == "clamp"
    assert torch.equal(back(x), theirs.eval()(x))

    # a diffusers-converted LTX-2.3 folder without the inner clamp loads as given (same numbers as diffusers)
    LTX2VocoderWithBWE(**{**kwargs, "final_act_fn": None}).save_pretrained(tmp_path / "no_clamp")
    assert LTX2HiFiGANVocoder.from_pretrained(tmp_path / "no_clamp").config.final_act_fn is None


RELEASED_20 = {"resblock": "1", "stereo": True}  # every other value: ltx-core's defaults (= the LTX-2 release)
RELEASED_23 = {
    "vocoder": {
        **_AMP,
        "upsample_initial_channel": 1536,
        "upsample_rates": [5, 2, 2, 2, 2, 2],
        "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5]] * 3,
        "use_bias_at_final": False,
    },
    "bwe": {
        **_AMP,
        "upsample_initial_channel": 512,
        "upsample_rates": [6, 5, 2, 2, 2],
        "upsample_kernel_sizes": [12, 11, 4, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5]] * 3,
        "use_bias_at_final": False,
        "apply_final_activation": False,
        "input_sampling_rate": 16000,
        "output_sampling_rate": 48000,
        "hop_length": 80,
        "n_fft": 512,
        "win_size": 512,
        "num_mels": 64,
    },
}


def test_defaults_are_the_ltx23_release():
    import inspect

    defaults = {
        k: p.default for k, p in inspect.signature(LTX2HiFiGANVocoder.__init__).parameters.items() if k != "self"
    }
    mapped = vocoder_config_from_original(RELEASED_23)
    as_json = json.loads(json.dumps(defaults))
    assert {k: as_json[k] for k in mapped} == json.loads(json.dumps(mapped))


@needs_reference_keys
@pytest.mark.parametrize("listing, section", [("vocoder_20", RELEASED_20), ("vocoder_23_bwe", RELEASED_23)])
def test_key_table_covers_full_listing(listing, section):
    shapes = json.loads((KEYS / f"{listing}.json").read_text())
    mapped = {}
    for key, (shape, _) in shapes.items():
        assert VOCODER_KEY_TABLE.owns(key) and not VOCODER_KEY_TABLE.is_ignored(key), key
        new = VOCODER_KEY_TABLE.map_key(key)
        assert new not in mapped, f"{key} and {mapped[new][0]} both map to {new}"
        mapped[new] = (key, tuple(shape))
    with torch.device("meta"):
        full = LTX2HiFiGANVocoder(**vocoder_config_from_original(section))
    ours = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert set(mapped) == set(ours)
    assert all(mapped[k][1] == ours[k] for k in ours)
    lines = (KEYS / f"{listing}.txt").read_text().splitlines()[1:]
    assert {re.sub(r"\.\d+(?=\.)", ".{i}", k) for k in shapes} == {line.split()[0] for line in lines if line.strip()}
    # diffusers' classes have the same state-dict keys for their variant
    with torch.device("meta"):
        cls = LTX2VocoderWithBWE if "bwe" in section else LTX2Vocoder
        theirs = cls(**cls.extract_init_dict(dict(full.config))[0])
    assert set(theirs.state_dict()) == set(ours)


@pytest.mark.parametrize(
    "section, match",
    [
        ({**TINY_20, "resblock": "2"}, "resblock"),
        ({**TINY_20, "stereo": False}, "stereo"),
        ({k: v for k, v in TINY_20.items() if k != "stereo"}, "stereo"),
        ({**TINY_23, "bwe": {**TINY_23["bwe"], "activation": "snake"}}, "bwe.activation"),
        ({**TINY_23, "vocoder": {**TINY_23["vocoder"], "resblock": "1"}}, "vocoder.resblock"),
        ({**TINY_23, "bwe": {k: v for k, v in TINY_23["bwe"].items() if k != "hop_length"}}, "hop_length"),
        ("flat", "dict"),
    ],
)
def test_config_mapping_rejects_unsupported_layouts(section, match):
    with pytest.raises(ValueError, match=match):
        vocoder_config_from_original(section)


def test_bad_inputs(ltx2, ltx23):
    with pytest.raises(ValueError, match="mel"):
        ltx2[1](torch.zeros(1, 2, 5, 32))
    with pytest.raises(ValueError, match="mel"):
        ltx23[1](torch.zeros(2, 5, 64))
    with pytest.raises(TypeError, match="mel"):
        ltx2[1]([[0.0]])
    for _, model in (ltx2, ltx23):
        bins = model.config.in_channels // 2
        with pytest.raises(ValueError, match="`mel`.*one frame"):
            model(torch.zeros(1, 2, 0, bins))
        with pytest.raises(ValueError, match="`mel`.*one batch item"):
            model(torch.zeros(0, 2, 5, bins))
        with pytest.raises(TypeError, match="`mel`.*floating point"):
            model(torch.zeros(1, 2, 5, bins, dtype=torch.long))
        with pytest.raises(ValueError, match="`mel`.*NaN"):
            model(torch.full((1, 2, 5, bins), float("nan")))
        assert model(torch.zeros(1, 2, 1, bins)).shape[-1] > 0  # one frame is enough
    with pytest.raises(ValueError, match="output_sampling_rate"):
        LTX2HiFiGANVocoder(hidden_channels=16, bwe_hidden_channels=16, output_sampling_rate=44100)
    with pytest.raises(ValueError, match="bwe_in_channels"):
        LTX2HiFiGANVocoder(hidden_channels=16, bwe_hidden_channels=16, num_mel_channels=32)
    with pytest.raises(ValueError, match="act_fn"):
        LTX2HiFiGANVocoder(hidden_channels=16, act_fn="relu", bandwidth_extension=False)


# ------------------------------------------------------------------------------------------ single file
factories = pytest.importorskip("factories")


@torch.no_grad()
@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_from_single_file_matches_reference(tmp_path, version):
    path = factories.build_checkpoint(tmp_path / "tiny.safetensors", version, seed=4, components=("vocoder",))
    ref = factories.load_reference(path, "vocoder")
    ours = LTX2HiFiGANVocoder.from_single_file(path, torch_dtype=torch.float32)
    assert ours.config.bandwidth_extension is (version == "2.3")
    x = mel(3, batch=1)
    delta = (ours(x) - ref(x)).abs().max().item()
    print(f"vocoder single file {version}: max|delta| = {delta:.3g}")
    assert delta <= TOL
    native = LTX2HiFiGANVocoder.from_single_file(path)
    assert native.dtype == torch.bfloat16 and not native.training


def test_from_single_file_errors(tmp_path):
    only_vae = factories.build_checkpoint(tmp_path / "vae.safetensors", "2.3", components=("audio_vae",))
    with pytest.raises(ValueError, match="vocoder"):
        LTX2HiFiGANVocoder.from_single_file(only_vae)
