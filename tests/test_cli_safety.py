"""`ltx2-a2v` never loses a user's file and refuses garbage before loading anything (issue 9, points 2 and 3).

Every case hashes all of the user's files before and after, checks the refusal names the flag and the file, and
fails if a model would have been loaded.
"""

import hashlib
import os
import types

import av
import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from ltx2_diffusers import a2vid, video_io
from ltx2_diffusers.video_io import export_to_video_with_audio


def _patch_av(monkeypatch, name, from_ndarray):
    """`video_io` sees PyAV with `av.<name>.from_ndarray` replaced (PyAV's classes cannot be patched in place)."""
    fake = types.SimpleNamespace(**{k: getattr(av, k) for k in dir(av) if not k.startswith("__")})
    setattr(fake, name, types.SimpleNamespace(from_ndarray=from_ndarray))
    monkeypatch.setattr(video_io, "av", fake)


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _snapshot(root):
    """sha256 of every file under `root` (symlinks by their target's content), plus the set of names."""
    hashes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            hashes[os.path.relpath(path, root)] = _sha256(path) if os.path.exists(path) else "dangling"
    return hashes


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's folder with real inputs: audio (wav, mp4 with sound), images, safetensors, a model folder."""
    monkeypatch.chdir(tmp_path)
    rate = 16000
    t = np.arange(int(rate * 3.0)) / rate
    sf.write(tmp_path / "song.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    frames = np.random.default_rng(0).integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    export_to_video_with_audio(frames, np.zeros((1, 48000), np.float32), 48000, tmp_path / "clip.mp4", fps=8)
    PIL.Image.fromarray(frames[0]).save(tmp_path / "face.png")
    for name in ("ckpt", "up"):
        save_file({"w": torch.ones(2, 2)}, tmp_path / f"{name}.safetensors")
    save_file({"diffusion_model.a.lora_A.weight": torch.ones(2, 2)}, tmp_path / "lora.safetensors")
    (tmp_path / "gemma").mkdir()
    (tmp_path / "gemma" / "config.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    (tmp_path / "model" / "preview.mp4").write_bytes(b"the user's preview")
    (tmp_path / "old.mp4").write_bytes(b"an earlier render the user keeps")
    (tmp_path / "notes.txt").write_text("not media")
    return tmp_path


@pytest.fixture
def no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the cheap checks refused the input")

    monkeypatch.setattr(a2vid, "load_pipeline", fail)


def _argv(*extra, audio="song.wav", output="out.mp4", model=("--model", "model")):
    return [*model, "--audio-path", audio, "--prompt", "p", "--output-path", output, *extra]


CHECKPOINT = ("--checkpoint-path", "ckpt.safetensors", "--gemma-root", "gemma", "--no-stage-2")

# name: (argv keyword arguments, links to create {name: target, "hard:name": target}, words the error must hold)
CASES = {
    # --- data loss: the output would replace an input
    "output is the wav input": (dict(output="song.wav"), {}, ["--output-path", "song.wav"]),
    "output is the mp4 audio input": (dict(audio="clip.mp4", output="clip.mp4"), {}, ["--audio-path", "clip.mp4"]),
    "output is a symlink to the audio": (dict(output="link.mp4", audio="clip.mp4"), {"link.mp4": "clip.mp4"},
                                         ["--audio-path", "clip.mp4"]),
    "output is a hard link to the audio": (dict(output="hard.mp4", audio="clip.mp4"), {"hard:hard.mp4": "clip.mp4"},
                                           ["--audio-path", "clip.mp4"]),
    "output via another path spelling": (dict(audio="clip.mp4", output="./gemma/../clip.mp4"), {},
                                         ["--audio-path", "clip.mp4"]),
    "output is a symlink to the checkpoint": (dict(output="ck.mp4", model=CHECKPOINT), {"ck.mp4": "ckpt.safetensors"},
                                              ["--checkpoint-path", "ckpt.safetensors"]),
    "output is a symlink to the lora": (dict(output="l.mp4", extra=("--lora", "lora.safetensors")),
                                        {"l.mp4": "lora.safetensors"}, ["--lora", "lora.safetensors"]),
    "output is a symlink to the image": (dict(output="im.mp4", extra=("--image", "face.png", "0", "1")),
                                         {"im.mp4": "face.png"}, ["--image", "face.png"]),
    "sync report is the image": (dict(output="face.mp4", extra=("--image", "face_sync.png", "0", "1",
                                                                "--sync-report")),
                                 {"face_sync.png": "face.png"}, ["--image", "face_sync.png"]),
    "sweep clip is the audio": (dict(audio="clip_modality3.mp4", output="clip.mp4",
                                     extra=("--modality-scale-sweep", "1,3")),
                                {"hard:clip_modality3.mp4": "clip.mp4"}, ["--audio-path", "clip_modality3.mp4"]),
    "output replaces a file in the model folder": (dict(output="model/preview.mp4"), {},
                                                    ["--model", "model/preview.mp4"]),
    "output is a dangling symlink": (dict(output="dangling.mp4"), {"dangling.mp4": "nowhere.mp4"},
                                     ["not a regular file"]),
    # --- a container the writer cannot produce, refused before any work
    "gif output": (dict(output="x.gif"), {}, ["--output-path", "x.gif", ".mp4"]),
    "no extension": (dict(output="render"), {}, ["--output-path", "render", "extension-less"]),
    "wav output": (dict(output="new.wav"), {}, ["--output-path", "new.wav"]),
    # --- garbage refused by the flag checks (documented bounds of ltx2_diffusers.validation)
    "frame rate 1e6": (dict(extra=("--frame-rate", "1000000", "--num-frames", "auto")), {}, ["--frame-rate", "240"]),
    "cfg 1e30": (dict(extra=("--video-cfg-guidance-scale", "1e30")), {}, ["--video-cfg-guidance-scale", "100"]),
    "rescale 5": (dict(extra=("--video-rescale-scale", "5")), {}, ["--video-rescale-scale", "[0, 2]"]),
    "lora strength 1e9": (dict(extra=("--lora", "lora.safetensors", "1e9")), {}, ["--lora", "STRENGTH"]),
    "distilled nan": (dict(extra=("--distilled-lora", "lora.safetensors", "nan")), {}, ["--distilled-lora", "finite"]),
    "frames above the bound": (dict(extra=("--num-frames", "1009", "--height", "64", "--width", "64")), {},
                               ["--num-frames 1009", "--max-num-frames"]),
    "tokens above the bound": (dict(extra=("--num-frames", "521", "--height", "2048", "--width", "2048")), {},
                               ["--max-video-tokens"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_refused_at_parse_time_files_untouched(name, user, no_loading, capsys):
    options, links, words = CASES[name]
    for link, target in links.items():
        if link.startswith("hard:"):
            os.link(target, link[5:])
        else:
            os.symlink(target, link)
    extra = options.pop("extra", ())
    before = _snapshot(user)
    with pytest.raises(SystemExit) as exit_info:
        a2vid.main(_argv(*extra, **options))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "ltx2-a2v: error:" in err
    for word in words:
        assert word in err, (word, err)
    assert _snapshot(user) == before


def _write_float_wav(path, samples, rate=16000):
    sf.write(path, samples.astype(np.float32), rate, subtype="FLOAT")


# name: (make the bad input in the folder -> argv extras and argv keyword arguments, words the error must hold)
PREFLIGHT = {
    "audio path is an image": (lambda d: ((), dict(audio="face.png")), ["--audio-path", "face.png", "no audio"]),
    "audio path is text": (lambda d: ((), dict(audio="notes.txt")), ["--audio-path", "notes.txt"]),
    "silent video as audio": (
        lambda d: (export_to_video_with_audio(np.zeros((3, 32, 32, 3), np.uint8), None, None, d / "mute.mp4") and (),
                   dict(audio="mute.mp4")),
        ["--audio-path", "mute.mp4", "no audio stream"]),
    "audio shorter than the video": (lambda d: (("--num-frames", "121"), {}), ["--audio-path", "song.wav", "5.042"]),
    "auto frames from 10 minutes": (
        lambda d: (_write_float_wav(d / "long.wav", np.zeros(8000 * 600), 8000) or ("--num-frames", "auto"),
                   dict(audio="long.wav")),
        ["--num-frames auto", "long.wav", "14393", "--max-num-frames"]),
    "auto frames at 200 fps": (lambda d: (("--num-frames", "auto", "--frame-rate", "200", "--max-num-frames", "500"),
                                          {}), ["--num-frames auto", "593", "500"]),
    "checkpoint not safetensors": (
        lambda d: ((d / "bad.safetensors").write_bytes(b"PK\x03\x04 a zip") and (),
                   dict(model=("--checkpoint-path", "bad.safetensors", "--gemma-root", "gemma", "--no-stage-2"))),
        ["--checkpoint-path", "bad.safetensors"]),
    "integer lora": (
        lambda d: (save_file({"diffusion_model.a.lora_A.weight": torch.ones(2, 2, dtype=torch.int16)},
                             d / "int.safetensors") or ("--lora", "int.safetensors"), {}),
        ["--lora", "int.safetensors", "I16"]),
    "corrupt condition image": (
        lambda d: ((d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken") and ("--image", "broken.png", "0", "1"),
                   {}),
        ["--image", "broken.png"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PREFLIGHT))
def test_refused_before_loading_files_untouched(name, user, no_loading, capsys):
    make, words = PREFLIGHT[name]
    extra, options = make(user)
    before = _snapshot(user)
    assert a2vid.main(_argv(*extra, **options)) == 2
    err = capsys.readouterr().err
    assert "ltx2-a2v: error:" in err
    for word in words:
        assert word in err, (word, err)
    assert _snapshot(user) == before


class _Interrupting:
    """Stands in for the pipeline: loading works, the generation is interrupted (Ctrl-C)."""

    def __init__(self, error):
        self.error = error
        self.called = 0

    def __call__(self, **kwargs):
        self.called += 1
        raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("CUDA out of memory")])
def test_interrupted_generation_leaves_the_old_output(user, monkeypatch, error):
    pipe = _Interrupting(error)
    monkeypatch.setattr(a2vid, "load_pipeline", lambda args: pipe)
    monkeypatch.setattr(a2vid, "prepare_pipeline", lambda pipe, args, device: None)
    before = _snapshot(user)
    with pytest.raises(type(error)):
        a2vid.main(_argv("--num-frames", "9", "--device", "cpu", "--overwrite", output="old.mp4"))
    assert pipe.called == 1
    assert _snapshot(user) == before  # old.mp4 intact, and no temporary file left behind


class _Rendering:
    def __call__(self, **kwargs):
        from types import SimpleNamespace

        frames = np.full((1, 9, 64, 64, 3), 0.5, np.float32)
        return SimpleNamespace(frames=frames, audio=torch.zeros(1, 16000 * 9 // 24), audio_sample_rate=16000)


def test_failure_while_writing_leaves_the_old_output(user, monkeypatch):
    """The mp4 muxer fails half-way (disk full, Ctrl-C): the old file is whole, the partial file removed."""
    monkeypatch.setattr(a2vid, "load_pipeline", lambda args: _Rendering())
    monkeypatch.setattr(a2vid, "prepare_pipeline", lambda pipe, args, device: None)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    _patch_av(monkeypatch, "AudioFrame", failing)
    before = _snapshot(user)
    with pytest.raises(KeyboardInterrupt):
        a2vid.main(_argv("--num-frames", "9", "--device", "cpu", "--overwrite", output="old.mp4"))
    assert calls and _snapshot(user) == before
    monkeypatch.setattr(video_io, "av", av)
    # The same run, uninterrupted, without --overwrite: refused before loading, old.mp4 untouched.
    with pytest.raises(SystemExit):
        a2vid.main(_argv("--num-frames", "9", "--device", "cpu", output="old.mp4"))
    assert _snapshot(user) == before
    # With --overwrite it replaces old.mp4 with the new video (and leaves nothing else).
    assert a2vid.main(_argv("--num-frames", "9", "--device", "cpu", "--overwrite", output="old.mp4")) == 0
    after = _snapshot(user)
    assert after.keys() == before.keys() and after["old.mp4"] != before["old.mp4"]
    with av.open(str(user / "old.mp4")) as container:
        assert container.streams.video[0].frames == 9


def test_export_replaces_only_when_complete(tmp_path, monkeypatch):
    target = tmp_path / "render.mp4"
    target.write_bytes(b"previous render")
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="NaN"):  # refused before the file is touched
        export_to_video_with_audio(frames, np.full((1, 100), np.nan, np.float32), 16000, target)
    original = av.VideoFrame.from_ndarray
    count = []

    def failing(*args, **kwargs):
        count.append(1)
        if len(count) == 3:
            raise OSError("No space left on device")
        return original(*args, **kwargs)

    _patch_av(monkeypatch, "VideoFrame", failing)
    with pytest.raises(OSError, match="No space"):
        export_to_video_with_audio(frames, None, None, target)
    assert len(count) == 3
    assert target.read_bytes() == b"previous render" and os.listdir(tmp_path) == ["render.mp4"]
    monkeypatch.setattr(video_io, "av", av)
    assert export_to_video_with_audio(frames, None, None, target) == str(target)
    assert os.listdir(tmp_path) == ["render.mp4"] and target.read_bytes() != b"previous render"


class _FullDiskContainer:
    """A PyAV output container whose muxing fails with `error` once data is in the file, and whose close (the
    trailer) then fails too, as FFmpeg's does on a full disk."""

    def __init__(self, container, error, fail_at=10):
        self._container, self._error, self._fail_at, self._muxed = container, error, fail_at, 0

    def __getattr__(self, name):
        return getattr(self._container, name)

    def mux(self, packets):
        self._container.mux(packets)
        self._muxed += 1
        if self._muxed == self._fail_at:
            raise self._error

    def close(self):
        self._container.close()
        raise OSError(28, "No space left on device (trailer)")


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_export_that_fails_while_closing_leaves_no_partial_file(tmp_path, monkeypatch, error):
    """The cleanup of a failed export closes the container; when that close fails as well, the temporary file is
    still removed (it was left beside the output) and the first error is the one raised (a Ctrl-C stays a
    KeyboardInterrupt); the previous render is kept."""
    target = tmp_path / "render.mp4"
    target.write_bytes(b"previous render")
    frames = np.zeros((9, 32, 32, 3), np.uint8)
    opened = []

    def open_(path, mode="r", **kwargs):
        opened.append(path)
        return _FullDiskContainer(av.open(path, mode, **kwargs), error)

    fake = types.SimpleNamespace(**{k: getattr(av, k) for k in dir(av) if not k.startswith("__")})
    fake.open = open_
    monkeypatch.setattr(video_io, "av", fake)
    with pytest.raises(type(error)) as raised:
        export_to_video_with_audio(frames, None, None, target, fps=8)
    assert raised.value is error and len(opened) == 1
    assert target.read_bytes() == b"previous render" and os.listdir(tmp_path) == ["render.mp4"]


def test_preflight_leaves_slightly_short_audio_to_the_pipeline(tmp_path):
    """0.320 s of audio under 9 frames at 24 fps (0.375 s): the pipeline takes it, as the reference does (its audio
    latent covers the video's), so the header check must not refuse it; 0.2 s is refused up front."""
    import types

    import numpy as np
    import scipy.io.wavfile

    from ltx2_diffusers.cli_safety import preflight

    def args(seconds):
        path = tmp_path / f"a{seconds}.wav"
        scipy.io.wavfile.write(path, 16000, np.zeros(round(16000 * seconds), dtype=np.int16))
        return types.SimpleNamespace(
            checkpoint_path=None, spatial_upsampler_path=None, distilled_lora=None, lora=[], images=[],
            audio_path=str(path), audio_start_time=0.0, audio_max_duration=None, num_frames=9, frame_rate=24.0,
            max_num_frames=None,
        )  # fmt: skip

    preflight(args(0.32))
    with pytest.raises(ValueError, match="covers about 0.200 s"):
        preflight(args(0.2))
