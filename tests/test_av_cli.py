"""`ltx2-av` (text / images -> audio + video): flags -> the pipeline call, the `--distilled` preset, refusals
before any load, and the mp4 carrying the generated audio.

The pipeline class is replaced by `FakeAudioVideoPipeline` (the documented `LTX2AudioVideoPipeline.__call__`
signature), which records how it was loaded and called and returns a known clip and waveform."""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ltx2_diffusers import av_cli
from ltx2_diffusers.guidance import MultiModalGuidance
from ltx2_diffusers.pipelines.image_conditions import LTX2ImageCondition


RATE = 16000
FRAMES = 17


class FakeAudioVideoPipeline:
    """Records loading and the call; returns 17 grey frames and a 440 Hz stereo tone of the clip's length."""

    loads: list = []
    instances: list = []
    variant = "dev"
    folder_lora = None  # what a converted folder's `distilled_lora` component holds

    def __init__(self):
        self.calls, self.adapters, self.weights, self.moved = [], [], None, []
        self.transformer, self.vae = SimpleNamespace(name="transformer"), SimpleNamespace()
        self.distilled_lora = None if self.folder_lora is None else SimpleNamespace(lora_state_dict=self.folder_lora)
        self.config = _Config({"model_variant": self.variant, "distilled_lora_scale": 0.7})
        type(self).instances.append(self)

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        cls.loads.append(("from_pretrained", path, kwargs))
        return cls()

    @classmethod
    def from_single_file(
        cls,
        path,
        spatial_upsampler_path=None,
        distilled_lora=None,
        gemma_root=None,
        torch_dtype=None,
        model_variant="dev",
    ):
        kwargs = dict(locals())
        del kwargs["cls"], kwargs["path"]
        cls.loads.append(("from_single_file", path, kwargs))
        return cls()

    def load_lora_weights(self, source, adapter_name=None):
        self.adapters.append((source, adapter_name))

    def set_adapters(self, names, weights):
        self.weights = (list(names), list(weights))

    def to(self, device):
        self.moved.append(device)
        return self

    def set_progress_bar_config(self, **kwargs):
        self.progress = kwargs

    def __call__(
        self,
        prompt,
        negative_prompt=None,
        conditions=None,
        height=1024,
        width=1536,
        num_frames=121,
        frame_rate=24.0,
        num_inference_steps=None,
        sigmas=None,
        video_guidance=None,
        audio_guidance=None,
        stage_2=True,
        distilled_lora_scale=None,
        enhance_prompt=False,
        generator=None,
        latents=None,
        output_type="pil",
        return_dict=True,
        callback_on_step_end=None,
    ):
        self.calls.append(dict(locals()))
        frames = np.full((1, FRAMES, 64, 96, 3), 0.5, np.float32)
        t = np.arange(int(RATE * FRAMES / frame_rate)) / RATE
        tone = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
        return SimpleNamespace(frames=frames, audio=torch.from_numpy(tone)[None], audio_sample_rate=RATE)


class _Config:
    """A diffusers-like frozen config: attribute access and `dict(config)`."""

    def __init__(self, values):
        self._values = dict(values)

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def keys(self):
        return self._values.keys()

    def __getitem__(self, key):
        return self._values[key]


@pytest.fixture
def fake(monkeypatch):
    class Fake(FakeAudioVideoPipeline):
        loads, instances = [], []

    monkeypatch.setattr(av_cli, "pipeline_class", lambda: Fake)
    return Fake


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("ltx-2.3-dev.safetensors", "ltx-2.3-distilled.safetensors"):
        save_file({"x": torch.ones(1)}, name, metadata={"model_version": "2.3.0"})
    for name in ("up.safetensors", "lora.safetensors", "style.safetensors"):
        save_file({"x": torch.ones(1)}, name)
    os.mkdir("gemma")
    os.mkdir("model")
    open("model/model_index.json", "w").write("{}")
    open("model/preview.mp4", "wb").write(b"the user's preview")
    for name, colour in (("a.png", (200, 10, 10)), ("b.png", (10, 200, 10))):
        Image.new("RGB", (96, 64), colour).save(name)
    return tmp_path


