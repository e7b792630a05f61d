"""load_audio: real files made here with PyAV's encoders, file objects, arrays, and the bad-input table."""

import fractions
import hashlib
import io
import os
import random
import wave

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from ltx_pipelines.utils.media_io import decode_audio_from_file

from ltx2_diffusers import load_audio


DURATION = 1.3
FRAME = 1 / 24  # allowed duration error


def source_signal(rate: int, channels: int = 2, duration: float = DURATION) -> np.ndarray:
    """A non-trivial signal: chirp + tones + a little noise, different per channel, peak below 0.8."""
    t = np.arange(int(round(rate * duration))) / rate
    rng = np.random.default_rng(rate + channels)
    base = [
        0.35 * np.sin(2 * np.pi * (220 + 700 * t) * t) + 0.15 * np.sin(2 * np.pi * 1250 * t),
        0.3 * np.sin(2 * np.pi * 330 * t + 1.0) * (0.6 + 0.4 * np.cos(2 * np.pi * 2 * t))
        + 0.1 * np.sin(2 * np.pi * 2100 * t),
        0.25 * np.sin(2 * np.pi * 550 * t),
        0.2 * np.sin(2 * np.pi * 90 * t),
        0.2 * np.sin(2 * np.pi * 770 * t + 0.3),
        0.2 * np.sin(2 * np.pi * 1500 * t + 0.7),
    ]
    sig = np.stack(base[:channels]) + 0.01 * rng.standard_normal((channels, t.size))
    return sig.astype(np.float32)


LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def encode(path, codec: str, fmt: str, rate: int, signal: np.ndarray, options=None) -> None:
    """Write `signal` (C, S) with a PyAV encoder (an encoder independent of the decoder under test)."""
    layout = LAYOUTS[signal.shape[0]]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if options:
            stream.codec_context.options = options
        if codec == "vorbis":  # FFmpeg's native Vorbis encoder: ask for quality 10 (its default is poor)
            stream.codec_context.options = {**(options or {}), "global_quality": str(10 * 118)}
            stream.codec_context.flags = stream.codec_context.flags | 2  # AV_CODEC_FLAG_QSCALE
        stream.format = fmt
        step = stream.codec_context.frame_size or 1024
        for i in range(0, signal.shape[1], step):
            chunk = np.ascontiguousarray(signal[:, i : i + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, i, fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# name: (file name, codec, sample format, rate, lossless, options)
FORMATS = {
    "wav_s16": ("s16.wav", "pcm_s16le", "s16", 44100, True, None),
    "wav_s24": ("s24.wav", "pcm_s24le", "s32", 44100, True, None),
    "wav_s32": ("s32.wav", "pcm_s32le", "s32", 22050, True, None),
    "wav_f32": ("f32.wav", "pcm_f32le", "flt", 48000, True, None),
    "flac": ("a.flac", "flac", "s16", 44100, True, None),
    "mp3": ("a.mp3", "libmp3lame", "fltp", 44100, False, None),
    "aac_m4a": ("a.m4a", "aac", "fltp", 44100, False, None),
    "vorbis_ogg": ("vorbis.ogg", "vorbis", "fltp", 44100, False, {"strict": "experimental"}),
    "opus_ogg": ("opus.ogg", "libopus", "flt", 48000, False, None),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_io")
    made = {}
    for name, (fname, codec, fmt, rate, _, options) in FORMATS.items():
        encode(root / fname, codec, fmt, rate, source_signal(rate), options)
        made[name] = root / fname
    encode(root / "mono.flac", "flac", "s16", 32000, source_signal(32000, 1))
    encode(root / "surround.flac", "flac", "s16", 44100, source_signal(44100, 6))
    made["root"] = root
    return made


def aligned_correlation(decoded: np.ndarray, reference: np.ndarray, max_lag: int = 4096) -> float:
    """Minimum over channels of the Pearson correlation at the best lag (codec delay) within `max_lag`."""
    worst = 1.0
    for a, b in zip(decoded, reference):
        n = 1 << int(np.ceil(np.log2(a.size + b.size)))
        xc = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
        lags = np.r_[0 : max_lag + 1, -max_lag:0]
        lag = int(lags[np.argmax(xc[lags])])
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        m = min(x.size, y.size)
        worst = min(worst, float(np.corrcoef(x[:m], y[:m])[0, 1]))
    return worst


def file_hash(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("name", list(FORMATS))
def test_decode_format(files, name):
    _, _, _, rate, lossless, _ = FORMATS[name]
    before = file_hash(files[name])
    fds = open_fds()
    waveform, sr = load_audio(files[name])
    assert open_fds() == fds
    assert file_hash(files[name]) == before
    assert isinstance(waveform, torch.Tensor) and waveform.dtype == torch.float32
    assert sr == rate and waveform.shape[0] == 2
    assert abs(waveform.shape[1] / sr - DURATION) <= FRAME
    assert waveform.abs().max() <= 1.0
    corr = aligned_correlation(waveform.numpy(), source_signal(rate))
    assert corr > (0.99 if lossless else 0.9), corr

    # start_time / max_duration select the right span of the source
    start, length = 0.3, 0.5
    part, _ = load_audio(files[name], start_time=start, max_duration=length)
    assert abs(part.shape[1] / sr - length) <= FRAME
    src = source_signal(rate)[:, round(start * rate) : round((start + length) * rate)]
    corr = aligned_correlation(part.numpy(), src, max_lag=2048)
    assert corr > (0.99 if lossless else 0.9), corr
    if lossless:
        full = waveform[:, round(start * rate) : round((start + length) * rate)]
        torch.testing.assert_close(part, full, rtol=0, atol=0)
    tail, _ = load_audio(files[name], start_time=1.0)
    assert abs(tail.shape[1] / sr - (waveform.shape[1] / sr - 1.0)) <= FRAME


def test_lossless_values_exact(files):
    """PCM samples come back exactly: s16 / 32768, float unchanged (up to the encoder's own quantisation)."""
    src = source_signal(44100)
    wav, _ = load_audio(files["wav_s16"])
    np.testing.assert_array_equal(wav.numpy(), np.clip(np.round(src * 32768), -32768, 32767) / 32768.0)
    f32, _ = load_audio(files["wav_f32"])
    np.testing.assert_allclose(f32.numpy(), source_signal(48000), rtol=0, atol=1e-7)


def test_mono_and_surround(files):
    mono, sr = load_audio(files["root"] / "mono.flac")
    assert sr == 32000 and mono.shape == (1, round(32000 * DURATION))
    assert aligned_correlation(mono.numpy(), source_signal(32000, 1)) > 0.99
    stereo, sr = load_audio(files["root"] / "surround.flac")
    assert sr == 44100 and stereo.shape == (2, round(44100 * DURATION))
    # FFmpeg's 5.1 -> stereo matrix: L = FL + C/sqrt2 + BL/sqrt2, R = FR + C/sqrt2 + BR/sqrt2 (LFE dropped)
    s = source_signal(44100, 6)
    expected = np.stack([s[0] + s[2] / np.sqrt(2) + s[4] / np.sqrt(2), s[1] + s[2] / np.sqrt(2) + s[5] / np.sqrt(2)])
    assert aligned_correlation(stereo.numpy(), expected, max_lag=0) > 0.99


def test_file_objects(files):
    ref, sr = load_audio(files["flac"])
    with open(files["flac"], "rb") as f:
        f.seek(7)
        out, sr2 = load_audio(f)
        assert f.tell() == 7  # position restored
    assert sr2 == sr and torch.equal(out, ref)
    buffer = io.BytesIO(open(files["mp3"], "rb").read())
    out, sr3 = load_audio(buffer, start_time=0.2, max_duration=0.4)
    path_out, _ = load_audio(files["mp3"], start_time=0.2, max_duration=0.4)
    assert sr3 == 44100 and torch.equal(out, path_out)
    assert buffer.tell() == 0


def test_arrays():
    rng = np.random.default_rng(0)
    ints = rng.integers(-32768, 32767, size=(2, 1000), dtype=np.int16)
    w, sr = load_audio(ints, sample_rate=8000)
    assert sr == 8000 and w.dtype == torch.float32 and w.shape == (2, 1000)
    np.testing.assert_array_equal(w.numpy(), ints / 32768.0)
    u8 = np.array([[0, 128, 255]], dtype=np.uint8)
    np.testing.assert_allclose(load_audio(u8, sample_rate=8000)[0].numpy(), [[-1.0, 0.0, 127 / 128]])
    mono = torch.linspace(-0.5, 0.5, 16000)
    w, sr = load_audio(mono, sample_rate=16000.0, start_time=0.25, max_duration=0.5)
    assert sr == 16000 and w.shape == (1, 8000)
    torch.testing.assert_close(w[0], mono[4000:12000], rtol=0, atol=0)
    loud = np.array([[2.0, -3.0, 0.5]], dtype=np.float64)
    # beyond full scale kept as is, as ltx-pipelines reads a float file (tests/test_a2v_heldout.py): not clipped
    np.testing.assert_array_equal(load_audio(loud, sample_rate=100)[0].numpy(), [[2.0, -3.0, 0.5]])
    six = source_signal(16000, 6, 0.1)
    w, _ = load_audio(six, sample_rate=16000)
    assert w.shape == (2, six.shape[1])
    native = (rng.standard_normal((2, 1000)) * 0.1).astype(np.float32)
    for dtype in (">f4", ">f8", np.longdouble):  # big-endian and long double arrays read as the same samples
        np.testing.assert_array_equal(load_audio(native.astype(dtype), sample_rate=8000)[0].numpy(), native)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "`sample_rate` is required"),
        ({"sample_rate": 0}, ValueError, "sample_rate"),
        ({"sample_rate": 44100.5}, ValueError, "whole number"),
        ({"sample_rate": 100, "source": np.zeros((2, 3, 4))}, ValueError, "shape"),
        ({"sample_rate": 100, "source": np.zeros((2, 0))}, ValueError, "no audio samples"),
        ({"sample_rate": 100, "source": np.array([True, False])}, TypeError, "dtype"),
        ({"sample_rate": 100, "source": np.array([0.0, np.nan])}, ValueError, "NaN"),
        ({"sample_rate": 100, "start_time": 0.5}, ValueError, "at or past the end"),
        ({"sample_rate": 100, "max_duration": 0.001}, ValueError, "nothing left to decode"),
    ],
)
def test_array_errors(kwargs, error, match):
    kwargs = {"source": np.zeros((2, 50), np.float32), **kwargs}
    with pytest.raises(error, match=match):
        load_audio(**kwargs)


def test_argument_errors(files):
    with pytest.raises(ValueError, match="only for array `source`"):
        load_audio(files["flac"], sample_rate=16000)
    with pytest.raises(TypeError, match="list or tuple"):
        load_audio([0.0, 0.1])
    with pytest.raises(TypeError, match="file object"):
        load_audio(12345)
    with pytest.raises(ValueError, match="start_time"):
        load_audio(files["flac"], start_time=float("nan"))


# ---------------------------------------------------------------------------------------------- bad files
def _cut(src, fraction):
    def make(root):
        data = open(src(root), "rb").read()
        path = root / f"cut_{fraction}_{src(root).name}"
        path.write_bytes(data[: int(len(data) * fraction)])
        return path

    return make


def _scramble(src):
    def make(root):
        data = bytearray(open(src(root), "rb").read())
        lo, hi = int(len(data) * 0.3), int(len(data) * 0.7)
        data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
        path = root / f"scrambled_{src(root).name}"
        path.write_bytes(bytes(data))
        return path

    return make


def _write(name, content):
    def make(root):
        path = root / name
        path.write_bytes(content)
        return path

    return make


def _video_only(root):
    path = root / "video_only.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _zero_samples(root):
    path = root / "zero_samples.wav"
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")
    return path


def _existing(name):
    return lambda root: root / FORMATS[name][0]


BAD_FILES = {
    "missing": (lambda root: root / "does_not_exist.wav", {}, "does not exist"),
    "directory": (lambda root: root, {}, "not a regular file"),
    "empty": (_write("empty.wav", b""), {}, "is empty"),
    "text_not_audio": (_write("notes.txt", b"hello, this is not audio\n" * 40), {}, "not audio|not an audio file"),
    "video_without_audio": (_video_only, {}, "no audio stream"),
    "garbage_not_audio": (_write("noise.mp3", bytes(range(256)) * 3), {}, "not audio|not an audio file"),
    "corrupt_mp3": (_scramble(_existing("mp3")), {}, "corrupt or truncated"),
    "corrupt_vorbis": (_scramble(_existing("vorbis_ogg")), {}, "corrupt"),
    "corrupt_flac": (_scramble(_existing("flac")), {}, "corrupt or truncated"),
    "truncated_wav": (_cut(_existing("wav_s16"), 0.6), {}, "truncated"),
    "truncated_float_wav": (_cut(_existing("wav_f32"), 0.6), {}, "truncated"),
    "truncated_flac": (_cut(_existing("flac"), 0.6), {}, "corrupt or truncated"),
    "truncated_mp3": (_cut(_existing("mp3"), 0.6), {}, "corrupt or truncated"),
    "truncated_m4a": (_cut(_existing("aac_m4a"), 0.6), {}, "corrupt"),
    "truncated_opus": (_cut(_existing("opus_ogg"), 0.6), {}, "truncated or corrupt"),
    "start_at_end": (_existing("flac"), {"start_time": DURATION}, "at or past the end"),
    "start_past_end": (_existing("mp3"), {"start_time": 10.0}, "at or past the end"),
    "negative_start": (_existing("flac"), {"start_time": -0.1}, "must not be negative"),
    "negative_duration": (_existing("flac"), {"max_duration": -1.0}, "must be positive"),
    "zero_duration": (_existing("flac"), {"max_duration": 0.0}, "must be positive"),
    "no_samples": (_zero_samples, {}, "no audio samples"),
    "nothing_selected": (_existing("wav_s16"), {"max_duration": 1e-6}, "nothing left to decode"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input(files, case):
    make, kwargs, match = BAD_FILES[case]
    path = make(files["root"])
    before = file_hash(path) if path.is_file() else None
    fds = open_fds()
    with pytest.raises(ValueError, match=match) as info:
        load_audio(path, **kwargs)
    if "time" not in match and "duration" not in match and "positive" not in match and "negative" not in match:
        assert path.name in str(info.value)  # the message names the file
    assert open_fds() == fds
    if before is not None:
        assert file_hash(path) == before
    if path.is_file() and path.stat().st_size:  # same failure through a file object, position kept
        with open(path, "rb") as f:
            with pytest.raises(ValueError, match=match):
                load_audio(f, **kwargs)
            assert f.tell() == 0


# --------------------------------------------------------------------------- dtypes and sample-rate bounds
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tensors_are_read_as_float32(dtype):
    """bf16 / fp16 tensors (numpy has no bfloat16) are widened to float32: exact, the same samples."""
    src = torch.linspace(-0.9, 0.9, 4000).reshape(2, 2000).to(dtype)
    w, sr = load_audio(src, sample_rate=16000)
    assert sr == 16000 and w.dtype == torch.float32
    assert torch.equal(w, src.float())


@pytest.mark.parametrize(
    "rate, match",
    [
        (float("nan"), "whole number"),
        (float("inf"), "whole number"),
        (-float("inf"), "whole number"),
        (99, r"\[100, 384000\]"),
        (1, r"\[100, 384000\]"),
        (10**9, r"\[100, 384000\]"),
        ("16000", "whole number"),
        (True, "whole number"),
    ],
)
def test_absurd_array_sample_rates_are_refused(rate, match):
    with pytest.raises(ValueError, match=f"`sample_rate`.*{match}"):
        load_audio(np.zeros((2, 50000), np.float32), sample_rate=rate)


def test_file_outside_the_rate_range_is_refused(tmp_path):
    path = tmp_path / "infrasound.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(50)
        f.writeframes(np.zeros(500, np.int16).tobytes())
    with pytest.raises(ValueError, match=r"infrasound\.wav.*50 Hz.*\[100, 384000\]"):
        load_audio(path)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_wav_windows_are_ltx_pipelines_windows_sample_for_sample(tmp_path, rate):
    """`load_audio(path, start_time, max_duration)` of a WAV returns exactly ltx-pipelines' `decode_audio_from_file`
    samples, starts on exact ties included (`start_time * rate` ending in .5: 0.185 s at 44.1 kHz started one sample
    early), and float samples beyond full scale as they are (they were clipped)."""
    samples = np.random.default_rng(rate).standard_normal((2, 2 * rate)).astype(np.float32) * 0.6
    samples[:, ::97] *= 3.0  # overs beyond +-1
    path = tmp_path / "take.wav"
    sf.write(path, samples.T, rate, subtype="FLOAT")
    draw = random.Random(rate)
    ties = [(2 * draw.randint(0, rate) + 1) / (2 * rate) for _ in range(8)]
    starts = [0.0, 0.185, 0.125, 0.01, 1.25, *ties, *(round(draw.uniform(0, 1.5), 4) for _ in range(6))]
    for start in starts:
        for duration in (None, 0.37):
            reference = decode_audio_from_file(str(path), torch.device("cpu"), start, duration).waveform[0]
            ours, _ = load_audio(path, start_time=start, max_duration=duration)
            assert torch.equal(ours, reference), (start, duration)
    assert load_audio(path)[0].abs().max() > 1.5
