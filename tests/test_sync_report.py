"""Sync report on synthetic H.264 + AAC clips whose motion follows a drum track with a known lag."""

import json
import os
import re

import av
import numpy as np
import pytest
import torch
from PIL import Image

import ltx2_diffusers
from ltx2_diffusers.sync import main, sync_report, sync_report_from_file
from ltx2_diffusers.video_io import export_to_video_with_audio, read_video_with_audio


SIZE, SECONDS = 64, 4.0
JSON_KEYS = {
    "fps", "sample_rate", "num_frames", "audio_offset_s", "max_lag_frames", "lag_convention", "best_lag_frames",
    "best_lag_ms", "sync_score", "zero_lag_correlation", "lags_frames", "correlation", "frame_times_s",
    "onset_envelope", "motion_energy", "beat_times_s", "source",
}  # fmt: skip


def _beat_frames(num_frames, seed=0):
    """Beats at irregular gaps (5..12 frames) so the cross-correlation has a single clear peak."""
    rng = np.random.default_rng(seed)
    beats, frame = [], 4
    while frame < num_frames - 4:
        beats.append(frame)
        frame += int(rng.integers(5, 13))
    return np.array(beats)


def _jump_video(event_frames, num_frames, seed):
    """A white square on grey that jumps to a new place at each event frame, still otherwise."""
    rng = np.random.default_rng(seed)
    frames = np.full((num_frames, SIZE, SIZE, 3), 60, np.uint8)
    y, x = rng.integers(0, SIZE - 16, size=2)
    for i in range(num_frames):
        if i in event_frames:
            y, x = rng.integers(0, SIZE - 16, size=2)
        frames[i, y : y + 16, x : x + 16] = 230
    return frames


def _drum_track(beat_times_s, sample_rate, num_samples, channels, seed):
    """Decaying noise bursts (drum hits) at the given times, over faint background noise."""
    rng = np.random.default_rng(seed)
    audio = 1e-3 * rng.standard_normal((channels, num_samples))
    hit = int(0.08 * sample_rate)
    decay = np.exp(-np.arange(hit) / (0.012 * sample_rate))
    for t in beat_times_s:
        start = int(round(t * sample_rate))
        if 0 <= start < num_samples:
            n = min(hit, num_samples - start)
            audio[:, start : start + n] += 0.2 * rng.standard_normal((channels, n)) * decay[:n]
    return audio.astype(np.float32)


def _clip(lag, sample_rate, channels, fps, audio_start_s=0.0, video_start_s=0.0, control=False):
    """Frames and audio where motion follows each beat `lag` frames later (control: motion ignores the beats).

    Beats are jittered by up to 0.3 frame off the frame grid; sample 0 of the audio plays at `audio_start_s`,
    frame 0 at `video_start_s`."""
    num_frames = int(SECONDS * fps)
    beats = _beat_frames(num_frames)
    jitter = np.random.default_rng(1).uniform(-0.3, 0.3, len(beats))
    beat_times = (beats + jitter) / fps + video_start_s - audio_start_s
    events = set(_beat_frames(num_frames, seed=7)) if control else {int(b) + lag for b in beats}
    frames = _jump_video(events, num_frames, seed=2)
    audio = _drum_track(beat_times, sample_rate, int((SECONDS + 0.5) * sample_rate), channels, seed=3)
    return frames, audio