def _argv(*extra, model=("--model", "model"), output="out.mp4"):
    return [*model, "--prompt", "a choir in a cathedral", "--output-path", output, *extra]


DEV = (
    "--checkpoint-path",
    "ltx-2.3-dev.safetensors",
    "--gemma-root",
    "gemma",
    "--spatial-upsampler-path",
    "up.safetensors",
)
DISTILLED = (
    *("--checkpoint-path", "ltx-2.3-distilled.safetensors", "--gemma-root", "gemma"),
    *("--spatial-upsampler-path", "up.safetensors"),
)


def _call(fake):
    (pipe,) = fake.instances
    (call,) = pipe.calls
    return pipe, call


# ------------------------------------------------------------------------------------------------ flags -> call
def test_flags_become_call_arguments_and_the_mp4_carries_the_audio(files, fake, capsys):
    from ltx2_diffusers.video_io import read_video_with_audio

    argv = _argv(
        *("--negative-prompt", "blur", "--image", "a.png", "0", "0.8", "--image", "b.png", "8", "0.5", "20"),
        *("--num-frames", str(FRAMES), "--frame-rate", "25", "--height", "128", "--width", "192"),
        *("--num-inference-steps", "4", "--seed", "5", "--video-cfg-guidance-scale", "4", "--video-stg-blocks", "3"),
        *("--audio-cfg-guidance-scale", "6", "--v2a-guidance-scale", "2", "--audio-stg-blocks", "1", "2"),
        *("--audio-skip-step", "1", "--no-stage-2", "--device", "cpu", "--dtype", "float32"),
    )
    assert av_cli.main(argv) == 0
    pipe, call = _call(fake)
    assert fake.loads == [("from_pretrained", "model", {"dtype": torch.float32})]
    assert call["prompt"] == "a choir in a cathedral" and call["negative_prompt"] == "blur"
    assert call["conditions"] == [LTX2ImageCondition("a.png", 0, 0.8, 33), LTX2ImageCondition("b.png", 8, 0.5, 20)]
    assert (call["num_frames"], call["frame_rate"], call["height"], call["width"]) == (FRAMES, 25.0, 128, 192)
    assert call["num_inference_steps"] == 4 and call["sigmas"] is None and call["stage_2"] is False
    assert call["video_guidance"] == MultiModalGuidance(cfg_scale=4.0, stg_blocks=[3])
    assert call["audio_guidance"] == MultiModalGuidance(
        cfg_scale=6.0, modality_scale=2.0, stg_blocks=[1, 2], skip_step=1
    )
    assert call["generator"].initial_seed() == 5 and call["output_type"] == "pt"
    assert call["enhance_prompt"] is False and call["distilled_lora_scale"] is None
    assert pipe.moved == [torch.device("cpu")] and pipe.adapters == []
    media = read_video_with_audio("out.mp4", require_audio=True)
    assert media.frames.shape == (FRAMES, 64, 96, 3) and media.fps == 25
    assert media.sample_rate == RATE and media.audio.shape[0] == 2
    assert abs(media.audio.shape[-1] / RATE - FRAMES / 25) < 0.05
    # the generated tone, not silence: 440 Hz dominates the spectrum of the left channel
    left = media.audio[0, 2000:-2000]
    peak = np.argmax(np.abs(np.fft.rfft(left))) * RATE / len(left)
    assert abs(peak - 440) < 5 and 0.8 < np.abs(left).max() < 1.1  # AAC overshoots full scale slightly
    right = media.audio[1, 2000:-2000]
    assert abs(np.sqrt(np.mean(right**2) / np.mean(left**2)) - 0.5) < 0.05  # the channels kept apart
    assert "wrote out.mp4" in capsys.readouterr().out


def test_left_out_flags_are_the_pipelines_defaults(files, fake):
    assert av_cli.main(_argv("--device", "cpu")) == 0
    _, call = _call(fake)
    assert call["num_inference_steps"] is None and call["sigmas"] is None
    assert call["video_guidance"] is None and call["audio_guidance"] is None and call["negative_prompt"] is None
    assert (call["height"], call["width"], call["num_frames"], call["frame_rate"]) == (1024, 1536, 121, 24.0)
    assert call["stage_2"] is True and call["conditions"] == [] and call["generator"].initial_seed() == 10


