"""Write and read mp4 files with an H.264 video track and an AAC audio track (PyAV).

`export_to_video_with_audio` writes what the LTX-2 pipelines produce: libx264 / yuv420p video (encoder defaults)
and an AAC track at the audio's own sample rate, samples clipped to [-1, 1]. Unlike the reference muxer, mono
audio is accepted and written as a mono AAC track (it is not duplicated to stereo), and audio may be omitted.

Bounds, checked before the output is opened: the container is chosen from the path's extension, one of
`CONTAINERS` (.mp4, .m4v, .mov, .mkv: the ones that carry H.264 + AAC); `fps` in [`MIN_FPS`, `MAX_FPS`]
(0.001 .. 1000: the rate is stored as a fraction with a denominator of at most 1001, and above 1000 fps the mp4
muxer drops frames); frames with even height and width (yuv420p), each side at most `MAX_FRAME_SIDE` (16384,
libx264's limit).

`read_video_with_audio` decodes such a file (or any file FFmpeg can read) back to arrays, together with the
offset between the first audio sample and the first video frame, which timing analyses need.
"""

import math
import os
import uuid
from fractions import Fraction
from typing import NamedTuple, Optional

import av
import numpy as np
from diffusers.utils import logging

from .loaders.output_folder import _rename_noreplace, resolved_path


logger = logging.get_logger(__name__)

# Sample rates the AAC encoder accepts.
AAC_SAMPLE_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
# Output containers (by extension) that carry an H.264 video and an AAC audio track.
CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv")
MIN_FPS = 0.001
MAX_FPS = 1000.0
MAX_FRAME_SIDE = 16384


