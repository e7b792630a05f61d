"""`--context-parallel N` of `ltx2-a2v` and `ltx2-av`, and `--enhance-prompt` of `ltx2-a2v`.

Plumbing (monkeypatched `parallel`): refused without torchrun's environment, with a different WORLD_SIZE, with
offloading or `--device`; under torchrun the transformer is made parallel with N, the pipeline goes to the
returned device, the noise comes from a CPU generator, and only rank 0 writes and reports. Then one real run:
`torchrun --nproc-per-node 2 -m ltx2_diffusers.a2vid ... --context-parallel 2` on tiny original files (gloo on
CPU) writes one mp4 whose frames are the single-process run's."""

import inspect
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file

from ltx2_diffusers import a2vid, av_cli, parallel


class _Pipe:
    """Records placement, progress-bar settings and the call; returns a 9-frame clip with audio."""

    def __init__(self):
        self.transformer, self.vae = SimpleNamespace(name="transformer"), SimpleNamespace()
        self.moved, self.progress, self.calls = [], None, []

    def to(self, device):
        self.moved.append(device)
        return self

    def set_progress_bar_config(self, **kwargs):
        self.progress = kwargs

    def load_lora_weights(self, *args, **kwargs):
        raise AssertionError("no adapters in these runs")

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        frames = np.full((1, 9, 64, 64, 3), 0.25, np.float32)
        return SimpleNamespace(frames=frames, audio=torch.zeros(2, 16000 * 9 // 24), audio_sample_rate=16000)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sf.write("song.wav", np.zeros(16000, np.float32), 16000)
    os.mkdir("model")
    open("model/model_index.json", "w").write("{}")
    save_file({"x": torch.ones(1)}, "lora.safetensors")
    return tmp_path


@pytest.fixture
def torchrun_env(monkeypatch):
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def fake_parallel(monkeypatch):
    """`parallel.enable_context_parallel` recording its arguments; `is_main_process` as the test sets it."""
    state = SimpleNamespace(calls=[], main=True)

    def enable(transformer, degree, ring=False):
        state.calls.append((transformer, degree))
        return torch.device("cpu")

    monkeypatch.setattr(parallel, "enable_context_parallel", enable)
    monkeypatch.setattr(parallel, "is_main_process", lambda: state.main)
    verbosity = diffusers_logging.get_verbosity()
    yield state
    diffusers_logging.set_verbosity(verbosity)  # other ranks log errors only


A2V = ("--model", "model", "--audio-path", "song.wav", "--prompt", "p", "--num-frames", "9")
AV = ("--model", "model", "--prompt", "p", "--num-frames", "9")


@pytest.mark.parametrize("cli, base", [(a2vid, A2V), (av_cli, AV)])
def test_refusals(folder, cli, base, monkeypatch, capsys):
    cases = [
        ({}, (), "needs torchrun's environment"),
        ({"RANK": "0", "WORLD_SIZE": "3"}, (), "WORLD_SIZE=3"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, ("--offload", "model"), "--offload model"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, ("--device", "cpu"), "drop --device"),
    ]
    for env, flags, words in cases:
        for key in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(SystemExit):
            cli.parse_args([*base, "--output-path", "o.mp4", "--context-parallel", "2", *flags])
        assert words in capsys.readouterr().err, (env, flags, words)
    with pytest.raises(SystemExit):
        cli.parse_args([*base, "--output-path", "o.mp4", "--context-parallel", "1"])
    assert "--context-parallel must be >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("main_rank", [True, False])
def test_a2v_plumbing(folder, torchrun_env, fake_parallel, monkeypatch, capsys, main_rank):
    pipe = _Pipe()
    fake_parallel.main = main_rank
    monkeypatch.setattr(a2vid, "load_pipeline", lambda args: pipe)
    argv = [*A2V, "--output-path", "out.mp4", "--context-parallel", "2", "--sync-report", "--seed", "7"]
    assert a2vid.main(argv) == 0
    assert fake_parallel.calls == [(pipe.transformer, 2)] and pipe.moved == [torch.device("cpu")]
    (call,) = pipe.calls
    assert call["generator"].device == torch.device("cpu") and call["generator"].initial_seed() == 7
    written = sorted(p.name for p in folder.iterdir() if p.name.startswith("out"))
    out = capsys.readouterr().out
    if main_rank:
        assert written == ["out.mp4", "out_sync.json", "out_sync.png"] and "wrote out.mp4" in out
        assert pipe.progress is None
    else:
        assert written == [] and out == "" and pipe.progress == {"disable": True}


@pytest.mark.parametrize("main_rank", [True, False])
def test_av_plumbing(folder, torchrun_env, fake_parallel, monkeypatch, capsys, main_rank):
    pipe = _Pipe()
    fake_parallel.main = main_rank

    class Fake:
        @classmethod
        def from_pretrained(cls, path, **kwargs):
            return pipe

    monkeypatch.setattr(av_cli, "pipeline_class", lambda: Fake)
    assert av_cli.main([*AV, "--output-path", "out.mp4", "--context-parallel", "2", "--seed", "7"]) == 0
    assert fake_parallel.calls == [(pipe.transformer, 2)] and pipe.moved == [torch.device("cpu")]
    (call,) = pipe.calls
    assert call["generator"].device == torch.device("cpu") and call["generator"].initial_seed() == 7
    assert os.path.exists("out.mp4") == main_rank
    assert ("wrote out.mp4" in capsys.readouterr().out) == main_rank


def test_a2v_without_context_parallel_keeps_its_device_generator(folder, monkeypatch):
    pipe = _Pipe()
    monkeypatch.setattr(a2vid, "load_pipeline", lambda args: pipe)
    monkeypatch.setattr(parallel, "enable_context_parallel", lambda *a, **k: pytest.fail("not asked for"))
    assert a2vid.main([*A2V, "--output-path", "out.mp4", "--device", "cpu"]) == 0
    assert pipe.moved == [torch.device("cpu")] and pipe.calls[0]["generator"].initial_seed() == 10


# ------------------------------------------------------------------------------------------------ --enhance-prompt
def test_a2v_enhance_prompt_reaches_a_pipeline_that_takes_it(folder, monkeypatch, capsys):
    from ltx2_diffusers.pipelines import pipeline_ltx2_audio_to_video as module

    class Enhancing(module.LTX2AudioToVideoPipeline):
        def __call__(self, audio=None, prompt=None, enhance_prompt=False, **kwargs):
            raise AssertionError("the fake pipe is called instead")

    pipe = _Pipe()
    monkeypatch.setattr(a2vid, "load_pipeline", lambda args: pipe)
    supported = "enhance_prompt" in inspect.signature(module.LTX2AudioToVideoPipeline.__call__).parameters
    if not supported:  # today's pipeline: refused clearly, before loading
        with pytest.raises(SystemExit):
            a2vid.main([*A2V, "--output-path", "out.mp4", "--device", "cpu", "--enhance-prompt"])
        assert "--enhance-prompt: prompt enhancement is not implemented" in capsys.readouterr().err
        assert pipe.calls == []
    monkeypatch.setattr(module, "LTX2AudioToVideoPipeline", Enhancing)
    assert a2vid.main([*A2V, "--output-path", "out.mp4", "--device", "cpu", "--enhance-prompt"]) == 0
    assert pipe.calls[-1]["enhance_prompt"] is True
    assert a2vid.main([*A2V, "--output-path", "out2.mp4", "--device", "cpu"]) == 0
    assert "enhance_prompt" not in pipe.calls[-1]


# ------------------------------------------------------------------------------------------------ a real 2-rank run
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed beside the interpreter")
def test_two_rank_torchrun_run_of_the_cli_equals_one_process(tmp_path):
    import factories

    from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3
    from ltx2_diffusers.video_io import read_video_with_audio

    checkpoint = factories.build_checkpoint(tmp_path / "ckpt.safetensors", "2.3", dtype=torch.float32)
    hidden, states = factories.text_encoder_dims(checkpoint)
    gemma = build_tiny_gemma3(tmp_path / "gemma", hidden_size=hidden, num_hidden_layers=states - 1)
    upsampler = factories.build_upsampler(tmp_path / "up.safetensors", dtype=torch.float32)
    lora = factories.build_lora(tmp_path / "lora.safetensors", checkpoint, dtype=torch.float32)
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "tone.wav", (0.5 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000)

    def argv(output):
        return [
            *("--checkpoint-path", str(checkpoint), "--gemma-root", str(gemma)),
            *("--spatial-upsampler-path", str(upsampler), "--distilled-lora", str(lora), "0.6"),
            *("--audio-path", str(tmp_path / "tone.wav"), "--prompt", "a hum", "--output-path", str(output)),
            *("--height", "64", "--width", "64", "--num-frames", "9", "--num-inference-steps", "2"),
            *("--video-stg-blocks", "1", "--dtype", "float32", "--seed", "3"),
        ]

    single = tmp_path / "single.mp4"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ltx2_diffusers.a2vid", *argv(single), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out_dir = tmp_path / "cp"
    out_dir.mkdir()
    launch = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "ltx2_diffusers.a2vid"]
    result = subprocess.run(
        [*launch, *argv(out_dir / "clip.mp4"), "--context-parallel", "2"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip.mp4"]  # rank 0 only, nothing left over
    assert result.stdout.count("wrote ") == 1
    ours, reference = read_video_with_audio(out_dir / "clip.mp4"), read_video_with_audio(single)
    assert ours.frames.shape == reference.frames.shape == (9, 64, 64, 3)
    difference = np.abs(ours.frames.astype(np.int16) - reference.frames.astype(np.int16))
    print(f"2-rank CLI vs one process: max |d| {difference.max()} / 255, mean {difference.mean():.4f}")
    assert difference.max() <= 2 and reference.frames.std() > 1  # same clip (H.264 of ~1e-5-equal frames)
    shutil.rmtree(out_dir)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