def test_sigmas(files, fake, capsys):
    assert av_cli.main(_argv("--sigmas", "1, 0.725,0.421875,0", "--device", "cpu")) == 0
    assert _call(fake)[1]["sigmas"] == [1.0, 0.725, 0.421875, 0.0]
    for bad, words in (
        (("--sigmas", "1,0.5"), "ending in 0"),
        (("--sigmas", "1,0.9,0.95,0"), "fall strictly"),
        (("--sigmas", "2,0"), "fall strictly"),
        (("--sigmas", "1,nan,0"), "finite"),
        (("--sigmas", "1,0.5,0", "--num-inference-steps", "3"), "--sigmas holds 2 steps"),
    ):
        with pytest.raises(SystemExit):
            av_cli.parse_args(_argv(*bad))
        assert words in capsys.readouterr().err


def test_user_loras_are_weighted_adapters(files, fake):
    assert av_cli.main(_argv("--lora", "style.safetensors", "0.3", "--device", "cpu")) == 0
    pipe, _ = _call(fake)
    assert pipe.adapters == [("style.safetensors", "cli_lora_0")] and pipe.weights == (["cli_lora_0"], [0.3])


# ------------------------------------------------------------------------------------------------ --distilled
def test_distilled_preset_on_a_dev_checkpoint_matches_the_reference_recipe(files, fake):
    from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES

    argv = _argv("--distilled", "--distilled-lora", "lora.safetensors", "0.6", "--lora", "style.safetensors",
                 "--device", "cpu", model=DEV)  # fmt: skip
    assert av_cli.main(argv) == 0
    pipe, call = _call(fake)
    (how, path, kwargs) = fake.loads[0]
    assert (how, path) == ("from_single_file", "ltx-2.3-dev.safetensors")
    assert kwargs["distilled_lora"] == ("lora.safetensors", 0.6) and kwargs["model_variant"] == "dev"
    assert pipe.adapters == [("lora.safetensors", "distilled_stage_1"), ("style.safetensors", "cli_lora_0")]
    assert pipe.weights == (["distilled_stage_1", "cli_lora_0"], [0.6, 1.0])
    assert call["sigmas"] == list(DISTILLED_SIGMA_VALUES)  # distilled.py's stage-1 table
    disabled = MultiModalGuidance(cfg_scale=1.0, stg_scale=0.0, rescale_scale=0.0, modality_scale=1.0, stg_blocks=[])
    assert call["video_guidance"] == call["audio_guidance"] == disabled  # simple_denoising_func: no guidance
    assert call["negative_prompt"] is None and call["distilled_lora_scale"] == 0.0  # not added again at stage 2
    assert call["num_inference_steps"] is None


def test_distilled_preset_uses_the_folders_lora(files, fake):
    fake.folder_lora = staticmethod(lambda: {"transformer.x.lora_A.weight": torch.ones(1, 1)})
    assert av_cli.main(_argv("--distilled", "--device", "cpu")) == 0
    pipe, call = _call(fake)
    ((source, name),) = pipe.adapters
    assert name == "distilled_stage_1" and list(source) == ["transformer.x.lora_A.weight"]
    assert pipe.weights == (["distilled_stage_1"], [0.7])  # the folder's distilled_lora_scale
    assert call["distilled_lora_scale"] == 0.0


def test_distilled_preset_on_a_distilled_model_adds_nothing(files, fake, capsys):
    assert av_cli.main(_argv("--distilled", "--device", "cpu", model=DISTILLED)) == 0
    pipe, call = _call(fake)
    assert fake.loads[0][2]["distilled_lora"] is None and fake.loads[0][2]["model_variant"] == "distilled"
    assert pipe.adapters == [] and pipe.weights is None
    assert "distilled_lora_scale" in call and call["distilled_lora_scale"] is None
    assert call["sigmas"] is not None and call["video_guidance"].cfg_scale == 1.0
    # a converted distilled folder with --distilled-lora: refused after loading, nothing written
    fake.variant, fake.instances, listed = "distilled", [], os.listdir()
    argv = _argv("--distilled", "--distilled-lora", "lora.safetensors", "--device", "cpu", output="d.mp4")
    assert av_cli.main(argv) == 2
    assert "already a distilled model" in capsys.readouterr().err and os.listdir() == listed


