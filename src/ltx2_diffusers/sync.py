"""Audio-video sync report: how closely does a video's motion follow its audio's onsets?

Two per-frame curves are compared:

* audio onset strength (`librosa.onset.onset_strength` on the mono mix), resampled to the video frame rate by
  taking, for each frame, the maximum envelope value whose time is nearest to that frame's presentation time;
* video motion energy: mean absolute difference between a frame and the previous one (RGB, scale [0, 1]),
  assigned to the later frame, i.e. to the time at which the change becomes visible. Frame 0 has none.

Their Pearson correlation is computed for every lag in [-max_lag_frames, +max_lag_frames].

Lag sign convention: ``lag > 0`` means the video is LATE: motion happens ``lag`` frames after the audio onset
that drives it (``motion[i + lag]`` pairs with ``onset[i]``). ``lag < 0`` means the video is early (motion
before the sound). ``best_lag_ms = best_lag_frames * 1000 / fps``.

Timing: with librosa's ``center=True`` the envelope value ``j`` is the rise in energy as the analysis window's
leading edge advances from ``(j - 1) * hop`` to ``j * hop``, so it is placed midway, at ``(j - 0.5) * hop / sr``
seconds after audio sample 0 (window ~25 ms, hop ~3 ms; onsets land within a few ms of their true time, a bit
late over a noise floor). The audio start offset (stream start times and AAC priming, see
`read_video_with_audio`) is added to put onsets on the video's clock.

JSON keys (`SyncReport.save_json`): ``fps``, ``sample_rate``, ``num_frames``, ``audio_offset_s``,
``max_lag_frames``, ``lag_convention`` (text), ``best_lag_frames``, ``best_lag_ms``, ``sync_score`` (Pearson
correlation at the best lag, in [-1, 1]; 0 when undefined), ``zero_lag_correlation``, ``lags_frames``,
``correlation`` (one value per lag, null where undefined), ``frame_times_s``, ``onset_envelope`` and
``motion_energy`` (one value per frame, null where undefined), ``beat_times_s`` (detected audio onsets on the
video clock), ``source`` (input file or null).
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from diffusers.utils import logging

from .video_io import audio_to_float32, frames_to_uint8, read_video_with_audio


logger = logging.get_logger(__name__)

N_MELS = 64  # mel bands of the onset detector (few enough to leave none empty at 8-16 kHz)
#: The lowest audio sample rate measured (Hz): below ~3.6 kHz the onset detector's ~25 ms window has too few
#: frequency bins for its 64 mel bands (empty bands), and below ~230 Hz its hop is 0 samples.
MIN_SAMPLE_RATE = 4000
LAG_CONVENTION = "positive lag = video motion comes after the audio onset (video late); negative lag = video early"


@dataclass
class SyncReport:
    """Result of `sync_report`. Per-frame arrays have one entry per video frame; NaN marks undefined values."""

    fps: float
    sample_rate: int
    audio_offset_s: float
    frame_times_s: np.ndarray
    onset_envelope: np.ndarray
    motion_energy: np.ndarray
    lags_frames: np.ndarray
    correlation: np.ndarray
    best_lag_frames: int
    best_lag_ms: float
    sync_score: float
    zero_lag_correlation: float
    beat_times_s: np.ndarray
    source: Optional[str] = field(default=None)

    @property
    def max_lag_frames(self) -> int:
        return int(self.lags_frames.max())

    def summary(self) -> str:
        return (
            f"best lag {self.best_lag_frames:+d} frames ({self.best_lag_ms:+.1f} ms; + = video after audio), "
            f"sync score {self.sync_score:.3f}, zero-lag correlation {_fmt(self.zero_lag_correlation)}"
        )

    def to_dict(self) -> dict:
        """JSON-ready dict with the keys documented in the module docstring."""
        return {
            "fps": float(self.fps),
            "sample_rate": int(self.sample_rate),
            "num_frames": len(self.frame_times_s),
            "audio_offset_s": float(self.audio_offset_s),
            "max_lag_frames": self.max_lag_frames,
            "lag_convention": LAG_CONVENTION,
            "best_lag_frames": int(self.best_lag_frames),
            "best_lag_ms": float(self.best_lag_ms),
            "sync_score": float(self.sync_score),
            "zero_lag_correlation": _json_float(self.zero_lag_correlation),
            "lags_frames": [int(lag) for lag in self.lags_frames],
            "correlation": [_json_float(v) for v in self.correlation],
            "frame_times_s": [_json_float(v) for v in self.frame_times_s],
            "onset_envelope": [_json_float(v) for v in self.onset_envelope],
            "motion_energy": [_json_float(v) for v in self.motion_energy],
            "beat_times_s": [_json_float(v) for v in self.beat_times_s],
            "source": self.source,
        }

    def save_json(self, path) -> str:
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=1)
        return path

    def save_png(self, path, dpi: int = 100) -> str:
        """Plot both curves with onset markers, and correlation vs lag; 1000x650 px at the default dpi."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(10, 6.5), dpi=dpi, layout="constrained")
        FigureCanvasAgg(figure)
        top, bottom = figure.subplots(2, 1, height_ratios=(3, 2))

        times = self.frame_times_s
        top.plot(times, _unit_scale(self.onset_envelope), color="tab:orange", label="audio onset strength")
        top.plot(times, _unit_scale(self.motion_energy), color="tab:blue", label="video motion energy")
        for k, beat in enumerate(self.beat_times_s):
            top.axvline(beat, color="0.5", lw=0.8, ls=":", label="audio onsets" if k == 0 else None)
        top.set_xlabel("time (s, video clock)")
        top.set_ylabel("normalised strength (0-1)")
        top.set_xlim(times[0] if len(times) else 0.0, times[-1] if len(times) > 1 else 1.0)
        top.legend(loc="upper right", fontsize="small")
        title = self.summary() if self.source is None else f"{os.path.basename(self.source)}: {self.summary()}"
        top.set_title(title, fontsize="medium")

        bottom.axhline(0.0, color="0.7", lw=0.8)
        bottom.plot(self.lags_frames, self.correlation, marker="o", ms=3, color="tab:green")
        bottom.axvline(self.best_lag_frames, color="tab:red", ls="--", label=f"best lag {self.best_lag_frames:+d}")
        bottom.set_xlabel("lag (frames; + = video motion after audio onset)")
        bottom.set_ylabel("correlation (Pearson r)")
        bottom.set_ylim(-1.05, 1.05)
        bottom.legend(loc="upper right", fontsize="small")
        fps = float(self.fps)
        ms_axis = bottom.secondary_xaxis("top", functions=(lambda f: f * 1000.0 / fps, lambda m: m * fps / 1000.0))
        ms_axis.set_xlabel("lag (ms)")

        path = os.fspath(path)
        figure.savefig(path, dpi=dpi)
        return path


