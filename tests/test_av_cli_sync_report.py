"""`ltx2-av --sync-report`: the written mp4's sync report (generated motion against generated audio), its paths
checked against the inputs before any work exactly as `ltx2-a2v` checks them, written atomically.

The pipeline is `test_av_cli`'s fake; here it generates `test_sync_report`'s clip: a square that jumps `lag` frames
after each drum hit of the generated audio, so the report's lag is known."""

import hashlib
import json
import os

import numpy as np
import PIL.Image
import pytest
from test_av_cli import RATE, _argv, fake, files  # noqa: F401  (fake, files: its fixtures)
from test_sync_report import JSON_KEYS, _clip

from ltx2_diffusers import a2vid, av_cli


NUM_FRAMES = 89  # 8k + 1, 3.7 s at 24 fps


@pytest.fixture
def drummer(fake, monkeypatch):  # noqa: F811
    """`fake` generating a clip whose motion follows its drum track `lag` frames late (`drummer.lag`)."""

    class Drummer(fake):
        lag = 0

        def __call__(self, num_frames, frame_rate, **kwargs):
            self.calls.append(dict(kwargs, num_frames=num_frames, frame_rate=frame_rate))
            frames, audio = _clip(self.lag, RATE, 2, frame_rate)
            audio = audio[:, : int(RATE * num_frames / frame_rate)]
            video = (frames[:num_frames] / 255.0).astype(np.float32)[None]
            return type("Output", (), dict(frames=video, audio=audio[None], audio_sample_rate=RATE))

    monkeypatch.setattr(av_cli, "pipeline_class", lambda: Drummer)
    return Drummer


def _run_argv(*extra, output="out.mp4"):
    return _argv("--num-frames", str(NUM_FRAMES), "--sync-report", "--device", "cpu", *extra, output=output)


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("lag", [2, -1])
def test_report_of_the_written_mp4(files, drummer, lag, capsys):  # noqa: F811
    drummer.lag = lag
    before = set(os.listdir(files))
    assert av_cli.main(_run_argv()) == 0
    assert set(os.listdir(files)) - before == {"out.mp4", "out_sync.png", "out_sync.json"}  # no temporary left
    report = json.load(open("out_sync.json"))
    assert set(report) == JSON_KEYS  # the keys of the a2v report (documented in ltx2_diffusers.sync)
    assert report["source"] == "out.mp4" and report["num_frames"] == NUM_FRAMES and report["fps"] == 24.0
    assert report["sample_rate"] == RATE
    # the generated motion follows the generated drums `lag` frames late, as measured in the written mp4
    assert report["best_lag_frames"] == lag and report["best_lag_ms"] == pytest.approx(lag * 1000 / 24)
    assert report["sync_score"] > 0.8
    with PIL.Image.open("out_sync.png") as png:
        assert png.format == "PNG" and png.size == (1000, 650)
    out = capsys.readouterr().out
    assert f"sync report out_sync.png: best lag {lag:+d} frames" in out
    assert out.index("wrote out.mp4") < out.index("sync report") < out.index("done in")


def test_without_the_flag_no_report(files, drummer):  # noqa: F811
    assert av_cli.main(_argv("--num-frames", str(NUM_FRAMES), "--device", "cpu")) == 0
    assert os.path.isfile("out.mp4") and not os.path.exists("out_sync.png") and not os.path.exists("out_sync.json")


def test_report_written_atomically(files, drummer, monkeypatch):  # noqa: F811
    """A failure half-way through the JSON leaves the earlier report whole and no temporary file."""
    from ltx2_diffusers.sync import SyncReport

    open("out_sync.json", "w").write('{"an earlier report": 1}')
    old = _sha256("out_sync.json")

    calls = []

    def failing(self, path):
        calls.append(path)
        open(path, "w").write('{"half')
        raise KeyboardInterrupt

    monkeypatch.setattr(SyncReport, "save_json", failing)
    with pytest.raises(KeyboardInterrupt):
        av_cli.main(_run_argv("--overwrite"))  # out_sync.json may be replaced: the user said so
    assert calls and calls[0] != os.path.abspath("out_sync.json")  # written under another name
    assert _sha256("out_sync.json") == old and os.path.isfile("out.mp4") and os.path.isfile("out_sync.png")
    assert not [name for name in os.listdir(files) if name.startswith(".") or "partial" in name]