def test_distilled_dev_folder_without_any_lora_is_refused(files, fake, capsys):
    assert av_cli.main(_argv("--distilled", "--device", "cpu", output="d.mp4")) == 2
    assert "--distilled-lora PATH" in capsys.readouterr().err and not os.path.exists("d.mp4")


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--distilled", "--video-cfg-guidance-scale", "3"), "drop --video-cfg-guidance-scale"),
        (("--distilled", "--audio-stg-blocks", "1"), "drop --audio-stg-blocks"),
        (("--distilled", "--sigmas", "1,0"), "drop --sigmas"),
        (("--distilled", "--num-inference-steps", "8"), "drop --num-inference-steps"),
        (("--distilled", "--negative-prompt", "x"), "drop --negative-prompt"),
    ],
)
def test_distilled_preset_refuses_what_it_fixes(files, fake, capsys, extra, words):
    with pytest.raises(SystemExit):
        av_cli.parse_args(_argv(*extra))
    assert words in capsys.readouterr().err and fake.loads == []


def test_checkpoint_needs_its_stage_2_files(files, fake, capsys):
    cases = [
        ((*DEV[:4], "--distilled-lora", "lora.safetensors"), "--spatial-upsampler-path is required"),
        (DEV, "--distilled-lora is required"),
        ((*DEV, "--distilled"), "--distilled on a dev checkpoint needs the distilled LoRA"),
        ((*DISTILLED, "--distilled-lora", "lora.safetensors"), "already a distilled checkpoint"),
    ]
    for model, words in cases:
        with pytest.raises(SystemExit):
            av_cli.parse_args(_argv(model=model))
        assert words in capsys.readouterr().err
    assert av_cli.parse_args(_argv(model=DISTILLED)).checkpoint_variant == "distilled"  # no LoRA needed
    assert av_cli.parse_args(_argv("--no-stage-2", model=DEV[:4])).checkpoint_variant == "dev"
    assert fake.loads == []


# ------------------------------------------------------------------------------------------------ safety
SAFETY = {
    "output is the image": (dict(output="a.png", extra=("--image", "a.png", "0", "1")), ["--output-path", ".mp4"]),
    "output links to the image": (dict(output="im.mp4", extra=("--image", "a.png", "0", "1")),
                                  ["--image", "a.png"]),
    "output links to the checkpoint": (dict(output="ck.mp4", model=DISTILLED), ["--checkpoint-path"]),
    "output links to the lora": (dict(output="l.mp4", extra=("--lora", "style.safetensors")), ["--lora"]),
    "output replaces a file in the model folder": (dict(output="model/preview.mp4"), ["--model", "preview.mp4"]),
    "gif output": (dict(output="x.gif"), ["--output-path", "x.gif"]),
    "output is a folder": (dict(output="gemma"), ["is a folder"]),
    "video cfg 1e30": (dict(extra=("--video-cfg-guidance-scale", "1e30")), ["--video-cfg-guidance-scale", "100"]),
    "audio cfg 1e30": (dict(extra=("--audio-cfg-guidance-scale", "1e30")), ["--audio-cfg-guidance-scale", "100"]),
    "audio rescale 5": (dict(extra=("--audio-rescale-scale", "5")), ["--audio-rescale-scale", "[0, 2]"]),
    "frame rate 1e6": (dict(extra=("--frame-rate", "1000000")), ["--frame-rate"]),
    "frames not 8k+1": (dict(extra=("--num-frames", "10")), ["--num-frames", "8k + 1"]),
    "image frame out of range": (dict(extra=("--num-frames", "9", "--image", "a.png", "9", "1")), ["FRAME 9"]),
    "missing image": (dict(extra=("--image", "nope.png", "0", "1")), ["--image", "nope.png"]),
    "tokens above the bound": (dict(extra=("--num-frames", "521", "--height", "2048", "--width", "2048")),
                               ["--max-video-tokens"]),
}  # fmt: skip
LINKS = {"im.mp4": "a.png", "ck.mp4": "ltx-2.3-distilled.safetensors", "l.mp4": "style.safetensors"}


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink()
    }


