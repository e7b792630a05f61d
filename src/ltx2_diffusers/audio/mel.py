"""Log-mel front end of the LTX-2 audio VAE, in plain torch (no torchaudio).

Numerically identical to the reference `AudioProcessor`: a Hann-windowed sinc resampler equal to
`torchaudio.functional.resample` (kernel built in the waveform's dtype, in torchaudio's order of operations), then a
centred, reflect-padded magnitude STFT, a slaney-scale / slaney-normalised mel filterbank and `log(clamp(x, 1e-5))`.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as F

from ..validation import MAX_WAVEFORM_ABS, check_audio_sample_rate, check_bounded, check_real


__all__ = ["resample_waveform", "mel_filterbank", "log_mel_spectrogram"]


# The dense polyphase kernel `(new, 1, 2 * width + orig)` is built while it has at most this many elements (every
# common rate pair: 44.1 kHz -> 16 kHz is 76000, 11.025 kHz -> 16 kHz 291200); a rate pair with large reduced factors
# (4001 Hz -> 16 kHz: 16000 x 4015) goes through the banded evaluation of the same kernel instead.
_DENSE_KERNEL_ELEMENTS = 2**20
# Elements of one gathered block `(signals, outputs, taps)` in the banded path.
_BANDED_BLOCK_ELEMENTS = 2**22
# Resampling filter bounds: the kernel spans `2 * width * orig / (rolloff * min(orig, new))` taps; torchaudio's presets
# use widths 6 .. 64 and rolloffs 0.95 .. 0.99 (a rolloff below 1/2 drops most of the band).
_MAX_LOWPASS_FILTER_WIDTH = 256
_MIN_ROLLOFF = 0.5
# A mel filterbank holds `n_freqs * n_mels` floats; the LTX-2 front end's is 513 x 64, 2**24 (64 MB) is far beyond it.
_MAX_FILTERBANK_ELEMENTS = 2**24


def _check_count(name: str, value, low: int = 1, high: int | None = None) -> int:
    """An integer in `[low, high]`: `TypeError` / `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"`{name}` must be in [{low}, {high if high is not None else 'inf'}], got {value!r}")
    return int(value)


def _check_rate(name: str, value) -> int:
    return check_audio_sample_rate(value, name)


def _sinc_resample_kernel(
    orig: int, new: int, lowpass_filter_width: int, rolloff: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    """Polyphase Hann-windowed sinc kernel `(new, 1, 2 * width + orig)` for rates already divided by their gcd."""
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    # Same operations, in the same order and dtype, as torchaudio: a float64 kernel is ~2e-4 off after the mel.
    idx = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    scale = base_freq / orig
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel *= window * scale
    return kernel, width


def resampled_length(length: int, orig: int, new: int) -> int:
    """Samples of `length` resampled from `orig` to `new` (rates divided by their gcd): torchaudio's
    `ceil(torch.as_tensor(new * length / orig))`, whose quotient is rounded to float32 first (so at some lengths
    one sample fewer than the exact ceiling: 726,757 samples at 176.4 kHz -> 16 kHz)."""
    return math.ceil(float(torch.tensor(new * length / orig, dtype=torch.float32)))


def resample_waveform(
    waveform: torch.Tensor,
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Band-limited resampling of `waveform` (`[..., samples]`), equal to `torchaudio.functional.resample`.

    Rates are whole numbers of Hz in `[100, 384000]` (`validation.check_audio_sample_rate`), `lowpass_filter_width`
    an integer in [1, 256], `rolloff` in [0.5, 1]. Rate pairs whose
    reduced factors make torchaudio's dense polyphase kernel large (more than 2**20 elements: a rate sharing no
    factor with the other, such as 4001 Hz -> 16 kHz, would need 16000 x 4015) evaluate only the taps inside each
    phase's sinc window: the same kernel values, within float rounding of torchaudio (summation order), with
    memory and work bounded by the filter width. Every common rate pair keeps the dense, bit-identical path."""
    if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
        raise TypeError(f"`waveform` must be a floating point torch.Tensor, got {type(waveform).__name__}")
    orig_freq = _check_rate("orig_freq", orig_freq)
    new_freq = _check_rate("new_freq", new_freq)
    lowpass_filter_width = _check_count("lowpass_filter_width", lowpass_filter_width, 1, _MAX_LOWPASS_FILTER_WIDTH)
    rolloff = check_real("`rolloff`", rolloff)
    if not _MIN_ROLLOFF <= rolloff <= 1.0:
        raise ValueError(
            f"`rolloff` must be in [{_MIN_ROLLOFF}, 1] (a fraction of the lower Nyquist band), got {rolloff!r}"
        )
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    width = math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff))
    if new * (2 * width + orig) > _DENSE_KERNEL_ELEMENTS:
        return _banded_resample(waveform, orig, new, lowpass_filter_width, rolloff)
    kernel, width = _sinc_resample_kernel(orig, new, lowpass_filter_width, rolloff, waveform.device, waveform.dtype)

    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    num_wavs, length = flat.shape
    flat = F.pad(flat, (width, width + orig))
    out = F.conv1d(flat[:, None], kernel, stride=orig)
    out = out.transpose(1, 2).reshape(num_wavs, -1)
    out = out[..., : resampled_length(length, orig, new)]
    return out.reshape(shape[:-1] + out.shape[-1:])


def _banded_resample(
    waveform: torch.Tensor, orig: int, new: int, lowpass_filter_width: int, rolloff: float
) -> torch.Tensor:
    """`resample_waveform` for reduced rates `orig` -> `new` whose dense kernel would be large: the same kernel
    values, but only the `2 * width + 2` taps of each phase inside the sinc window (outside it the dense kernel is
    ~1e-22), gathered block by block: memory and work per output sample bounded by the filter width, not `orig`.

    Output sample `m` (frame `k = m // new`, phase `j = m % new`) is `sum_i kernel[j, i] * padded[k * orig + i]`;
    the window of phase `j` covers `i` in `(j * orig / new, j * orig / new + 2 * width)`."""
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    taps = 2 * width + 2
    device, dtype = waveform.device, waveform.dtype
    phases = torch.arange(new, device=device)
    offsets = phases * orig // new  # first tap of each phase's window
    tap = offsets[:, None] + torch.arange(taps, device=device)  # (new, taps) index into the dense kernel row
    # The dense kernel's entries at those taps, with its operations in its order and dtype.
    idx = (tap - width).to(dtype) / orig
    t = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None] / new + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel *= window * (base_freq / orig)

    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    num_wavs, length = flat.shape
    flat = F.pad(flat, (width, width + orig))
    total = min(resampled_length(length, orig, new), new * (length // orig + 1))  # what the padded input yields
    out = torch.empty(num_wavs, total, dtype=dtype, device=device)
    block = max(1, _BANDED_BLOCK_ELEMENTS // max(1, taps * num_wavs))
    steps = torch.arange(taps, device=device)
    for start in range(0, total, block):
        m = torch.arange(start, min(start + block, total), device=device)
        phase = m % new
        first = (m // new) * orig + offsets[phase]
        gathered = flat[:, first[:, None] + steps]  # (num_wavs, block, taps)
        out[:, start : start + m.shape[0]] = (gathered * kernel[phase]).sum(-1)
    return out.reshape(shape[:-1] + out.shape[-1:])


def _hz_to_mel_slaney(freq: float) -> float:
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    if freq >= min_log_hz:
        mels = min_log_hz / f_sp + math.log(freq / min_log_hz) / (math.log(6.4) / 27.0)
    return mels


def _mel_to_hz_slaney(mels: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * torch.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Slaney-scale, slaney-normalised triangular filterbank `(n_freqs, n_mels)` in float32 (as torchaudio's).

    `n_freqs >= 2` and `n_mels >= 1` integers with `n_freqs * n_mels <= 2**24`; `0 <= f_min`, `f_max <=
    sample_rate / 2` (a band above Nyquist sees no STFT bin) and at least 1 Hz per band between them (`f_max - f_min
    >= n_mels + 1`: float32 cannot tell narrower band edges apart, and a zero-width band divides by 0); `sample_rate`
    a whole number of Hz in [100, 384000]. `TypeError` / `ValueError` naming the argument."""
    n_freqs = _check_count("n_freqs", n_freqs, 2)
    n_mels = _check_count("n_mels", n_mels)
    if n_freqs * n_mels > _MAX_FILTERBANK_ELEMENTS:
        raise ValueError(
            f"`n_freqs` x `n_mels` = {n_freqs} x {n_mels} is above {_MAX_FILTERBANK_ELEMENTS} filterbank elements "
            "(the LTX-2 front end's is 513 x 64)"
        )
    sample_rate = _check_rate("sample_rate", sample_rate)
    f_min, f_max = check_real("`f_min`", f_min), check_real("`f_max`", f_max)
    if not (0.0 <= f_min and f_min + n_mels + 1 <= f_max <= sample_rate / 2):
        raise ValueError(
            f"`f_min` ({f_min:g}) and `f_max` ({f_max:g}) must satisfy 0 <= f_min, f_max <= sample_rate / 2 "
            f"({sample_rate / 2:g} Hz) and f_max - f_min >= n_mels + 1 ({n_mels + 1} Hz: at least 1 Hz per band)"
        )
    return _mel_filterbank(n_freqs, f_min, f_max, n_mels, sample_rate).clone()


