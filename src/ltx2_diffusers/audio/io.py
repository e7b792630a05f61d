"""Reading audio for the LTX-2 audio VAE: any file PyAV decodes, or an already decoded array."""

from __future__ import annotations

import io
import math
import numbers
import os
from fractions import Fraction

import av
import numpy as np
import torch

from ..validation import (
    MAX_AUDIO_SAMPLE_RATE,
    MAX_WAVEFORM_ABS,
    MIN_AUDIO_SAMPLE_RATE,
    check_audio_sample_rate,
    check_bounded,
    check_holds_values,
    finite_float,
    shown,
)


__all__ = ["load_audio"]

# Integer sample formats: (offset, scale) so that float = (int - offset) / scale lies in [-1, 1).
_INT_SCALE = {
    "u8": (128.0, 128.0),
    "s16": (0.0, 32768.0),
    "s32": (0.0, 2147483648.0),
    "s64": (0.0, 9223372036854775808.0),
}
# Why a waveform beyond `MAX_WAVEFORM_ABS` is refused (samples beyond +-1 below it are kept, as the reference keeps them).
_FULL_SCALE = "float audio is full scale at +-1; validation.MAX_WAVEFORM_ABS"
# What the window messages call `start_time` / `max_duration` unless a caller names its own arguments.
_TIMES = ("start_time", "max_duration")
# A fully decoded stream this much shorter than its header says is reported as truncated or corrupt.
_SHORTFALL_TOLERANCE_S = 0.05
_SHORTFALL_TOLERANCE_REL = 0.02


def _frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame as float32 `(channels, samples)`, integer formats scaled to [-1, 1)."""
    fmt = frame.format.name
    arr = frame.to_ndarray()
    if not frame.format.is_planar:
        arr = arr.reshape(-1, len(frame.layout.channels)).T
    base = fmt.rstrip("p")
    if base in _INT_SCALE:
        offset, scale = _INT_SCALE[base]
        return ((arr.astype(np.float64) - offset) / scale).astype(np.float32)
    return arr.astype(np.float32, copy=False)


def _downmix(samples: np.ndarray, layout: str, sample_rate: int) -> np.ndarray:
    """`(C > 2, S)` float32 -> stereo with FFmpeg's standard downmix matrix for `layout`."""
    try:
        # packed samples: PyAV's planar frame fails from 8 channels on (an IndexError at 8, reads past its plane
        # pointers above: a different result run to run); for fewer channels both give the same stereo
        packed = np.ascontiguousarray(samples.T.reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
        frame.sample_rate = sample_rate
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=sample_rate)
        out = resampler.resample(frame) + resampler.resample(None)
        stereo = np.concatenate([f.to_ndarray() for f in out], axis=1)
        if stereo.shape[1] == samples.shape[1]:
            return stereo.astype(np.float32, copy=False)
    except (av.error.FFmpegError, ValueError, IndexError):  # a layout FFmpeg has no matrix for
        pass
    # Unknown layout: average even channels to the left, odd channels to the right.
    return np.stack([samples[0::2].mean(axis=0), samples[1::2].mean(axis=0)]).astype(np.float32)


def _check_times(start_time, max_duration) -> tuple[float, float | None]:
    start = finite_float(start_time)
    if start is None:
        raise ValueError(f"`start_time` must be a finite number of seconds, got {shown(start_time)}")
    if start < 0:
        raise ValueError(f"`start_time` must not be negative, got {start_time}")
    if max_duration is not None:
        if (
            isinstance(max_duration, bool)
            or not isinstance(max_duration, numbers.Real)
            or max_duration != max_duration
        ):
            raise ValueError(f"`max_duration` must be a number of seconds or None, got {shown(max_duration)}")
        if max_duration <= 0:
            raise ValueError(f"`max_duration` must be positive, got {shown(max_duration)}")
        # inf, or an int beyond float's range: no limit
        max_duration = finite_float(max_duration)
    return start, max_duration


def _sample_index(seconds: float, sample_rate: int) -> float:
    """`round(seconds * sample_rate)`, or inf where that product overflows a float (past the end of any stream)."""
    position = seconds * sample_rate
    return round(position) if math.isfinite(position) else math.inf


