"""What the documentation tells a user is true: the README's Python examples run (on tiny weights: only paths, sizes
and the device substituted) and give what the text says, each public pipeline `__call__`'s `Args:` lists exactly its
signature's parameters, and every CLI flag the README mentions exists in the parser of the command it is given to."""

import contextlib
import dataclasses
import inspect
import io
import pathlib
import re

import factories
import pytest
import torch
from tiny_a2v import write_tone

from ltx2_diffusers import (
    LTX2AudioToVideoPipeline,
    LTX2AudioVideoPipeline,
    LTX2ImageToAudioVideoPipeline,
    a2vid,
    av_cli,
    convert,
    sync,
    sync_report,
)
from ltx2_diffusers.audio.io import load_audio
from ltx2_diffusers.pipelines import ltx2_base


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
FOLDER = "ltx-2.3-diffusers"  # the converted folder the README's examples load


# ------------------------------------------------------------------------------------------------ Args sections
def documented_arguments(doc: str) -> list[str]:
    """The names the `Args:` section documents: one entry per line at the section's indentation, `name[, name...]`
    before its `(type)` or `:`."""
    body = doc.split("Args:\n", 1)[1]
    body = re.split(r"\n\s*(?:Examples?|Returns|Raises):", body, maxsplit=1)[0]
    lines = [line for line in body.splitlines() if line.strip()]
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    names = []
    for line in lines:
        if len(line) - len(line.lstrip()) == indent:
            head = re.match(r"\s*(\w+(?:\s*,\s*\w+)*)\s*[(:]", line)
            assert head, f"an Args entry without a name: {line.strip()!r}"
            names += [name.strip() for name in head.group(1).split(",")]
    return names


@pytest.mark.parametrize(
    "function",
    [
        LTX2AudioToVideoPipeline.__call__,
        LTX2AudioVideoPipeline.__call__,
        LTX2ImageToAudioVideoPipeline.__call__,
        LTX2AudioToVideoPipeline.enable_vae_tiling,
    ],
    ids=lambda f: f.__qualname__,
)
def test_args_list_exactly_the_signature(function):
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = [n for n, p in inspect.signature(function).parameters.items() if n != "self" and p.kind not in kinds]
    documented = documented_arguments(function.__doc__)
    assert len(documented) == len(set(documented)), documented
    assert sorted(documented) == sorted(parameters)


def test_the_args_parser_sees_inline_and_missing_entries():
    doc = "Args:\n    a (`int`): x. b (`int`): y.\n    c, d: z\n        more\n\n    Returns:\n        e"
    assert documented_arguments(doc) == ["a", "c", "d"]


# ------------------------------------------------------------------------------------------------ CLI flags
def _help_options(main) -> set[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.getvalue()))


def _options(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


@pytest.fixture(scope="module")
def parsers():
    return {
        "ltx2-a2v": a2vid.build_parser(),
        "ltx2-av": av_cli.build_parser(),
        "python -m ltx2_diffusers.convert": convert.build_parser(),
    }


def _readme_commands(text: str) -> list[tuple[str, str]]:
    """`(command, its line)` for each command of the README's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            for command in ("ltx2-a2v", "ltx2-av", "python -m ltx2_diffusers.convert"):
                if line.startswith(command + " "):
                    commands.append((command, line))
    return commands


def test_readme_command_lines_use_their_parsers_flags(parsers):
    commands = _readme_commands(README.read_text())
    assert {c for c, _ in commands} == set(parsers)
    for command, line in commands:
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
        assert flags and flags <= _options(parsers[command]), (command, flags - _options(parsers[command]))


def test_every_flag_the_readme_names_exists(parsers):
    text = README.read_text()
    named = {f for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w*-])", text)}
    known = set().union(*map(_options, parsers.values()), _help_options(sync.main), {"--nproc-per-node"})
    assert named - known == set()
    assert "--audio-*" in text and any(f.startswith("--audio-") for f in _options(parsers["ltx2-av"]))
    # flags the README gives to one command
    for command in ("ltx2-a2v", "ltx2-av"):
        options = _options(parsers[command])
        assert {"--sync-report", "--overwrite", "--lora", "--image", "--compile", "--attention-backend"} <= options
        assert {"--memory-budget-gib", "--offload", "--vae-tiling", "--guidance-batch-size"} <= options
        assert {"--quantization", "--context-parallel", "--v2a-guidance-scale", "--seed", "--device"} <= options
    assert "--modality-scale-sweep" in _options(parsers["ltx2-a2v"])
    assert "--distilled" in _options(parsers["ltx2-av"])
    assert {"--out", "--overwrite"} <= _help_options(sync.main)


def test_readme_flag_values_are_the_parsers_choices(parsers):
    text = README.read_text()
    for command in ("ltx2-a2v", "ltx2-av"):
        actions = {a.option_strings[0]: a for a in parsers[command]._actions if a.option_strings}
        offload = re.search(r"`--offload ([\w|]+)`", text).group(1).split("|")
        assert set(offload) <= set(actions["--offload"].choices)
        compile_choices = re.search(r"`--compile \{([\w,]+)\}`", text).group(1).split(",")
        assert compile_choices == list(actions["--compile"].choices)
        assert actions["--seed"].default is not None
    policies = re.findall(r"`--quantization ([\w-]+)`", text) + re.findall(r"`--quantization (fp8-[\w-]+)", text)
    assert policies and all(p in ("fp8-cast", "fp8-scaled-mm") for p in policies)


# ------------------------------------------------------------------------------------------------ Python examples
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The README's converted folder on tiny weights (with a tiny Gemma 3), its song (0.8 s tone) and face image."""
    from PIL import Image

    from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3

    root = tmp_path_factory.mktemp("docs")
    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=0)
    upsampler = factories.cached_checkpoint("upsampler", seed=0)
    lora = factories.cached_checkpoint("lora", checkpoint_path=checkpoint, seed=0)
    hidden, states = factories.text_encoder_dims(checkpoint)
    gemma = build_tiny_gemma3(root / "gemma", hidden_size=hidden, num_hidden_layers=states - 1)
    folder = root / FOLDER
    convert.convert_checkpoint(
        checkpoint, folder, spatial_upsampler_path=upsampler, distilled_lora=lora, gemma_root=gemma
    )
    write_tone(root / "song.wav", seconds=0.8)
    Image.new("RGB", (80, 96), (120, 60, 30)).save(root / "face.png")
    return root