@functools.lru_cache(maxsize=16)
def _mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    if f_min > f_max:
        raise ValueError(f"`f_min` ({f_min}) must not exceed `f_max` ({f_max})")
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float32, device="cpu")
    m_pts = torch.linspace(
        _hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2, dtype=torch.float32, device="cpu"
    )
    f_pts = _mel_to_hz_slaney(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    fb = torch.max(torch.zeros(1, dtype=torch.float32, device="cpu"), torch.min(down_slopes, up_slopes))
    fb *= (2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels])).unsqueeze(0)
    return fb


@functools.lru_cache(maxsize=16)
def _hann_window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft, dtype=torch.float32, device="cpu")


def log_mel_spectrogram(
    waveform: torch.Tensor,
    sample_rate: int,
    target_sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 160,
    n_mels: int = 64,
) -> torch.Tensor:
    """Log-magnitude mel spectrogram `(batch, channels, frames, n_mels)` of `waveform` `(batch, channels, samples)`.

    The waveform is resampled from `sample_rate` to `target_sample_rate` first; `frames = samples // hop + 1` at the
    target rate. Computed in float32 (float64 for float64 input), returned in the waveform's dtype. Samples must be
    finite and within +-`validation.MAX_WAVEFORM_ABS` (1e5); `n_fft >= 2`, `1 <= hop_length <= n_fft` and
    `1 <= n_mels <= n_fft // 2 + 1` integers.
    """
    if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
        raise TypeError(f"`waveform` must be a floating point torch.Tensor, got {type(waveform).__name__}")
    if waveform.ndim != 3:
        raise ValueError(f"`waveform` must be (batch, channels, samples), got shape {tuple(waveform.shape)}")
    sample_rate = _check_rate("sample_rate", sample_rate)
    target_sample_rate = _check_rate("target_sample_rate", target_sample_rate)
    n_fft = _check_count("n_fft", n_fft, 2)
    hop_length = _check_count("hop_length", hop_length, 1, n_fft)
    n_mels = _check_count("n_mels", n_mels, 1, n_fft // 2 + 1)
    check_bounded([("`waveform`", waveform)], MAX_WAVEFORM_ABS, "float audio is full scale at +-1")
    out_dtype = waveform.dtype
    if waveform.dtype not in (torch.float32, torch.float64):
        waveform = waveform.float()
    waveform = resample_waveform(waveform, sample_rate, target_sample_rate)
    if waveform.shape[-1] <= n_fft // 2:
        raise ValueError(
            f"`waveform` is too short: {waveform.shape[-1]} samples at {target_sample_rate} Hz, the reflect-padded "
            f"STFT needs more than n_fft // 2 = {n_fft // 2}"
        )
    batch, channels, length = waveform.shape
    window = _hann_window(n_fft).to(device=waveform.device, dtype=waveform.dtype)
    spec = torch.stft(
        waveform.reshape(-1, length),
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    ).abs()
    spec = spec.reshape(batch, channels, *spec.shape[-2:])
    fb = _mel_filterbank(n_fft // 2 + 1, 0.0, target_sample_rate / 2.0, n_mels, target_sample_rate)
    mel = torch.matmul(spec.transpose(-1, -2), fb.to(device=spec.device, dtype=spec.dtype)).transpose(-1, -2)
    mel = torch.log(torch.clamp(mel, min=1e-5)).to(dtype=out_dtype)
    return mel.permute(0, 1, 3, 2).contiguous()
