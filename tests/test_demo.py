"""scripts/demo.py: its builder steps, its commands, and the whole demo (untimed)."""

import hashlib
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


def test_demo_replaces_only_its_own_unchanged_outputs(tmp_path):
    """The demo passes --overwrite to the CLIs only for files an earlier demo run wrote and nobody changed."""
    outputs, record = demo.demo_outputs(tmp_path / "demo.mp4"), tmp_path / "w" / "demo_outputs.json"
    assert [p.name for p in outputs] == [
        "demo.mp4", "demo_sync.png", "demo_sync.json", "demo-text-to-audio-video.mp4"
    ]  # fmt: skip
    record.parent.mkdir()
    assert demo.may_replace(outputs, record) is False  # nothing there yet
    for k, path in enumerate(outputs):
        path.write_bytes(b"rendered %d" % k)
    with pytest.raises(SystemExit, match="demo.mp4 exists .* --overwrite"):  # not recorded: the user's
        demo.may_replace(outputs, record)
    demo.record_outputs(outputs, record)
    assert demo.may_replace(outputs, record) is True and os.listdir(record.parent) == ["demo_outputs.json"]
    outputs[2].write_bytes(b"the user edited the report")
    with pytest.raises(SystemExit, match="demo_sync.json exists"):
        demo.may_replace(outputs, record)


def test_demo_refuses_a_foreign_output_before_any_work(tmp_path, monkeypatch):
    mine = tmp_path / "demo-text-to-audio-video.mp4"
    mine.write_bytes(b"a clip the user made")
    before = hashlib.sha256(mine.read_bytes()).hexdigest()
    monkeypatch.setattr(demo, "build_original_files", lambda *a, **k: pytest.fail("the demo started working"))
    with pytest.raises(SystemExit, match="demo-text-to-audio-video.mp4 exists"):
        demo.main(["--output", str(tmp_path / "demo.mp4"), "--work-dir", str(tmp_path / "w")])
    assert hashlib.sha256(mine.read_bytes()).hexdigest() == before and sorted(os.listdir(tmp_path)) == [mine.name]


def test_overwrite_reaches_both_commands(tmp_path):
    from ltx2_diffusers import a2vid, av_cli

    for argv, expected in (([], False), (["--overwrite"], True)):
        args = demo.demo_args(argv)
        a2v = demo.a2vid_command(tmp_path, tmp_path / "drums.wav", tmp_path / "demo.mp4", args)
        av = demo.av_command(tmp_path, tmp_path / "av.mp4", args)
        assert ("--overwrite" in a2v, "--overwrite" in av) == (expected, expected)
        assert av_cli.build_parser().parse_args(av[3:]).overwrite is expected
        assert a2vid.build_parser().parse_args(a2v[3:]).overwrite is expected


def _stubbed_clis(monkeypatch):
    """`_run` converts for real (in this process) and stands in for the two CLIs: they write their outputs, and
    refuse an existing one without --overwrite, as the CLIs do."""
    from ltx2_diffusers import convert

    def run(command):
        if command[2] == "ltx2_diffusers.convert":
            assert convert.main(command[3:]) == 0
            return
        output = Path(command[command.index("--output-path") + 1])
        written = [output]
        if "--sync-report" in command:
            written += [output.with_name(f"{output.stem}_sync.png"), output.with_name(f"{output.stem}_sync.json")]
        for path in written:
            if path.exists() and "--overwrite" not in command:
                raise subprocess.CalledProcessError(2, command, f"{path} exists")
            path.write_bytes(os.urandom(64))

    monkeypatch.setattr(demo, "_run", run)
    monkeypatch.setattr(demo, "check_output", lambda path, seconds: f"{path}: checked")


@pytest.mark.skipif(not _have("ltx_core"), reason="the factories need ltx-core")
def test_demo_runs_twice_and_never_replaces_the_users_work_files(tmp_path, monkeypatch):
    from file_tree import file_tree

    _stubbed_clis(monkeypatch)
    work, argv = tmp_path / "w", ["--output", str(tmp_path / "demo.mp4"), "--work-dir", str(tmp_path / "w")]
    assert demo.main(argv) == 0
    assert demo.main(argv) == 0  # `make demo` twice in a row: its own work files and conversion are replaced
    record = json.loads((work / "demo_outputs.json").read_text())
    assert str(work / demo.DRUMS_NAME) in record and str(work / demo.CHECKPOINT_NAME) in record

    # The user's notes in the converted folder: refused before any work (no rmtree), even with --overwrite.
    notes = work / demo.CONVERTED_NAME / "notes.txt"
    notes.write_text("my notes")
    before = file_tree(tmp_path)
    monkeypatch.setattr(demo, "build_original_files", lambda *a, **k: pytest.fail("the demo started working"))
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match="notes.txt"):
            demo.main(argv + extra)
        assert file_tree(tmp_path) == before
    notes.unlink()

    # A drum track the user put in place of the demo's (or edited): refused, unchanged.
    (work / demo.DRUMS_NAME).write_bytes(b"the user's drum take")
    before = file_tree(tmp_path)
    with pytest.raises(SystemExit, match=r"drums\.wav exists .* --work-dir"):
        demo.main(argv)
    assert file_tree(tmp_path) == before


def test_demo_refuses_a_foreign_drum_track_in_a_fresh_work_dir(tmp_path, monkeypatch):
    work = tmp_path / "w"
    work.mkdir()
    (work / "drums.wav").write_bytes(b"the user's drum take")
    before = hashlib.sha256((work / "drums.wav").read_bytes()).hexdigest()
    monkeypatch.setattr(demo, "build_original_files", lambda *a, **k: pytest.fail("the demo started working"))
    with pytest.raises(SystemExit, match="drums.wav exists"):
        demo.main(["--output", str(tmp_path / "demo.mp4"), "--work-dir", str(work)])
    assert hashlib.sha256((work / "drums.wav").read_bytes()).hexdigest() == before
    assert os.listdir(work) == ["drums.wav"] and sorted(os.listdir(tmp_path)) == ["w"]