def _to_numpy(value, name: str) -> np.ndarray:
    """Torch tensor or array-like -> numpy array (torch stays an optional import)."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu()
        if value.dtype.is_floating_point and value.dtype.itemsize < 4:  # bf16/fp16 -> float32
            value = value.float()
        return value.numpy()
    raise TypeError(f"`{name}` must be a numpy array or torch tensor, got {type(value).__name__}")


def frames_to_uint8(frames, name: str = "frames") -> np.ndarray:
    """Normalise video frames to a (F, H, W, 3) uint8 array.

    Accepts a list of PIL images or of (H, W, 3) arrays, or an array/tensor shaped (F, H, W, 3), (F, 3, H, W)
    or either with a leading batch dimension of 1. Floats are taken as [0, 1] (clipped); uint8 is used as is. A
    float torch tensor is converted on its device before the host copy (a pipeline's `output_type="pt"` frames).
    """
    if isinstance(frames, (list, tuple)):
        if len(frames) == 0:
            raise ValueError(f"`{name}` is empty: need at least one frame")
        items = []
        for i, frame in enumerate(frames):
            if hasattr(frame, "convert") and hasattr(frame, "size"):  # PIL image
                items.append(np.asarray(frame.convert("RGB")))
            else:
                items.append(_to_numpy(frame, f"{name}[{i}]"))
        shapes = {item.shape for item in items}
        if len(shapes) != 1:
            raise ValueError(f"`{name}` holds frames of different shapes: {sorted(shapes)}")
        dtypes = {item.dtype for item in items}
        if len(dtypes) != 1:
            raise ValueError(f"`{name}` holds frames of different dtypes: {sorted(map(str, dtypes))}")
        array = np.stack(items)
    elif type(frames).__module__.startswith("torch") and frames.dtype.is_floating_point:
        array = _tensor_to_uint8(frames, name)
    else:
        array = _to_numpy(frames, name)

    if array.ndim == 5 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 4:
        raise ValueError(f"`{name}` must be shaped (frames, height, width, 3); got shape {tuple(array.shape)}")
    if array.shape[-1] != 3 and array.shape[1] == 3:
        array = array.transpose(0, 2, 3, 1)  # (F, 3, H, W) -> (F, H, W, 3)
    if array.shape[-1] != 3:
        raise ValueError(f"`{name}` must have 3 (RGB) channels; got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"`{name}` is empty: shape {tuple(array.shape)}")

    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"`{name}` must be uint8 or floating point in [0, 1]; got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")
    if array.min() < -0.01:
        logger.warning(f"`{name}` has negative values (min {array.min():.3f}); float frames are read as [0, 1].")
    return np.ascontiguousarray(np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8))


def _tensor_to_uint8(frames, name: str, chunk_elements: int = 2**24) -> np.ndarray:
    """A float tensor of frames in [0, 1] as uint8 on its own device, a few frames at a time (no float copy of the
    video on the host, nor a second one on the device), channels last: `round(clip(x, 0, 1) * 255)` in float32
    (float64 kept), rounded half to even, as the numpy path; the same refusals (non-finite values) and warning."""
    import torch

    frames = frames.detach()
    if frames.ndim not in (4, 5):
        raise ValueError(f"`{name}` must be shaped (frames, height, width, 3); got shape {tuple(frames.shape)}")
    if frames.shape[-1] != 3 and frames.shape[-3] == 3:
        frames = frames.movedim(-3, -1)  # (..., 3, H, W) -> (..., H, W, 3), a view
    axis = frames.ndim - 4  # the frame axis
    out = torch.empty(frames.shape, dtype=torch.uint8)
    step = max(1, chunk_elements // max(1, math.prod(frames.shape[axis + 1 :])))
    low = None
    for start in range(0, frames.shape[axis], step):
        chunk = frames.narrow(axis, start, min(step, frames.shape[axis] - start))
        chunk = chunk.float() if chunk.dtype.itemsize < 4 else chunk
        if not bool(torch.isfinite(chunk).all()):
            raise ValueError(f"`{name}` contains NaN or infinite values")
        low = min(low, float(chunk.min())) if low is not None else float(chunk.min())
        out.narrow(axis, start, chunk.shape[axis]).copy_(chunk.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8))
    if low is not None and low < -0.01:
        logger.warning(f"`{name}` has negative values (min {low:.3f}); float frames are read as [0, 1].")
    return out.numpy()


def audio_to_float32(audio, name: str = "audio") -> np.ndarray:
    """Normalise a waveform to a (channels, samples) float32 array with 1 or 2 channels.

    Accepts (samples,) as mono, (channels, samples), or (1, channels, samples).
    """
    array = _to_numpy(audio, name)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise ValueError(f"`{name}` must be shaped (channels, samples); got shape {tuple(array.shape)}")
    channels, samples = array.shape
    if channels not in (1, 2):
        hint = " (it looks like (samples, channels); pass its transpose)" if samples in (1, 2) else ""
        raise ValueError(f"`{name}` must have 1 or 2 channels in dim 0; got shape {tuple(array.shape)}{hint}")
    if samples == 0:
        raise ValueError(f"`{name}` has no samples")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"`{name}` must be floating point in [-1, 1]; got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return array


def _frame_rate(fps) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.integer, np.floating)):
        raise TypeError(f"`fps` must be a number, got {type(fps).__name__}")
    if not np.isfinite(float(fps)) or float(fps) <= 0:
        raise ValueError(f"`fps` must be positive and finite, got {fps}")
    if not MIN_FPS <= float(fps) <= MAX_FPS:
        raise ValueError(f"`fps` must be in [{MIN_FPS:g}, {MAX_FPS:g}] frames per second, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _output_path(path) -> str:
    """`path` as a str naming a file whose extension is one of `CONTAINERS`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        raise TypeError("`path` must be a str or a str os.PathLike, not bytes")
    if not path:
        raise ValueError(f"`path` is empty; give a file name ending in one of {', '.join(CONTAINERS)}")
    if os.path.isdir(path):
        raise ValueError(f"output path {path!r} is a folder; give a file name such as out.mp4")
    if os.path.splitext(path)[1].lower() not in CONTAINERS:
        raise ValueError(
            f"output path {path!r} must end in one of {', '.join(CONTAINERS)} (an H.264 + AAC container), got "
            f"{os.path.splitext(path)[1] or 'no extension'!r}"
        )
    return path


def partial_path(path) -> str:
    """A fresh temporary name beside `path` keeping its extension (FFmpeg picks the container from it):
    `dir/clip.mp4` -> `dir/.clip.<random>.partial.mp4`, `dir` resolved as the kernel resolves it (`resolved_path`:
    `link/../clip.mp4` is beside the link's target, so the final rename stays on one filesystem)."""
    folder, name = os.path.split(resolved_path(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.partial{ext}")


def move_into_place(temporary: str, path: str, overwrite: bool) -> None:
    """Rename the complete file `temporary` onto `path`. With `overwrite` an existing `path` is replaced (atomically);
    without, it never is, even one that appeared while `temporary` was being written (another run with the same
    output name): the rename fails instead of replacing (`RENAME_NOREPLACE`), with a `ValueError` naming `path`.
    The caller removes `temporary` (it is its file) when this raises."""
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        _rename_noreplace(temporary, path)
    except FileExistsError:
        raise ValueError(
            f"{path!r} appeared while this run was writing it (another run with the same output name?); it was left "
            "as it is and this run's file was not kept: choose another name, or pass --overwrite / overwrite=True "
            "to replace it"
        ) from None


def export_to_video_with_audio(
    frames, audio, sample_rate: Optional[int], path, fps: float = 24.0, overwrite: bool = True
) -> str:
    """Write `frames` (and `audio`, if given) to an H.264 + AAC mp4 at `path`; returns the path.

    Args:
        frames: list of PIL images or (H, W, 3) arrays, or an array/tensor (F, H, W, 3) or (F, 3, H, W);
            uint8, or float in [0, 1]. Height and width must be even (yuv420p), each at most `MAX_FRAME_SIDE`.
        audio: (channels, samples) float waveform in [-1, 1] (clipped), 1 or 2 channels; a 1-D waveform is
            mono. Mono is written as a mono AAC track. None writes a video-only file.
        sample_rate: audio sample rate in Hz; must be one AAC supports (see `AAC_SAMPLE_RATES`). Ignored
            when `audio` is None.
        path: output file; the container is chosen from its extension, one of `CONTAINERS` (normally .mp4;
            anything else is refused before any work, naming the path). The file is written
            under a temporary name in the same folder (`partial_path`) and renamed onto `path` once complete,
            so a failed or interrupted export leaves an existing file at `path` untouched.
        fps: frame rate in [`MIN_FPS`, `MAX_FPS`] (0.001 .. 1000); fractional rates such as 23.976 are kept as
            a fraction.
        overwrite: True (the default, as before this argument existed): an existing `path` is replaced once the
            new file is complete. False: an existing `path` is never replaced, not even one that appears while the
            file is encoded (`move_into_place`): `ValueError` naming it, the new file removed. The CLIs pass
            their `--overwrite`.
    """
    path = _output_path(path)
    if not overwrite and os.path.lexists(path):
        raise ValueError(f"output path {path!r} exists and overwrite=False; choose another name")
    rate = _frame_rate(fps)
    video = frames_to_uint8(frames)
    num_frames, height, width, _ = video.shape
    if height % 2 or width % 2:
        raise ValueError(f"`frames` height and width must be even for yuv420p; got {height}x{width}")
    if max(height, width) > MAX_FRAME_SIDE:
        raise ValueError(
            f"`frames` are {width}x{height} pixels; H.264 (libx264) takes at most {MAX_FRAME_SIDE} per side"
        )

    waveform = None
    if audio is not None:
        waveform = audio_to_float32(audio)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            raise TypeError(f"`sample_rate` must be an int, got {type(sample_rate).__name__}")
        if int(sample_rate) not in AAC_SAMPLE_RATES:
            raise ValueError(f"`sample_rate` {sample_rate} is not supported by AAC; use one of {AAC_SAMPLE_RATES}")
        sample_rate = int(sample_rate)
        peak = float(np.abs(waveform).max())
        if peak > 1.0:
            logger.warning(f"`audio` peaks at {peak:.3f}; clipping to [-1, 1].")
        waveform = np.clip(waveform, -1.0, 1.0)

    temporary = partial_path(path)
    try:
        container = av.open(temporary, mode="w")
    except av.error.FFmpegError as error:
        raise ValueError(f"cannot create output file {path!r}: {error}") from error
    try:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        audio_stream = None
        if waveform is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "mono" if waveform.shape[0] == 1 else "stereo"

        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(video[index], format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

        if audio_stream is not None:
            layout = audio_stream.layout.name
            chunk = sample_rate  # one second per frame; the encoder re-chunks to its own frame size
            for start in range(0, waveform.shape[1], chunk):
                piece = np.ascontiguousarray(waveform[:, start : start + chunk])
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
                frame.sample_rate = sample_rate
                frame.pts = start
                container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode(None))
        container.close()
        move_into_place(temporary, path, overwrite)  # an old file stays whole until the new one is complete
    except BaseException:
        try:
            container.close()  # on a full disk the trailer fails too: the first error is the one to report
        except Exception as error:
            logger.debug(f"closing the unfinished {temporary!r} failed as well: {error}")
        finally:
            if os.path.exists(temporary):  # ours: created above under a fresh name
                os.remove(temporary)
        raise
    logger.info(f"Wrote {num_frames} frames at {float(rate):g} fps{' with audio' if waveform is not None else ''}.")
    return path


class VideoWithAudio(NamedTuple):
    """Decoded media. `audio_offset_s` is the presentation time of audio sample 0 minus that of video frame 0
    (positive: the audio starts after the first frame); it already accounts for the stream start times and the
    codec priming FFmpeg removes through the container's edit list."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    fps: float
    audio: Optional[np.ndarray]  # (C, S) float32 in [-1, 1], or None
    sample_rate: Optional[int]
    audio_offset_s: float


def _audio_frame_to_float32(frame) -> np.ndarray:
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    return data.astype(np.float32)


def read_video_with_audio(path, require_audio: bool = True) -> VideoWithAudio:
    """Decode the first video stream and the first audio stream of `path`.

    Raises ValueError naming the file when it is missing, empty, corrupt, has no video stream, has no audio
    stream (only when `require_audio`), or decodes to no frames/samples.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist or is not a file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path!r} is empty (zero-length file)")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as error:
        raise ValueError(f"{path!r} cannot be read as a media file (corrupt or unsupported): {error}") from error

    with container:
        if not container.streams.video and not container.streams.audio:
            raise ValueError(f"{path!r} contains no video or audio streams (zero-length media?)")
        if not container.streams.video:
            raise ValueError(f"{path!r} has no video stream")
        video_stream = container.streams.video[0]
        video_stream.thread_type = "AUTO"
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        if audio_stream is None and require_audio:
            raise ValueError(f"{path!r} has no audio stream")

        frames, frame_times, chunks = [], [], []
        audio_start = None
        sample_rate = None
        streams = [video_stream] + ([audio_stream] if audio_stream is not None else [])
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if packet.stream.type == "video":
                        frames.append(frame.to_ndarray(format="rgb24"))
                        frame_times.append(frame.time)
                    else:
                        if audio_start is None:
                            audio_start = frame.time if frame.time is not None else 0.0
                            sample_rate = frame.sample_rate
                        chunks.append(_audio_frame_to_float32(frame))
        except av.error.FFmpegError as error:
            raise ValueError(f"{path!r} is corrupt: decoding failed: {error}") from error

        if not frames:
            raise ValueError(f"{path!r} contains no decodable video frames (zero-length or corrupt)")
        rate = video_stream.average_rate or video_stream.guessed_rate or video_stream.base_rate
        if rate:
            fps = float(rate)
        elif len(frames) > 1 and None not in frame_times[:2] and frame_times[1] > frame_times[0]:
            fps = 1.0 / (frame_times[1] - frame_times[0])
        else:
            raise ValueError(f"{path!r}: cannot determine the video frame rate")

        audio = None
        if audio_stream is not None and chunks:
            audio = np.concatenate(chunks, axis=1)
        if audio is None or audio.shape[1] == 0:
            if require_audio:
                raise ValueError(f"{path!r}: the audio stream contains no decodable samples (zero-length or corrupt)")
            audio, sample_rate = None, None

    video_start = frame_times[0] if frame_times[0] is not None else 0.0
    offset = audio_start - video_start if audio is not None else 0.0
    return VideoWithAudio(np.stack(frames), fps, audio, sample_rate, float(offset))