@pytest.mark.parametrize("name", list(SAFETY))
def test_refused_before_loading_files_untouched(name, files, fake, capsys):
    options, words = SAFETY[name]
    output = options.get("output", "out.mp4")
    if output in LINKS:
        os.symlink(LINKS[output], output)
    before = _snapshot(files)
    with pytest.raises(SystemExit) as exit_info:
        av_cli.main(_argv(*options.get("extra", ()), output=output, model=options.get("model", ("--model", "model"))))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert all(word in error for word in words), error
    assert fake.loads == [] and _snapshot(files) == before


def test_unreadable_image_refused_before_loading(files, fake, capsys):
    open("bad.png", "wb").write(b"not an image")
    assert av_cli.main(_argv("--image", "bad.png", "0", "1")) == 2
    assert "--image" in capsys.readouterr().err and fake.loads == []


# ------------------------------------------------------------------------------------------------ features
def test_enhance_prompt_is_passed_when_the_pipeline_takes_it(files, fake, monkeypatch, capsys):
    assert av_cli.main(_argv("--enhance-prompt", "--device", "cpu")) == 0
    assert _call(fake)[1]["enhance_prompt"] is True

    class Older(FakeAudioVideoPipeline):
        loads, instances = [], []

        def __call__(self, prompt, negative_prompt=None):
            raise AssertionError("not called")

    monkeypatch.setattr(av_cli, "pipeline_class", lambda: Older)
    with pytest.raises(SystemExit):
        av_cli.main(_argv("--enhance-prompt", output="older.mp4"))
    assert (
        "--enhance-prompt: prompt enhancement is not implemented in this version of Older" in capsys.readouterr().err
    )
    assert Older.loads == []


def test_the_pipeline_import_is_lazy():
    code = (
        "import sys; import ltx2_diffusers.av_cli as m; m.build_parser(); "
        "assert 'ltx2_diffusers.pipelines.pipeline_ltx2_audio_video' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    try:
        import ltx2_diffusers.pipelines.pipeline_ltx2_audio_video  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="no LTX2AudioVideoPipeline"):
            av_cli.pipeline_class()
    else:
        assert av_cli.pipeline_class().__name__ == "LTX2AudioVideoPipeline"


def test_module_and_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "ltx2_diffusers.av_cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--distilled", "--sigmas", "--audio-cfg-guidance-scale", "--context-parallel", "--image"):
        assert flag in result.stdout
    setup = open(os.path.join(os.path.dirname(__file__), "..", "setup.py")).read()
    assert '"ltx2-av=ltx2_diffusers.av_cli:main"' in setup


def test_distilled_stage_1_adapter_on_a_real_converted_folder(tmp_path):
    """The preset's route on real loaders (the A2V pipeline shares them): the folder's distilled LoRA becomes the
    PEFT adapter `distilled_stage_1` at the folder's strength, with the stored weights."""
    import factories

    from ltx2_diffusers import LTX2AudioToVideoPipeline
    from ltx2_diffusers.convert import convert_checkpoint

    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=4)
    lora = factories.cached_checkpoint("lora", checkpoint_path=checkpoint, seed=6, dtype=torch.float32)
    convert_checkpoint(checkpoint, tmp_path / "folder", distilled_lora=lora, distilled_lora_scale=0.6, dtype="float32")
    pipe = LTX2AudioToVideoPipeline.from_pretrained(tmp_path / "folder")
    args = SimpleNamespace(checkpoint_variant=None, distilled_lora=None, model=str(tmp_path / "folder"))
    source, strength = av_cli.distilled_stage_1_lora(pipe, args)
    assert strength == 0.6
    av_cli.load_user_loras(pipe, [(source, strength)], [av_cli.DISTILLED_ADAPTER])
    assert set(pipe.transformer.peft_config) == {av_cli.DISTILLED_ADAPTER}
    layer = pipe.transformer.transformer_blocks[0].attn1.to_q
    assert layer.scaling[av_cli.DISTILLED_ADAPTER] == pytest.approx(
        0.6 * layer.lora_alpha[av_cli.DISTILLED_ADAPTER] / layer.r[av_cli.DISTILLED_ADAPTER]
    )
    stored = source["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"]
    assert torch.equal(layer.lora_A[av_cli.DISTILLED_ADAPTER].weight, stored)