@pytest.fixture
def tiny_recipe(monkeypatch):
    """The checkpoint's default recipe at the tiny transformer's size: STG on block 1 (of 2), 2 stage-1 steps."""
    original = ltx2_base.LTX2PipelineBase.version_defaults

    def tiny(self):
        defaults = original(self)

        def fit(g):
            return g if g is None else dataclasses.replace(g, stg_blocks=[1])

        return dataclasses.replace(
            defaults, num_inference_steps=2, video_guidance=fit(defaults.video_guidance),
            audio_guidance=fit(defaults.audio_guidance),
        )  # fmt: skip

    monkeypatch.setattr(ltx2_base.LTX2PipelineBase, "version_defaults", tiny)


def readme_example(index: int, root: pathlib.Path, *substitutions: tuple[str, str]) -> str:
    """The README's `index`-th Python block with the paths under `root`, the CPU for CUDA, and `substitutions`."""
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[index]
    names = ("song.wav", "face.png", "song.mp4", "trumpet.mp4")
    paths = [(f'"{name}"', repr(str(root / name))) for name in names] + [
        ('"first_frame.png"', repr(str(root / "face.png")))
    ]
    for old, new in [(f'"{FOLDER}"', repr(str(root / FOLDER))), ('"cuda"', '"cpu"'), *substitutions]:
        assert old in code, old
        code = code.replace(old, new)
    for old, new in paths:
        code = code.replace(old, new)
    return code


def test_readme_audio_to_video_example(converted, tiny_recipe):
    code = readme_example(
        0, converted, ("audio=", "height=128, width=128, audio="),
        ("modality_scale=3.0)", "modality_scale=3.0, stg_blocks=[1])"),
    )  # fmt: skip
    namespace = {}
    exec(compile(code, "README audio-to-video example", "exec"), namespace)
    out = namespace["out"]
    # num_frames=None: the longest 8k + 1 clip the 0.8 s audio covers at 24 fps (17 frames: 0.708 s; 25: 1.04 s)
    assert out.frames.shape == (1, 17, 128, 128, 3)
    # out.audio is the ORIGINAL input samples covering the video
    original, rate = load_audio(converted / "song.wav")
    assert out.audio_sample_rate == rate
    assert torch.equal(out.audio, original[..., : round(17 / 24 * rate)])
    assert (converted / "song.mp4").stat().st_size > 0
    # `ltx2_diffusers.sync_report(frames, audio, sample_rate, fps)`: lags up to +-0.5 s, the lag also in ms
    report = sync_report(out.frames[0], out.audio, out.audio_sample_rate, 24)
    assert report.max_lag_frames == 12 and report.best_lag_ms == pytest.approx(report.best_lag_frames * 1000 / 24)


def test_readme_text_and_image_to_audio_video_example(converted, tiny_recipe):
    code = readme_example(
        1, converted, ("height=512, width=768", "height=128, width=128"), ("num_frames=121", "num_frames=9")
    )
    namespace = {}
    exec(compile(code, "README text/image-to-audio+video example", "exec"), namespace)
    out = namespace["out"]  # the image pipeline's
    assert len(out.frames) == 1 and len(out.frames[0]) == 9 and out.frames[0][0].size == (128, 128)
    assert out.audio.dim() == 2 and out.audio.dtype == torch.float32
    assert out.audio_sample_rate == namespace["i2av"].vocoder.config.output_sampling_rate
    assert (converted / "trumpet.mp4").stat().st_size > 0