def _start_index(seconds: float, sample_rate: int) -> float:
    """The first sample ltx-pipelines' `decode_audio_from_file` keeps for a start of `seconds`: it seeks to
    `int(seconds / time_base)` (where a PCM stream lands exactly) and drops `round((seconds - that time) * rate)`
    samples of the frame found there. That is `round(seconds * rate)` except at exact ties (`seconds * rate` ending in
    .5, e.g. 0.185 s at 44.1 kHz), which its float arithmetic settles; inf where the product overflows a float."""
    quotient = seconds / float(Fraction(1, sample_rate))
    if not math.isfinite(quotient):
        return math.inf
    first = int(quotient)
    return first + max(round((seconds - float(Fraction(first, sample_rate))) * sample_rate), 0)


def _window(
    total: int, sample_rate: int, start_time: float, max_duration: float | None, name: str, times=_TIMES
) -> tuple[int, int]:
    """Sample range `[begin, end)` selected by `start_time` / `max_duration` in a stream of `total` samples (`times`:
    what the messages call those two)."""
    if total == 0:
        raise ValueError(f"{name} contains no audio samples: nothing to decode")
    begin = _start_index(start_time, sample_rate)
    if begin >= total:
        raise ValueError(
            f"{name}: {times[0]}={start_time} s is at or past the end of the audio ({total / sample_rate:.3f} s)"
        )
    end = total if max_duration is None else min(total, begin + _sample_index(max_duration, sample_rate))
    if end <= begin:
        raise ValueError(
            f"{name}: nothing left to decode: {times[0]}={start_time} s and {times[1]}={max_duration} s select no "
            f"samples at {sample_rate} Hz"
        )
    return begin, end


def _finish(samples: np.ndarray, layout: str, sample_rate: int) -> torch.Tensor:
    if samples.shape[0] > 2:
        samples = _downmix(samples, layout, sample_rate)
    # Not clipped: ltx-pipelines reads float samples beyond full scale as they are (its A2Vid encodes them and
    # returns them); writing a video clips them (`export_to_video_with_audio`).
    return torch.from_numpy(samples.astype(np.float32, copy=False)).contiguous()