def _write_pyav(path, frames, audio, sample_rate, fps, audio_start_s=0.0, video_start_s=0.0):
    """Independent writer: PyAV directly, packed s16 audio in 1024-sample frames, optional stream start offsets."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = SIZE, SIZE, "yuv420p"
        layout = "mono" if audio.shape[0] == 1 else "stereo"
        sound = container.add_stream("aac", rate=sample_rate)
        sound.layout = layout
        first_frame = round(video_start_s * fps)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = first_frame + i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        pcm = (np.clip(audio, -1, 1).T * 32767).astype(np.int16)  # (S, C) interleaved
        first_sample = round(audio_start_s * sample_rate)
        for start in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 1024].reshape(1, -1), "s16", layout)
            frame.sample_rate, frame.pts = sample_rate, first_sample + start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


def _clock_error_s(media, written, written_offset_s):
    """How much later the decoded audio plays on the video clock than the written audio (cross-correlation)."""
    a, b = written.mean(0), media.audio.mean(0)
    n = len(a) + len(b)
    xcorr = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    k = int(np.argmax(xcorr))
    k = k - n if k > n // 2 else k  # decoded[i] ~ written[i - k]
    return media.audio_offset_s - written_offset_s + k / media.sample_rate


# (writer, lag, sample rate, channels, fps, audio start s, video start s)
CASES = [
    ("ours", 0, 16000, 1, 24, 0.0, 0.0),
    ("ours", 3, 48000, 2, 24, 0.0, 0.0),
    ("ours", -2, 44100, 1, 30, 0.0, 0.0),
    ("pyav", 0, 22050, 2, 24, 0.3, 0.0),
    ("pyav", 3, 44100, 1, 25, 0.0, 0.4),
    ("pyav", -2, 16000, 2, 24, 0.5, 0.0),
]


@pytest.mark.parametrize("writer,lag,sample_rate,channels,fps,audio_start,video_start", CASES)
def test_recovers_lag_exactly(tmp_path, writer, lag, sample_rate, channels, fps, audio_start, video_start):
    frames, audio = _clip(lag, sample_rate, channels, fps, audio_start, video_start)
    path = tmp_path / "clip.mp4"
    if writer == "ours":
        export_to_video_with_audio(frames, audio, sample_rate, path, fps)
    else:
        _write_pyav(path, frames, audio, sample_rate, fps, audio_start, video_start)
    # The decoded audio sits on the video clock where it was written (to 2 ms), whatever the stream start times;
    # AAC priming is either trimmed through the edit list or kept and counted in the offset.
    media = read_video_with_audio(path)
    assert abs(_clock_error_s(media, audio, audio_start - video_start)) < 2e-3
    report = sync_report_from_file(path)
    assert report.best_lag_frames == lag
    assert report.best_lag_ms == pytest.approx(lag * 1000 / fps)
    assert report.sync_score > 0.8


@pytest.mark.parametrize("sample_rate", [16000, 44100, 48000])
def test_onset_lands_on_nearest_frame(sample_rate):
    # A hit 0.3 frame (12.5 ms) before or after frame 10 must land on frame 10: the onset detector's window
    # (librosa center=True) and its one-hop difference are compensated (a window-sized error would move it).
    frames = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), np.uint8)
    for shift in (-0.3, 0.0, 0.3):
        audio = _drum_track([(10 + shift) / 24], sample_rate, sample_rate, 1, seed=4)
        report = sync_report(frames, audio, sample_rate, 24)
        assert np.nanargmax(report.onset_envelope) == 10
        assert report.beat_times_s == pytest.approx([(10 + shift) / 24], abs=6e-3)


def test_control_scores_clearly_lower(tmp_path):
    # Measured: synced 0.96, this control 0.24 (0.15-0.37 over 8 control seeds). Required margin: 0.4.
    scores = {}
    for name, control in (("synced", False), ("control", True)):
        frames, audio = _clip(0, 44100, 2, 24, control=control)
        export_to_video_with_audio(frames, audio, 44100, tmp_path / f"{name}.mp4", 24)
        scores[name] = sync_report_from_file(tmp_path / f"{name}.mp4").sync_score
    assert scores["synced"] - scores["control"] > 0.4, scores
    assert scores["control"] < 0.5, scores


def test_in_memory_arrays_and_package_entry_point():
    frames, audio = _clip(3, 16000, 1, 24)
    report = ltx2_diffusers.sync_report(torch.from_numpy(frames).float() / 255, audio[0], 16000, 24)
    assert report.best_lag_frames == 3 and list(report.lags_frames) == list(range(-12, 13))  # default: fps / 2
    report = sync_report(frames, audio, 16000, 24, max_lag_frames=5)
    assert report.best_lag_frames == 3 and list(report.lags_frames) == list(range(-5, 6))


def test_cli_writes_png_and_json(tmp_path, capsys):
    frames, audio = _clip(3, 48000, 2, 24)
    video = export_to_video_with_audio(frames, audio, 48000, tmp_path / "a2v.mp4", 24)
    assert main([video, "--out", str(tmp_path / "report.png")]) == 0
    assert "+3 frames" in capsys.readouterr().out
    with Image.open(tmp_path / "report.png") as image:
        assert image.size == (1000, 650)
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data) == JSON_KEYS
    assert data["best_lag_frames"] == 3 and len(data["motion_energy"]) == data["num_frames"] == 96
    assert (
        main([video]) == 0 and os.path.exists(tmp_path / "a2v_sync.png") and os.path.exists(tmp_path / "a2v_sync.json")
    )


def test_export_roundtrip_mono_pil_and_tensor(tmp_path):
    frames, audio = _clip(0, 16000, 1, 24)
    path = export_to_video_with_audio([Image.fromarray(f) for f in frames], audio, 16000, tmp_path / "m.mp4", 24)
    media = read_video_with_audio(path)
    assert media.frames.shape == frames.shape and media.frames.dtype == np.uint8
    assert media.fps == 24 and media.sample_rate == 16000 and media.audio.shape[0] == 1  # mono stays mono
    assert media.audio_offset_s == 0.0 and media.audio.shape[1] >= audio.shape[1]
    assert np.abs(media.frames.astype(int) - frames).mean() < 3
    chw = torch.from_numpy(frames[:8]).permute(0, 3, 1, 2).float() / 255
    media = read_video_with_audio(export_to_video_with_audio(chw, None, None, tmp_path / "v.mp4", 12.5), False)
    assert media.frames.shape == (8, SIZE, SIZE, 3) and media.fps == 12.5 and media.audio is None


def _audio_only(path):
    with av.open(str(path), "w") as container:
        sound = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), "fltp", "mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(sound.encode(frame))
        container.mux(sound.encode())


def _no_frames(path):
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height = SIZE, SIZE
        container.add_stream("aac", rate=16000)
        container.start_encoding()


def _truncated(path):
    noise = np.random.default_rng(0).integers(0, 256, (24, SIZE, SIZE, 3), np.uint8)  # big mdat, moov at the end
    export_to_video_with_audio(noise, np.zeros((2, 16000)), 16000, path, 24)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


BAD_FILES = {
    "missing": (lambda p: None, "does not exist"),
    "empty": (lambda p: open(p, "wb").close(), "empty"),
    "corrupt": (lambda p: open(p, "wb").write(np.random.default_rng(0).bytes(4096)), "corrupt"),
    "truncated": (_truncated, "corrupt"),
    "no_audio": (
        lambda p: export_to_video_with_audio(np.zeros((8, 16, 16, 3), np.uint8), None, None, p, 8),
        "no audio",
    ),
    "no_video": (_audio_only, "no video stream"),
    "no_frames": (_no_frames, "zero-length"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_raise_value_error(tmp_path, kind):
    make, message = BAD_FILES[kind]
    path = tmp_path / f"{kind}.mp4"
    make(path)
    with pytest.raises(ValueError, match=message) as error:
        sync_report_from_file(path)
    assert f"{kind}.mp4" in str(error.value)


@pytest.mark.parametrize(
    "frames,audio,sample_rate,fps,error,message",
    [
        ("clip.png", None, None, 24, TypeError, "frames"),
        (np.zeros((4, 15, 16, 3), np.uint8), None, None, 24, ValueError, "even"),
        (np.zeros((4, 16, 16, 3), np.int32), None, None, 24, TypeError, "frames"),
        (np.zeros((4, 16, 16, 3)), np.zeros((3, 800)), 16000, 24, ValueError, "audio.*1 or 2 channels"),
        (np.zeros((4, 16, 16, 3)), np.zeros((800, 2)), 16000, 24, ValueError, "transpose"),
        (np.zeros((4, 16, 16, 3)), np.zeros((2, 800)), 12345, 24, ValueError, "sample_rate"),
        (np.zeros((4, 16, 16, 3)), None, None, 0, ValueError, "fps"),
    ],
)
def test_export_rejects_bad_inputs(tmp_path, frames, audio, sample_rate, fps, error, message):
    with pytest.raises(error, match=message):
        export_to_video_with_audio(frames, audio, sample_rate, tmp_path / "x.mp4", fps)
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------------------ export bounds (before any output)
CLIP = np.zeros((3, 16, 16, 3), np.uint8)
SOUND = np.zeros((2, 16000), np.float32)


def _refused(tmp_path, error, match, **kwargs):
    """The export is refused with `error` matching `match`; the folder is left exactly as it was (an existing
    file at the target keeps its bytes, no partial file appears)."""
    (tmp_path / "keep.mp4").write_bytes(b"user data")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args = dict(frames=CLIP, audio=SOUND, sample_rate=16000, path=tmp_path / "keep.mp4", fps=24)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        export_to_video_with_audio(**args)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("name", ["x.wav", "x.png", "x.txt", "x.webm", "noext", "x.mp4.part"])
def test_export_refuses_paths_that_are_not_h264_aac_containers(tmp_path, name):
    path = str(tmp_path / name)
    _refused(
        tmp_path, ValueError, rf"{re.escape(repr(path))} must end in one of \.mp4, \.m4v, \.mov, \.mkv", path=path
    )


def test_export_refuses_an_empty_or_non_path(tmp_path):
    _refused(tmp_path, ValueError, r"`path` is empty.*\.mp4, \.m4v, \.mov, \.mkv", path="")
    _refused(tmp_path, TypeError, "`path` must be a str", path=5)


@pytest.mark.parametrize(
    "fps", [1e300, 1e9, 2000.0, 1000.5, 1e-4, 1e-9, 0.0009, -24.0, float("nan"), np.float64("inf")]
)
def test_export_refuses_fps_outside_its_range(tmp_path, fps):
    match = r"`fps` must be in \[0\.001, 1000\] frames per second" if 0 < fps < float("inf") else "`fps` must be"
    _refused(tmp_path, ValueError, match, fps=fps)


@pytest.mark.parametrize(("shape", "match"), [((1, 2, 40000, 3), "40000x2 pixels"), ((1, 16386, 2, 3), "2x16386")])
def test_export_refuses_frames_libx264_cannot_take(tmp_path, shape, match):
    _refused(tmp_path, ValueError, rf"`frames` are {match}.* at most 16384 per side", frames=np.zeros(shape, np.uint8))


@pytest.mark.parametrize(("fps", "name"), [(0.001, "slow.mp4"), (1000, "fast.MKV"), (24, "clip.mov"), (24, "c.m4v")])
def test_export_bounds_and_containers_write_readable_files(tmp_path, fps, name):
    path = export_to_video_with_audio(CLIP, SOUND, 16000, tmp_path / name, fps)
    media = read_video_with_audio(path)
    assert media.frames.shape == CLIP.shape and media.fps == pytest.approx(fps) and media.sample_rate == 16000
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
