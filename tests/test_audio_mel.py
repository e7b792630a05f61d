"""Mel front end: parity with the reference AudioProcessor (torchaudio) in float32, without importing torchaudio."""

import math
import subprocess
import sys

import pytest
import torch

from ltx2_diffusers.audio.mel import log_mel_spectrogram, mel_filterbank, resample_waveform


ta_functional = pytest.importorskip("torchaudio.functional")  # reference side only
from ltx_core.model.audio_vae.ops import AudioProcessor  # noqa: E402
from ltx_core.types import Audio  # noqa: E402


def waveform(rate: int, seconds: float = 1.37, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Stereo chirp + harmonics + noise: energy in every mel band, different channels."""
    gen = torch.Generator().manual_seed(seed)
    n = int(rate * seconds)
    t = torch.arange(n, dtype=torch.float64) / rate
    left = 0.4 * torch.sin(2 * math.pi * (100 + 1500 * t) * t) + 0.1 * torch.sin(2 * math.pi * 3100 * t)
    right = 0.3 * torch.sin(2 * math.pi * 440 * t) * torch.exp(-t) + 0.05 * torch.randn(n, generator=gen)
    x = torch.stack([left, right]).float()
    return torch.stack([x.roll(17 * i, -1) for i in range(batch)])


@pytest.mark.parametrize("rate", [44100, 22050, 16000])
def test_log_mel_matches_reference(rate):
    wav = waveform(rate, batch=2)
    ref = AudioProcessor(target_sample_rate=16000, mel_bins=64, mel_hop_length=160, n_fft=1024)
    expected = ref.waveform_to_mel(Audio(waveform=wav, sampling_rate=rate))
    ours = log_mel_spectrogram(wav, rate, target_sample_rate=16000, n_fft=1024, hop_length=160, n_mels=64)
    assert ours.shape == expected.shape == (2, 2, round(wav.shape[-1] * 16000 / rate + 0.5) // 160 + 1, 64)
    assert ours.dtype == torch.float32
    delta = (ours - expected).abs().max().item()
    print(f"log-mel {rate} Hz: max|delta| = {delta:.3g}")
    assert delta <= 1e-5


@pytest.mark.parametrize("orig, new", [(44100, 16000), (22050, 16000), (48000, 16000), (8000, 16000), (16000, 24000)])
def test_resample_matches_torchaudio(orig, new):
    wav = waveform(orig, 0.5, batch=3)
    expected = ta_functional.resample(wav, orig, new)
    ours = resample_waveform(wav, orig, new)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        resample_waveform(wav.double(), orig, new), ta_functional.resample(wav.double(), orig, new)
    )


@pytest.mark.parametrize("orig, length", [(176400, 726757), (7919, 260693), (11025, 7)])
def test_resampled_length_is_torchaudios_at_float32_rounding_corners(orig, length):
    """torchaudio rounds `new * length / orig` to float32 before its ceiling: at these lengths one sample fewer
    than the exact ceiling (the first two), and our resampler and the audio-latent count follow it."""
    wav = torch.randn(1, length, generator=torch.Generator().manual_seed(length))
    expected = ta_functional.resample(wav, orig, 16000)
    ours = resample_waveform(wav, orig, 16000)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_float64_kernel_would_not_do():
    """The kernel must be built in the waveform's dtype: a float64 kernel cast to float32 is visibly off."""
    wav = waveform(44100, 1.0)
    expected = ta_functional.resample(wav, 44100, 16000)
    via64 = ta_functional.resample(wav.double(), 44100, 16000).float()
    assert (via64 - expected).abs().max() > 1e-7  # the effect the float32 construction avoids
    assert torch.equal(resample_waveform(wav, 44100, 16000), expected)


def test_filterbank_matches_torchaudio():
    for n_mels, rate in [(64, 16000), (16, 16000), (80, 22050)]:
        expected = ta_functional.melscale_fbanks(513, 0.0, rate / 2, n_mels, rate, norm="slaney", mel_scale="slaney")
        assert torch.equal(mel_filterbank(513, 0.0, rate / 2, n_mels, rate), expected)
    fb = mel_filterbank(513, 0.0, 8000.0, 64, 16000)
    fb.zero_()  # a copy: the cached bank is untouched
    assert mel_filterbank(513, 0.0, 8000.0, 64, 16000).abs().sum() > 0


def test_other_mel_settings_match_reference():
    wav = waveform(16000, 0.6)
    ref = AudioProcessor(target_sample_rate=16000, mel_bins=16, mel_hop_length=100, n_fft=512)
    expected = ref.waveform_to_mel(Audio(waveform=wav, sampling_rate=16000))
    ours = log_mel_spectrogram(wav, 16000, n_fft=512, hop_length=100, n_mels=16)
    assert (ours - expected).abs().max() <= 1e-5


def test_bf16_input_returns_bf16():
    wav = waveform(16000, 0.3)
    out = log_mel_spectrogram(wav.bfloat16(), 16000)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), log_mel_spectrogram(wav.bfloat16().float(), 16000).bfloat16().float())


