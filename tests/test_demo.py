"""scripts/demo.py: its builder steps, its commands, and the whole demo (untimed)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[1]


def _load_demo():
    spec = importlib.util.spec_from_file_location("ltx2_demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_drum_pattern_hits_on_the_grid():
    sample_rate, bpm = 16000, 120.0
    audio = demo.drum_pattern(2.0, sample_rate, bpm)
    assert audio.shape == (2, 32000) and audio.dtype == np.float32
    assert 0.5 < np.abs(audio).max() <= 0.9 + 1e-6
    assert not np.array_equal(audio[0], audio[1])  # the hats sit a little to the right

    def rms(start_s, length_s=0.01):
        a, b = int(start_s * sample_rate), int((start_s + length_s) * sample_rate)
        return float(np.sqrt(np.mean(audio[:, a:b] ** 2)))

    eighth = 60.0 / bpm / 2
    for k in range(1, 8):  # every eighth note starts a hit: louder just after it than just before it
        assert rms(k * eighth) > 2 * rms(k * eighth - 0.01), k


def test_write_drums_reads_back(tmp_path):
    import soundfile

    path = demo.write_drums(tmp_path / "d.wav", 1.0, sample_rate=44100)
    data, rate = soundfile.read(str(path), always_2d=True)
    assert rate == 44100 and data.shape == (44100, 2)


@pytest.mark.skipif(not _have("ltx_core"), reason="the factories need ltx-core")
def test_builder_steps(tmp_path):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    files = demo.build_original_files(tmp_path)
    for name in ("checkpoint", "upsampler", "lora"):
        assert Path(files[name]).is_file(), name
    with safe_open(str(files["checkpoint"]), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["model_version"] == "2.3.0"
    caption_channels = json.loads(metadata["config"])["transformer"]["caption_channels"]
    text_config = AutoConfig.from_pretrained(files["gemma"] / "text_encoder").text_config
    factories = demo.load_factories()
    assert (text_config.hidden_size, text_config.num_hidden_layers + 1) == factories.text_encoder_dims(
        files["checkpoint"]
    )
    assert text_config.hidden_size == caption_channels
    assert AutoTokenizer.from_pretrained(files["gemma"] / "tokenizer")("a drummer").input_ids


def test_the_demo_command_line_parses(tmp_path):
    from ltx2_diffusers import a2vid

    model, audio = tmp_path / "model", tmp_path / "drums.wav"
    model.mkdir()
    audio.write_bytes(b"x")
    args = demo.demo_args([])
    command = demo.a2vid_command(model, audio, tmp_path / "demo.mp4", args)
    assert command[1:3] == ["-m", "ltx2_diffusers.a2vid"]
    parsed = a2vid.parse_args(command[3:])
    assert (parsed.height, parsed.width, parsed.num_frames, parsed.num_inference_steps) == (128, 128, None, 3)
    assert parsed.sync_report and parsed.stage_2 and parsed.model == str(model)


def test_av_command_parses():
    from ltx2_diffusers import av_cli

    args = demo.demo_args([])
    command = demo.av_command(REPO / "model", REPO / "av.mp4", args)
    assert command[1:3] == ["-m", "ltx2_diffusers.av_cli"]
    parsed = av_cli.parse_args(command[3:])
    assert (parsed.height, parsed.width, parsed.num_frames, parsed.num_inference_steps) == (128, 128, 17, 3)
    assert parsed.stage_2 and parsed.model == str(REPO / "model")


@pytest.mark.skipif(
    not (_have("ltx_core") and _have("ltx2_diffusers.convert")), reason="needs ltx-core and the converter"
)
def test_demo_end_to_end(tmp_path):
    output = tmp_path / "demo.mp4"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "demo.py"),
            "--output",
            str(output),
            "--work-dir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "noise shaped by random weights" in result.stdout
    from ltx2_diffusers.video_io import read_video_with_audio

    media = read_video_with_audio(output, require_audio=True)
    # 3 s of drums at 24 fps -> 72 frames covered -> 65 (8k + 1), 128x128, with the drum track's audio.
    assert media.frames.shape == (65, 128, 128, 3) and media.fps == 24 and media.sample_rate == 44100
    assert abs(media.audio.shape[-1] / media.sample_rate - 65 / 24) <= 1 / 24
    assert (tmp_path / "demo_sync.png").is_file() and (tmp_path / "demo_sync.json").is_file()
    # the text-to-audio+video clip: 17 frames with the model's generated audio at the vocoder's rate
    av = read_video_with_audio(tmp_path / "demo-text-to-audio-video.mp4", require_audio=True)
    assert av.frames.shape == (demo.AV_NUM_FRAMES, 128, 128, 3) and av.fps == 24
    assert abs(av.audio.shape[-1] / av.sample_rate - demo.AV_NUM_FRAMES / 24) <= 2 / 24