def _load_array(
    source, sample_rate, start_time, max_duration, names=("source", "sample_rate")
) -> tuple[torch.Tensor, int]:
    src, rate = names[:2]
    if sample_rate is None:
        raise ValueError(f"`{rate}` is required when `{src}` is an array of samples")
    sample_rate = check_audio_sample_rate(sample_rate, rate)
    if isinstance(source, torch.Tensor):
        check_holds_values(f"the `{src}` tensor", source)
        source = source.detach().cpu()
        if source.is_floating_point() and source.dtype != torch.float64:
            source = source.float()  # bfloat16 / float16 / float8 -> float32: exact, numpy has no bfloat16
        arr = source.numpy()
    else:
        arr = np.asarray(source)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"`{src}` array must hold integer or floating point samples, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[0] > 64:
        raise ValueError(f"`{src}` array must be [samples] or [channels (1..64), samples], got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        offset = (int(info.max) + 1) / 2 if info.min == 0 else 0.0
        arr = ((arr.astype(np.float64) - offset) / (int(info.max) + 1 - offset)).astype(np.float32)
    else:
        if not np.isfinite(arr).all():
            raise ValueError(f"`{src}` array contains NaN or infinite samples")
        native = arr.astype(np.float64)  # big-endian and long double arrays too (torch reads neither)
        check_bounded([(f"`{src}` array", torch.from_numpy(native))], MAX_WAVEFORM_ABS, _FULL_SCALE)
        arr = native.astype(np.float32)
    begin, end = _window(
        arr.shape[1], sample_rate, start_time, max_duration, f"the `{src}` array", names[2:] or _TIMES
    )
    layout = {3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}.get(
        arr.shape[0], f"{arr.shape[0]} channels"
    )
    return _finish(np.ascontiguousarray(arr[:, begin:end]), layout, sample_rate), sample_rate


def _wav_missing_bytes(source) -> int:
    """Bytes a RIFF/WAVE file's `data` chunk declares beyond the end of the file (0 if complete or not a WAV)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            head, size = f.read(1 << 16), os.fstat(f.fileno()).st_size
    else:
        source.seek(0)
        head = source.read(1 << 16)
        size = source.seek(0, io.SEEK_END)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    offset = 12
    while offset + 8 <= len(head):
        chunk, length = head[offset : offset + 4], int.from_bytes(head[offset + 4 : offset + 8], "little")
        if chunk == b"data":
            if length in (0, 0xFFFFFFFF):  # streamed WAV: size unknown
                return 0
            return max(0, offset + 8 + length - size)
        offset += 8 + length + (length & 1)
    return 0


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    name = getattr(source, "name", None)
    return f"file object {name!r}" if isinstance(name, str) else "the file object"


def _decode(container, stream, name, start_time, max_duration, times=_TIMES) -> tuple[np.ndarray, str, int, bool]:
    """Decode the selected samples; `complete` tells whether the whole stream was read."""
    sample_rate = stream.codec_context.sample_rate or stream.rate
    try:
        check_audio_sample_rate(sample_rate, "sample_rate")
    except ValueError:
        raise ValueError(
            f"{name} is sampled at {sample_rate!r} Hz, outside the supported [{MIN_AUDIO_SAMPLE_RATE}, "
            f"{MAX_AUDIO_SAMPLE_RATE}] Hz; resample it into that range first (e.g. ffmpeg -ar 48000)"
        ) from None
    begin = _start_index(start_time, sample_rate)
    wanted = None if max_duration is None else _sample_index(max_duration, sample_rate)
    if wanted == math.inf:
        wanted = None
    if wanted == 0:
        raise ValueError(
            f"{name}: nothing left to decode: {times[1]}={max_duration} s selects no samples at {sample_rate} Hz"
        )
    chunks, seen, kept, layout, channels = [], 0, 0, None, None
    complete = True
    try:
        for frame in container.decode(stream):
            if frame.samples == 0:
                continue
            if frame.sample_rate != sample_rate:
                raise ValueError(
                    f"{name}: the sample rate changes mid-stream ({sample_rate} -> {frame.sample_rate} Hz)"
                )
            data = _frame_to_float(frame)
            if channels is None:
                channels, layout = data.shape[0], frame.layout.name
            elif data.shape[0] != channels:
                raise ValueError(f"{name}: the channel count changes mid-stream ({channels} -> {data.shape[0]})")
            lo = max(begin - seen, 0)
            seen += data.shape[1]
            if lo < data.shape[1]:
                piece = data[:, lo:]
                if wanted is not None:
                    piece = piece[:, : wanted - kept]
                chunks.append(piece)
                kept += piece.shape[1]
            if wanted is not None and kept >= wanted:
                complete = False
                break
    except av.error.FFmpegError as e:
        raise ValueError(
            f"{name} has a corrupt or truncated audio stream: decoding failed after {seen / sample_rate:.3f} s ({e})"
        ) from None
    if complete and seen and stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
        if declared - seen / sample_rate > max(_SHORTFALL_TOLERANCE_S, _SHORTFALL_TOLERANCE_REL * declared):
            raise ValueError(
                f"{name} has a corrupt or truncated audio stream: only {seen / sample_rate:.3f} s of the "
                f"{declared:.3f} s its header declares could be decoded"
            )
    _window(seen, sample_rate, start_time, max_duration if complete else None, name, times)
    return np.concatenate(chunks, axis=1), layout, sample_rate, complete


def _load_file(source, start_time, max_duration, argument: str = "source", times=_TIMES) -> tuple[torch.Tensor, int]:
    name = _describe(source)
    position = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ValueError(f"audio file {name} does not exist")
        if not os.path.isfile(path):
            raise ValueError(f"audio source {name} is not a regular file")
        if os.path.getsize(path) == 0:
            raise ValueError(f"audio file {name} is empty")
        target = path
    else:
        if not all(callable(getattr(source, m, None)) for m in ("read", "seek", "tell")):
            raise TypeError(
                f"`{argument}` must be a path, a readable and seekable binary file object, or an array of samples; "
                f"got {type(source).__name__}"
            )
        if isinstance(source, io.TextIOBase):  # read() would decode the bytes as text: UnicodeDecodeError
            raise TypeError(f"`{argument}` is a text file object: open the audio file in binary mode ('rb')")
        position = source.tell()
        size = source.seek(0, io.SEEK_END)
        source.seek(0)
        if size == 0:
            source.seek(position)
            raise ValueError(f"audio {name} is empty")
        target = source
    try:
        try:
            container = av.open(target, mode="r")
        except EOFError:
            raise ValueError(
                f"{name} is truncated or corrupt: PyAV reached the end of the file while opening it"
            ) from None
        except av.error.FFmpegError as e:
            raise ValueError(f"{name} is not an audio file PyAV can read, or it is corrupt ({e})") from None
        try:
            audio = [s for s in container.streams if s.type == "audio"]
            if not audio:
                raise ValueError(f"{name} is not audio: it has no audio stream")
            is_wav = container.format.name == "wav"
            samples, layout, sample_rate, complete = _decode(
                container, audio[0], name, start_time, max_duration, times
            )
        finally:
            container.close()
        if complete and is_wav:
            missing = _wav_missing_bytes(target)
            if missing:
                raise ValueError(
                    f"{name} is a truncated WAV file: its data chunk declares {missing} more bytes than the file has"
                )
    finally:
        if position is not None:
            source.seek(position)
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad.any(axis=0)))
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or infinite samples (the first at "
            f"{start_time + first / sample_rate:.3f} s): it cannot drive a video"
        )
    check_bounded([(name, torch.from_numpy(samples))], MAX_WAVEFORM_ABS, _FULL_SCALE)
    return _finish(samples, layout, sample_rate), sample_rate


def load_audio(
    source,
    start_time: float = 0.0,
    max_duration: float | None = None,
    sample_rate: int | None = None,
    *,
    names: tuple[str, ...] = ("source", "sample_rate"),
) -> tuple[torch.Tensor, int]:
    """Decode audio to `(waveform, sample_rate)`: a float32 `[channels, samples]` tensor (full scale +-1), native rate.

    `source`: a path or binary file object (WAV, FLAC, MP3, M4A/AAC, OGG Vorbis/Opus, anything PyAV decodes; the
    first audio stream is read, from the start of the file, sample-exactly), or a numpy/torch array `[samples]` /
    `[channels, samples]` (integer samples are scaled to [-1, 1); floating tensors of any precision, bfloat16
    included, are read as float32) together with its `sample_rate` (only used for arrays: a whole number of Hz in
    [100, 384000], `validation.MIN_AUDIO_SAMPLE_RATE` / `MAX_AUDIO_SAMPLE_RATE`; a file outside that range is
    refused too). Mono stays one channel; more than two channels are downmixed to stereo (FFmpeg's matrix). Float
    samples beyond full scale (+-1) are kept as they are, as ltx-pipelines reads them. `start_time` /
    `max_duration` (seconds) select `round(t * rate)` samples, a start on an exact tie where ltx-pipelines'
    `decode_audio_from_file` starts (a `max_duration` of inf or beyond float's range: to the end).

    Raises `ValueError` naming the source for a missing, empty, non-audio, corrupt or truncated file, NaN or
    infinite samples or samples beyond +-`validation.MAX_WAVEFORM_ABS` (1e5, 100 dB above full scale; decoded from
    a file or given in an array), a negative or non-finite start, a non-positive duration, a start at or past
    the end, or a selection with nothing left to decode. The input file is only read (a file object's position is
    restored). `names`: what the messages call `source` and `sample_rate`, optionally then `start_time` and
    `max_duration` (a caller's own arguments).
    """
    src, rate = names[:2]
    start_time, max_duration = _check_times(start_time, max_duration)
    # a numpy scalar: refused by its shape; a numpy string (`np.str_`, a str too) is a path
    if isinstance(source, (np.ndarray, np.generic, torch.Tensor)) and not isinstance(source, (str, bytes)):
        return _load_array(source, sample_rate, start_time, max_duration, names)
    if sample_rate is not None:
        raise ValueError(
            f"`{rate}` is only for array `{src}`; a file is returned at its own rate (resample it afterwards)"
        )
    if isinstance(source, (list, tuple)):
        raise TypeError(f"`{src}` must be a path, a file object or a numpy/torch array, not a list or tuple")
    return _load_file(source, start_time, max_duration, src, tuple(names[2:]) or _TIMES)