def test_bad_inputs():
    wav = waveform(16000, 0.3)
    with pytest.raises(ValueError, match="sample_rate"):
        log_mel_spectrogram(wav, 44100.5)
    with pytest.raises(ValueError, match="sample_rate"):
        log_mel_spectrogram(wav, 0)
    with pytest.raises(ValueError, match="waveform"):
        log_mel_spectrogram(wav[0], 16000)
    with pytest.raises(TypeError, match="waveform"):
        log_mel_spectrogram(wav.numpy(), 16000)
    with pytest.raises(ValueError, match="too short"):
        log_mel_spectrogram(wav[..., :300], 16000)
    with pytest.raises(ValueError, match="new_freq"):
        resample_waveform(wav, 16000, -1)
    with pytest.raises(TypeError, match="waveform"):
        resample_waveform(wav.long(), 16000, 8000)


def test_works_without_torchaudio():
    """Our audio code never imports torchaudio: it runs with torchaudio made unimportable."""
    import ast
    import pathlib

    import ltx2_diffusers

    root = pathlib.Path(ltx2_diffusers.__file__).parent
    files = [*root.glob("audio/*.py"), *root.glob("models/*audio*.py"), *root.glob("models/vocoder*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "torchaudio" for n in names), f"{path.name} imports torchaudio"
    code = (
        "import sys\n"
        "sys.modules['torchaudio'] = None  # any import of torchaudio now fails\n"
        "import torch\n"
        "from ltx2_diffusers import load_audio, AutoencoderAudioMel, LTX2HiFiGANVocoder\n"
        "m = AutoencoderAudioMel(base_channels=16, latent_channels=4, mel_bins=16)\n"
        "wav, sr = load_audio(torch.rand(2, 8000) - 0.5, sample_rate=22050)\n"
        "assert m.encode_waveform(wav, sr).shape == (1, 10, 16)\n"
        "v = LTX2HiFiGANVocoder(hidden_channels=16, upsample_factors=(2,), upsample_kernel_sizes=(4,),\n"
        "    bwe_hidden_channels=16, bwe_upsample_factors=(4, 3, 4), bwe_upsample_kernel_sizes=(8, 7, 8),\n"
        "    filter_length=64, hop_length=16, window_length=64)\n"
        "assert v(torch.zeros(1, 2, 5, 64)).shape == (1, 2, 30)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# --------------------------------------------------------------------------- bounded cost for any rate pair
COMMON_RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000]


@pytest.mark.parametrize("rate", COMMON_RATES)
def test_common_rates_are_bit_identical_to_torchaudio(rate):
    """The common rates keep the dense polyphase kernel: bit for bit torchaudio's result (hence the reference's)."""
    wav = waveform(rate, 0.4, batch=2)
    assert torch.equal(resample_waveform(wav, rate, 16000), ta_functional.resample(wav, rate, 16000))
    assert torch.equal(resample_waveform(wav, 16000, rate), ta_functional.resample(wav, 16000, rate))


@pytest.mark.parametrize(
    "orig, new", [(4001, 2000), (3001, 1000), (1000, 3001), (44100, 16000), (8000, 16000), (11025, 16000)]
)
def test_banded_kernel_matches_torchaudio(orig, new):
    """The banded evaluation (used for rate pairs with large reduced factors) is torchaudio's resampler up to float
    summation order, checked directly on pairs whose dense kernel torchaudio can afford."""
    from ltx2_diffusers.audio.mel import _banded_resample

    wav = waveform(orig, 0.37, batch=3)
    gcd = math.gcd(orig, new)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-13)):
        ours = _banded_resample(wav.to(dtype), orig // gcd, new // gcd, 6, 0.99)
        expected = ta_functional.resample(wav.to(dtype), orig, new)
        assert ours.shape == expected.shape and ours.dtype == dtype
        delta = (ours - expected).abs().max().item()
        print(f"banded {orig} -> {new} Hz {dtype}: max|delta| = {delta:.3g}")
        assert delta <= tol


@pytest.mark.parametrize("orig", [4001, 8001, 383999])
def test_coprime_rates_never_build_the_dense_kernel(orig, monkeypatch):
    """4001 Hz -> 16 kHz would need a 16000 x 4015 kernel (1.27 GB peak before); it goes through the banded path,
    and a pure tone comes out as the same tone sampled at 16 kHz."""
    from ltx2_diffusers.audio import mel

    def refuse(*args, **kwargs):
        raise AssertionError("the dense polyphase kernel was built")

    monkeypatch.setattr(mel, "_sinc_resample_kernel", refuse)
    freq = 440.0
    n = orig // 2
    tone = torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / orig)[None]
    out = resample_waveform(tone, orig, 16000)
    # torchaudio's length: the quotient rounded to float32, then its ceiling (7999 at 8001 Hz, not 8000)
    assert out.shape == (1, math.ceil(float(torch.tensor(16000 * n / orig, dtype=torch.float32))))
    expected = torch.sin(2 * math.pi * freq * torch.arange(out.shape[-1], dtype=torch.float64) / 16000)
    inner = slice(400, out.shape[-1] - 400)  # away from the zero-padded edges
    delta = (out[0, inner] - expected[inner]).abs().max().item()
    print(f"{orig} Hz tone -> 16 kHz: max|delta| vs the analytic tone = {delta:.3g}")
    assert delta <= 2e-3
    mel_out = log_mel_spectrogram(tone.float()[None], orig)
    assert mel_out.shape == (1, 1, out.shape[-1] // 160 + 1, 64) and bool(torch.isfinite(mel_out).all())


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), -float("inf"), 0, 1, 99, 384001, 10**9, 10**400, True])
def test_absurd_rates_are_refused(rate):
    wav = waveform(16000, 0.3)
    with pytest.raises(ValueError, match="`sample_rate`"):
        log_mel_spectrogram(wav, rate)
    with pytest.raises(ValueError, match="`orig_freq`"):
        resample_waveform(wav, rate, 16000)
    with pytest.raises(ValueError, match="`new_freq`"):
        resample_waveform(wav, 16000, rate)


def test_banded_rate_is_within_the_references_own_rounding():
    """44056 Hz (NTSC-pulled 44.1k: 5507/2000 after the gcd) takes the banded path. It reproduces torchaudio's
    float32 kernel values, so it lands on torchaudio's float32 result to ~1e-7, while that result is itself ~3e-5
    from the float64 resample (the dense float32 kernel's own rounding at such factors)."""
    wav = waveform(44056, 0.5)
    ours = resample_waveform(wav, 44056, 16000)
    expected = ta_functional.resample(wav, 44056, 16000)
    exact = ta_functional.resample(wav.double(), 44056, 16000)
    delta = (ours - expected).abs().max().item()
    reference_rounding = (expected.double() - exact).abs().max().item()
    print(f"44056 Hz: max|ours - torchaudio| = {delta:.3g}, torchaudio float32 vs float64 = {reference_rounding:.3g}")
    assert ours.shape == expected.shape and delta <= 1e-6 and delta * 100 < reference_rounding
    torch.testing.assert_close(resample_waveform(wav.double(), 44056, 16000), exact, rtol=0, atol=1e-12)
