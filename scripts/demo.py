"""End-to-end demo on a CPU: tiny random LTX-2.3 files -> converter -> audio-to-video CLI -> demo.mp4.

Steps (all under --work-dir, default out/demo/):
1. a tiny random-weight LTX-2.3-shaped checkpoint in the ORIGINAL single-file format, a spatial upsampler and a
   distilled LoRA (built by tests/factories.py, which needs ltx-core: `make install` installs it), and a tiny
   random Gemma 3 text encoder with a tokenizer built locally (no downloads);
2. `python -m ltx2_diffusers.convert` turns them into a diffusers folder;
3. a few seconds of drums (kick, snare, hi-hat) are synthesised to a WAV file;
4. `python -m ltx2_diffusers.a2vid --model <folder> --audio-path drums.wav ... --sync-report` renders the mp4.

The weights are random, so the video is noise shaped by random weights: the demo shows the whole path working,
not what LTX-2 generates.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


REPO = Path(__file__).resolve().parents[1]
FACTORIES = REPO / "tests" / "factories.py"
PROMPT = "a drummer plays a drum kit in a dark room, close up shot, bright light"
DISTILLED_LORA_STRENGTH = 0.8


def load_factories():
    """tests/factories.py as a module (it needs ltx-core, a test extra)."""
    spec = importlib.util.spec_from_file_location("ltx2_demo_factories", FACTORIES)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        del sys.modules[spec.name]
        raise SystemExit(
            f"demo: building the original-format files needs ltx-core ({error}); run `make install` "
            "or `pip install -e '.[test]'`"
        ) from None
    return module


def build_original_files(work_dir: Path, seed: int = 0) -> dict:
    """Write the tiny original-format checkpoint, upsampler, distilled LoRA and Gemma 3 folder; return paths."""
    from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3

    factories = load_factories()
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = factories.build_checkpoint(work_dir / "ltx-2.3-tiny-random.safetensors", "2.3", seed=seed)
    upsampler = factories.build_upsampler(work_dir / "ltx-2.3-tiny-spatial-upscaler-x2.safetensors", seed=seed)
    lora = factories.build_lora(work_dir / "ltx-2.3-tiny-distilled-lora.safetensors", checkpoint, seed=seed)
    hidden_size, hidden_states = factories.text_encoder_dims(checkpoint)  # what the checkpoint's connectors read
    gemma = build_tiny_gemma3(
        work_dir / "gemma-3-tiny-random", hidden_size=hidden_size, num_hidden_layers=hidden_states - 1, seed=seed
    )
    return {"checkpoint": checkpoint, "upsampler": upsampler, "lora": lora, "gemma": gemma}


def _hit(num_samples: int, sample_rate: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(num_samples) / sample_rate
    if kind == "kick":  # pitch sweep 150 -> 45 Hz with a fast decay
        freq = 45 + 105 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / 0.08)
    if kind == "snare":  # noise plus a 185 Hz body
        return (0.7 * rng.standard_normal(num_samples) + 0.5 * np.sin(2 * np.pi * 185 * t)) * np.exp(-t / 0.05)
    noise = rng.standard_normal(num_samples)  # hi-hat: high-passed noise, very short
    return 0.5 * np.diff(noise, prepend=0.0) * np.exp(-t / 0.015)


def drum_pattern(seconds: float, sample_rate: int = 44100, bpm: float = 120.0, seed: int = 0) -> np.ndarray:
    """A stereo rock beat, `(2, samples)` float32 in [-1, 1]: kick on 1, 3 and the 'and' of 3, snare on 2 and 4,
    eighth-note hi-hats (the hats a little to the right)."""
    rng = np.random.default_rng(seed)
    num_samples = int(round(seconds * sample_rate))
    out = np.zeros((2, num_samples))
    sixteenth = 60.0 / bpm / 4
    pattern = {"kick": (0, 8, 10), "snare": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12, 14)}
    gains = {"kick": (0.9, 0.9), "snare": (0.6, 0.6), "hat": (0.15, 0.25)}
    hit_len = int(0.4 * sample_rate)
    for step in range(int(seconds / sixteenth) + 1):
        start = int(round(step * sixteenth * sample_rate))
        for kind, steps in pattern.items():
            if step % 16 in steps and start < num_samples:
                n = min(hit_len, num_samples - start)
                sound = _hit(hit_len, sample_rate, kind, rng)[:n]
                out[0, start : start + n] += gains[kind][0] * sound
                out[1, start : start + n] += gains[kind][1] * sound
    peak = np.abs(out).max()
    return (0.9 * out / peak if peak > 0 else out).astype(np.float32)


def write_drums(path: Path, seconds: float, sample_rate: int = 44100) -> Path:
    import soundfile

    soundfile.write(str(path), drum_pattern(seconds, sample_rate).T, sample_rate, subtype="PCM_16")
    return path


def _run(command: list[str]) -> None:
    print("$ " + " ".join(_quote(part) for part in command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def _quote(part: str) -> str:
    return repr(part) if any(c in part for c in " ,'\"") else part


def convert_command(files: dict, output_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ltx2_diffusers.convert",
        "--checkpoint-path",
        str(files["checkpoint"]),
        "--spatial-upsampler-path",
        str(files["upsampler"]),
        "--distilled-lora",
        str(files["lora"]),
        str(DISTILLED_LORA_STRENGTH),
        "--gemma-root",
        str(files["gemma"]),
        "--output-dir",
        str(output_dir),
    ]


def a2vid_command(model_dir: Path, audio: Path, output: Path, args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ltx2_diffusers.a2vid",
        "--model",
        str(model_dir),
        "--audio-path",
        str(audio),
        "--prompt",
        PROMPT,
        "--height",
        str(args.height),
        "--width",
        str(args.width),
        "--num-frames",
        "auto",
        "--num-inference-steps",
        str(args.steps),
        "--video-stg-blocks",
        "1",  # the tiny transformer has 2 blocks; the LTX-2.3 default (28) does not exist here
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--seed",
        str(args.seed),
        "--output-path",
        str(output),
        "--sync-report",
    ]


def check_output(path: Path, expected_seconds: float) -> str:
    """Open the mp4 and return a one-line description; SystemExit if it is missing or wrong."""
    from ltx2_diffusers.video_io import read_video_with_audio

    if not path.is_file():
        raise SystemExit(f"demo: {path} was not written")
    media = read_video_with_audio(path, require_audio=True)
    frames, height, width = media.frames.shape[:3]
    audio_seconds = media.audio.shape[-1] / media.sample_rate
    if frames < 9 or audio_seconds < 0.5 * expected_seconds:
        raise SystemExit(f"demo: {path} has {frames} frames and {audio_seconds:.2f} s of audio")
    return (
        f"{path}: {frames} frames, {width}x{height} at {media.fps:g} fps, "
        f"{audio_seconds:.2f} s of audio at {media.sample_rate} Hz"
    )


def demo_args(argv=None) -> argparse.Namespace:
    """The demo's options (sizes, steps, seed, paths)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo.mp4", help="the video to write (default: demo.mp4)")
    parser.add_argument("--work-dir", default=str(REPO / "out" / "demo"), help="where the model files go")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the drum track (default: 3)")
    parser.add_argument("--height", type=int, default=128, help="multiple of 64 (default: 128)")
    parser.add_argument("--width", type=int, default=128, help="multiple of 64 (default: 128)")
    parser.add_argument("--steps", type=int, default=3, help="stage-1 denoising steps (default: 3)")
    parser.add_argument("--seed", type=int, default=10)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = demo_args(argv)

    start = time.perf_counter()
    work_dir = Path(args.work_dir).resolve()
    output = Path(args.output).resolve()
    converted = work_dir / "ltx-2.3-tiny-random-diffusers"

    print("[1/4] tiny random LTX-2.3 checkpoint, upsampler, distilled LoRA (original format) and Gemma 3", flush=True)
    files = build_original_files(work_dir)

    print(f"[2/4] converting to a diffusers folder: {converted}", flush=True)
    if converted.exists():
        shutil.rmtree(converted)
    _run(convert_command(files, converted))

    audio = work_dir / "drums.wav"
    print(f"[3/4] {args.seconds:g} s drum track: {audio}", flush=True)
    write_drums(audio, args.seconds)

    print("[4/4] audio-to-video CLI", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    _run(a2vid_command(converted, audio, output, args))

    print(check_output(output, args.seconds))
    print(
        f"demo done in {time.perf_counter() - start:.0f} s. The weights are random: {output.name} is noise shaped by "
        "random weights, with the drum track as its sound."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