def test_fewer_than_9_frames_refused_by_the_parser(files, fake, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as exit_info:
        av_cli.main(_argv("--num-frames", "1", "--sync-report"))
    assert exit_info.value.code == 2
    assert "ltx2-av: error: --sync-report needs --num-frames >= 9" in capsys.readouterr().err
    assert fake.loads == []
    assert av_cli.parse_args(_argv("--num-frames", "1")).sync_report is False  # the report alone asks for 9
    assert av_cli.parse_args(_argv("--num-frames", "9", "--sync-report")).sync_report is True
    with pytest.raises(SystemExit):  # a2v: the same check, one function
        a2vid.parse_args(["--model", "model", "--audio-path", "a.png", "--prompt", "p", "--output-path", "o.mp4",
                          "--num-frames", "1", "--sync-report"])  # fmt: skip
    assert "--sync-report and --modality-scale-sweep need --num-frames >= 9" in capsys.readouterr().err


# name: (output path, a pre-existing <output>_sync.json the run did not create, extra flags, words of the error)
EXISTING = {
    "report inside the model folder": ("model/render.mp4", ("file", "model/render_sync.json"), (),
                                       ["--model", "model/render_sync.json", "would be replaced"]),
    "report is the lora (hard link)": ("out.mp4", ("hard", "style.safetensors"), ("--lora", "style.safetensors"),
                                       ["writes 'out_sync.json'", "--lora input 'style.safetensors'"]),
    "report is the image (symlink)": ("out.mp4", ("symlink", "a.png"), ("--image", "a.png", "0", "1"),
                                      ["writes 'out_sync.json'", "--image input 'a.png'"]),
    "report is a dangling symlink": ("out.mp4", ("symlink", "nowhere.json"), (),
                                     ["'out_sync.json' exists and is not a regular file"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXISTING))
def test_existing_report_refused_before_work_like_a2v(name, files, fake, monkeypatch, capsys):  # noqa: F811
    output, (kind, target), extra, words = EXISTING[name]
    report = os.path.splitext(output)[0] + "_sync.json"
    if kind == "file":
        open(report, "w").write('{"the user\'s": "notes"}')
    elif kind == "hard":
        os.link(target, report)
    else:
        os.symlink(target, report)
    hashed = report if os.path.exists(report) else None
    before = _sha256(hashed) if hashed else None
    with pytest.raises(SystemExit) as exit_info:
        av_cli.main(_argv("--sync-report", *extra, output=output))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert all(word in error for word in words), error
    assert fake.loads == [] and not os.path.exists(output)
    if hashed:
        assert _sha256(hashed) == before
    assert os.path.islink(report) == (kind == "symlink")
    # exactly ltx2-a2v's refusal of the same paths
    open("song.wav", "wb").write(b"audio")
    monkeypatch.setattr(a2vid, "load_pipeline", lambda args: pytest.fail("a2v loaded a model"))
    with pytest.raises(SystemExit):
        a2vid.main(["--model", "model", "--audio-path", "song.wav", "--prompt", "p", "--output-path", output,
                    "--sync-report", *extra])  # fmt: skip
    a2v_error = capsys.readouterr().err
    assert a2v_error.splitlines()[-1].replace("ltx2-a2v: ", "") == error.splitlines()[-1].replace("ltx2-av: ", "")
    # without --sync-report the file is no output of the run and the same command is accepted
    assert av_cli.parse_args(_argv(*extra, output=output)).sync_report is False


def test_help_lists_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        av_cli.main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--sync-report also write the audio-video sync report (<output>_sync.png and .json)" in help_text