def _json_float(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def _unit_scale(curve: np.ndarray) -> np.ndarray:
    peak = np.nanmax(curve) if np.isfinite(curve).any() else 0.0
    return curve / peak if peak > 0 else curve


def _onset_params(sample_rate: int):
    """~25 ms analysis window (power of two) and a hop of 1/8 window (~3 ms)."""
    n_fft = int(2 ** round(math.log2(0.025 * sample_rate)))
    return n_fft, n_fft // 8


def _motion_energy(video: np.ndarray) -> np.ndarray:
    energy = np.full(video.shape[0], np.nan)
    for i in range(1, video.shape[0]):
        energy[i] = np.abs(video[i].astype(np.int16) - video[i - 1].astype(np.int16)).mean() / 255.0
    return energy


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    valid = np.isfinite(x) & np.isfinite(y)
    if valid.sum() < 3:
        return float("nan")
    x, y = x[valid] - x[valid].mean(), y[valid] - y[valid].mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def sync_report(
    video, audio, sample_rate: int, fps: float, max_lag_frames: Optional[int] = None, audio_offset_s: float = 0.0
) -> SyncReport:
    """Measure how well the motion of `video` follows the onsets of `audio`.

    Args:
        video: frames as accepted by `export_to_video_with_audio` (list of PIL images, (F, H, W, 3) array or
            tensor, uint8 or float in [0, 1]).
        audio: (channels, samples) or (samples,) float waveform; channels are averaged.
        sample_rate: audio sample rate in Hz, at least `MIN_SAMPLE_RATE` (4000).
        fps: video frame rate.
        max_lag_frames: lags searched are -max_lag_frames..+max_lag_frames; default round(fps / 2) (half a
            second), capped so that at least 3 frames overlap.
        audio_offset_s: presentation time of audio sample 0 minus that of video frame 0.

    Returns a `SyncReport`; see the module docstring for the lag sign convention. The sync score is the
    correlation at the best lag (1: motion energy follows onset strength exactly; near 0: unrelated).
    """
    frames = frames_to_uint8(video, name="video")
    waveform = audio_to_float32(audio)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise TypeError(f"`sample_rate` must be an int, got {type(sample_rate).__name__}")
    if sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(
            f"`sample_rate` must be at least {MIN_SAMPLE_RATE} Hz (the onset detector's resolution), got {sample_rate}"
        )
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise TypeError(f"`fps` must be a number, got {type(fps).__name__}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"`fps` must be positive and finite, got {fps}")
    if not math.isfinite(audio_offset_s):
        raise ValueError(f"`audio_offset_s` must be finite, got {audio_offset_s}")
    num_frames = frames.shape[0]
    if num_frames < 4:
        raise ValueError(f"`video` needs at least 4 frames for a sync report, got {num_frames}")
    if max_lag_frames is None:
        max_lag_frames = max(1, round(fps / 2))
    if isinstance(max_lag_frames, bool) or not isinstance(max_lag_frames, (int, np.integer)) or max_lag_frames < 0:
        raise ValueError(f"`max_lag_frames` must be a non-negative int, got {max_lag_frames!r}")
    max_lag_frames = int(min(max_lag_frames, num_frames - 4))

    import librosa

    sample_rate = int(sample_rate)
    fps = float(fps)
    n_fft, hop = _onset_params(sample_rate)
    mono = waveform.mean(axis=0)
    if mono.shape[0] < n_fft:
        raise ValueError(f"`audio` is too short ({mono.shape[0]} samples); need at least {n_fft}")
    envelope = librosa.onset.onset_strength(
        y=mono, sr=sample_rate, n_fft=n_fft, hop_length=hop, center=True, n_mels=N_MELS, pad_mode="reflect"
    )  # reflect padding: no false onset where the audio starts
    # Value j: energy rise as the window's leading edge moves from (j-1)*hop to j*hop; placed midway, video clock.
    envelope_times = audio_offset_s + (np.arange(envelope.shape[0]) - 0.5) * hop / sample_rate
    frame_index = np.rint(envelope_times * fps).astype(np.int64)
    inside = (frame_index >= 0) & (frame_index < num_frames)
    onset = np.full(num_frames, -np.inf)
    np.maximum.at(onset, frame_index[inside], envelope[inside])
    onset[np.isinf(onset)] = np.nan  # frames without audio

    motion = _motion_energy(frames)

    lags = np.arange(-max_lag_frames, max_lag_frames + 1)
    correlation = np.full(lags.shape, np.nan)
    for k, lag in enumerate(lags):
        if lag >= 0:
            correlation[k] = _pearson(onset[: num_frames - lag], motion[lag:])
        else:
            correlation[k] = _pearson(onset[-lag:], motion[: num_frames + lag])

    if np.isfinite(correlation).any():
        # Highest correlation; ties go to the smallest |lag|.
        order = np.argsort(np.abs(lags), kind="stable")
        best = order[np.argmax(np.where(np.isfinite(correlation[order]), correlation[order], -np.inf))]
        best_lag, score = int(lags[best]), float(correlation[best])
    else:
        logger.warning("Sync correlation is undefined (no motion, no onsets or no overlap); reporting score 0.")
        best_lag, score = 0, 0.0

    onset_frames = librosa.onset.onset_detect(onset_envelope=envelope, sr=sample_rate, hop_length=hop)
    beat_times = audio_offset_s + (np.asarray(onset_frames, dtype=np.float64) - 0.5) * hop / sample_rate
    duration = num_frames / fps
    beat_times = beat_times[(beat_times >= 0) & (beat_times < duration)]

    report = SyncReport(
        fps=fps,
        sample_rate=sample_rate,
        audio_offset_s=float(audio_offset_s),
        frame_times_s=np.arange(num_frames) / fps,
        onset_envelope=onset,
        motion_energy=motion,
        lags_frames=lags,
        correlation=correlation,
        best_lag_frames=best_lag,
        best_lag_ms=best_lag * 1000.0 / fps,
        sync_score=score,
        zero_lag_correlation=float(correlation[max_lag_frames]),
        beat_times_s=beat_times,
    )
    logger.info(report.summary())
    return report


def sync_report_from_file(path, max_lag_frames: Optional[int] = None) -> SyncReport:
    """`sync_report` for a media file with a video and an audio stream (ValueError naming the file otherwise)."""
    media = read_video_with_audio(path, require_audio=True)
    report = sync_report(
        media.frames,
        media.audio,
        media.sample_rate,
        media.fps,
        max_lag_frames=max_lag_frames,
        audio_offset_s=media.audio_offset_s,
    )
    report.source = os.fspath(path)
    return report


def _report_paths(args) -> tuple[str, str]:
    """`--out` (default `<input>_sync.png`) and the JSON beside it; ValueError naming the flag and path when the
    plot is not a .png, a path is an input, a folder, an existing file (without `--overwrite`), or its folder
    cannot be made."""
    from .cli_safety import check_output_folder, check_same_files

    png = args.out or os.path.splitext(args.input)[0] + "_sync.png"
    if os.path.splitext(png)[1].lower() != ".png":
        raise ValueError(f"--out {png!r}: the plot is written as a PNG; give a path ending in .png")
    json_path = os.path.splitext(png)[0] + ".json"
    check_output_folder("--out", png)
    check_same_files([png, json_path], [("video", args.input)], overwrite=args.overwrite, flag="--out", named=png)
    return png, json_path


def main(argv=None) -> int:
    """Console script `ltx2-sync-report input.mp4 [--out report.png] [--overwrite]`: writes the PNG and a JSON
    beside it, each under a temporary name renamed when complete. The output paths are checked before the video
    is read: never the input (symlinks, hard links), never an existing file without `--overwrite`."""
    from .cli_safety import creating_missing_folders, write_atomically

    parser = argparse.ArgumentParser(
        prog="ltx2-sync-report",
        description=f"Measure how well a video's motion follows its audio's onsets. Lag convention: {LAG_CONVENTION}.",
    )
    parser.add_argument("input", help="video file with an audio track (e.g. mp4)")
    parser.add_argument(
        "--out", help="PNG path (default: <input>_sync.png); the JSON goes beside it (.json); folders are created"
    )
    parser.add_argument("--max-lag-frames", type=int, default=None, help="largest |lag| searched (default fps/2)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing PNG / JSON (default: refuse them)"
    )
    args = parser.parse_args(argv)

    try:
        png, json_path = _report_paths(args)
        with creating_missing_folders(png):  # created now; removed again (when still empty) if the report fails
            report = sync_report_from_file(args.input, max_lag_frames=args.max_lag_frames)
            write_atomically(png, report.save_png, overwrite=args.overwrite)
            write_atomically(json_path, report.save_json, overwrite=args.overwrite)
    except ValueError as error:
        print(f"ltx2-sync-report: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.input}: {report.summary()}")
    print(f"wrote {png} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
