"""`ltx2-a2v` / `python -m ltx2_diffusers.a2vid`: reference defaults, flag parsing, bad arguments, end to end."""

import importlib.util
import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch

from ltx2_diffusers import a2vid


@pytest.fixture
def files(tmp_path):
    """Placeholder files for the path checks (the parser never reads them)."""
    paths = {}
    for name, file_name in (
        ("ckpt", "ckpt.safetensors"),
        ("up", "up.safetensors"),
        ("lora", "lora.safetensors"),
        ("audio", "audio.wav"),
        ("a", "a.png"),
        ("b", "b.png"),
    ):
        paths[name] = tmp_path / file_name
        paths[name].write_bytes(b"x")
    paths["gemma"] = tmp_path / "gemma"
    paths["gemma"].mkdir()
    paths["model"] = tmp_path / "model"
    paths["model"].mkdir()
    return {k: str(v) for k, v in paths.items()}


def _base(files, *extra):
    return ["--model", files["model"], "--audio-path", files["audio"], "--prompt", "p", "--output-path", "o.mp4"]


def _parse(files, *extra):
    return a2vid.parse_args([*_base(files), *extra])


def _reference_call(tmp_path):
    """Run ltx-pipelines' a2vid_two_stage `main` with its pipeline and writer mocked; return what it received."""
    a2v = pytest.importorskip("ltx_pipelines.a2vid_two_stage")
    argv = ["a2vid_two_stage"]
    for flag in ("--checkpoint-path", "--gemma-root", "--spatial-upsampler-path", "--output-path", "--audio-path"):
        argv += [flag, str(tmp_path / flag.strip("-"))]
    argv += ["--prompt", "p", "--distilled-lora", str(tmp_path / "lora")]
    pipeline = mock.MagicMock()
    pipeline.return_value.return_value = (None, None)
    with (
        mock.patch.object(sys, "argv", argv),
        mock.patch.object(a2v, "A2VidPipelineTwoStage", pipeline),
        mock.patch.object(a2v, "encode_video"),
    ):
        a2v.main()
    return pipeline.call_args.kwargs, pipeline.return_value.call_args.kwargs


def test_defaults_equal_the_reference_a2vid_defaults(files, tmp_path):
    build_kwargs, call_kwargs = _reference_call(tmp_path)
    args = _parse(files)
    guider = call_kwargs["video_guider_params"]
    ours = {
        "seed": args.seed,
        "height": args.height,
        "width": args.width,
        "num_frames": args.num_frames,
        "frame_rate": args.frame_rate,
        "num_inference_steps": args.num_inference_steps,
        "negative_prompt": args.negative_prompt,
        "audio_start_time": args.audio_start_time,
        "cfg_scale": args.video_cfg_guidance_scale,
        "stg_scale": args.video_stg_guidance_scale,
        "rescale_scale": args.video_rescale_scale,
        "modality_scale": args.a2v_guidance_scale,
        "stg_blocks": args.video_stg_blocks,
        "skip_step": args.video_skip_step,
        "images": args.images,
        "quantization": args.quantization,
    }
    reference = {
        **{k: call_kwargs[k] for k in ("seed", "height", "width", "num_frames", "frame_rate", "num_inference_steps")},
        "negative_prompt": call_kwargs["negative_prompt"],
        "audio_start_time": call_kwargs["audio_start_time"],
        **{k: getattr(guider, k) for k in ("cfg_scale", "stg_scale", "rescale_scale", "modality_scale")},
        "stg_blocks": guider.stg_blocks,
        "skip_step": guider.skip_step,
        "images": call_kwargs["images"],
        "quantization": build_kwargs["quantization"],
    }
    assert ours == reference
    # audio_max_duration: None on our side means num_frames / frame_rate, which the reference passes explicitly.
    assert args.audio_max_duration is None
    assert call_kwargs["audio_max_duration"] == args.num_frames / args.frame_rate
    # `--distilled-lora PATH` without a strength: 0.8, the converter's and from_single_file's default (issue 10:
    # one default everywhere); the reference CLI's is 1.0, its `--lora` default, which `--lora` keeps.
    ours_lora = _parse(files, "--distilled-lora", files["lora"]).distilled_lora
    assert build_kwargs["distilled_lora"][0].strength == 1.0 and ours_lora[1] == 0.8
    from ltx2_diffusers.convert import DEFAULT_DISTILLED_LORA_SCALE

    assert ours_lora[1] == DEFAULT_DISTILLED_LORA_SCALE
    assert _parse(files, "--lora", files["lora"]).lora == [(files["lora"], build_kwargs["distilled_lora"][0].strength)]
    assert args.stage_2 is True and args.offload == "none" and not args.sync_report


def test_defaults_build_the_pipelines_default_guidance(files):
    from ltx2_diffusers.guidance import MultiModalGuidance

    args = _parse(files)
    assert a2vid._guidance(args, args.a2v_guidance_scale) == MultiModalGuidance()


def test_repeatable_image_and_crf(files):
    args = _parse(files, "--image", files["a"], "0", "1.0", "--image", files["b"], "80", "0.5", "0")
    assert args.images == [(files["a"], 0, 1.0, 33), (files["b"], 80, 0.5, 0)]
    conditions = a2vid._conditions(args)
    assert [(c.image, c.frame_index, c.strength, c.crf) for c in conditions] == args.images


@pytest.mark.parametrize(
    "values, expected", [([], []), (["5"], [5]), (["0", "3", "7"], [0, 3, 7])], ids=["none", "one", "three"]
)
def test_video_stg_blocks(files, values, expected):
    args = _parse(files, "--video-stg-blocks", *values)
    assert args.video_stg_blocks == expected
    assert a2vid._guidance(args, 3.0).stg_blocks == expected


@pytest.mark.parametrize(
    "text, expected",
    [("1,2,3,4", (1.0, 2.0, 3.0, 4.0)), (" 2.5 , 1", (2.5, 1.0)), ("3", (3.0,)), ("-1,0", (-1.0, 0.0))],
)
def test_modality_scale_sweep(files, text, expected):
    assert _parse(files, f"--modality-scale-sweep={text}").modality_scale_sweep == expected


def test_other_flags(files):
    args = _parse(
        files,
        *("--distilled-lora", files["lora"], "0.6", "--spatial-upsampler-path", files["up"]),
        *("--gemma-root", files["gemma"], "--quantization", "fp8-cast", "--offload", "group", "--no-stage-2"),
        *("--height", "96", "--width", "160", "--num-frames", "auto", "--audio-max-duration", "2.5"),
        *("--audio-start-time", "1.5", "--device", "cpu", "--dtype", "float32", "--sync-report"),
    )
    assert args.distilled_lora == (files["lora"], 0.6)
    assert (args.quantization, args.offload, args.stage_2, args.height, args.width) == (
        "fp8-cast",
        "group",
        False,
        96,
        160,
    )
    assert args.num_frames is None and args.audio_max_duration == 2.5 and args.audio_start_time == 1.5
    assert args.sync_report and args.dtype == "float32"


def test_guidance_batching_flags(files):
    args = _parse(files, "--guidance-batch-size", "2", "--reference-arithmetic")
    assert args.guidance_batch_size == 2 and args.reference_arithmetic
    args = _parse(files)
    assert args.guidance_batch_size is None and not args.reference_arithmetic


def test_checkpoint_path_with_its_files(files):
    args = a2vid.parse_args(
        [
            *("--checkpoint-path", files["ckpt"], "--gemma-root", files["gemma"]),
            *("--spatial-upsampler-path", files["up"], "--distilled-lora", files["lora"]),
            *("--audio-path", files["audio"], "--prompt", "p", "--output-path", "o.mp4"),
        ]
    )
    assert args.checkpoint_path == files["ckpt"] and args.model is None
    # One stage needs neither the upsampler nor the LoRA.
    a2vid.parse_args(
        [
            *("--checkpoint-path", files["ckpt"], "--gemma-root", files["gemma"], "--no-stage-2"),
            *("--audio-path", files["audio"], "--prompt", "p", "--output-path", "o.mp4"),
        ]
    )


def test_output_names():
    assert a2vid.sweep_path("out/clip.mp4", 3.0) == "out/clip_modality3.mp4"
    assert a2vid.sweep_path("clip.mp4", 2.5) == "clip_modality2.5.mp4"
    assert a2vid.sync_report_paths("out/clip.mp4") == ("out/clip_sync.png", "out/clip_sync.json")
    table = a2vid.sweep_table(
        [
            dict(modality_scale=1.0, video="a/x_modality1.mp4", best_lag_frames=-2, best_lag_ms=-83.33,
                 sync_score=0.1234, zero_lag_correlation=None),
            dict(modality_scale=3.0, video="a/x_modality3.mp4", best_lag_frames=0, best_lag_ms=0.0,
                 sync_score=0.5, zero_lag_correlation=0.5),
        ]
    )  # fmt: skip
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| a2v guidance scale")
    assert lines[2] == "| 1 | x_modality1.mp4 | -2 | -83.3 | 0.123 | n/a |"
    assert lines[3] == "| 3 | x_modality3.mp4 | +0 | +0.0 | 0.500 | 0.500 |"


def test_audio_rates_aac_lacks_are_resampled_for_the_mp4():
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 11000)).astype(np.float32)
    same, rate = a2vid._aac_compatible(audio, 44100)
    assert same is audio and rate == 44100
    resampled, rate = a2vid._aac_compatible(audio, 11000)
    assert rate == 48000 and resampled.shape == (2, 48000) and resampled.dtype == np.float32


BAD_ARGUMENTS = {
    "guidance batch size 0": (["--guidance-batch-size", "0"], "argument --guidance-batch-size: must be >= 1"),
    "no model": (["--audio-path", "{audio}", "--prompt", "p", "--output-path", "o.mp4"],
                 "one of the arguments --checkpoint-path --model is required"),
    "both models": (["--checkpoint-path", "{ckpt}"], "not allowed with argument"),
    "no prompt": (None, "--prompt"),
    "image arity": (["--image", "{a}", "0"], "--image: expects PATH FRAME STRENGTH [CRF], got 2 values"),
    "image frame": (["--image", "{a}", "x", "1"], "--image: FRAME must be an integer, got 'x'"),
    "image strength": (["--image", "{a}", "0", "1.5"], "--image: STRENGTH must be in [0, 1], got 1.5"),
    "image crf": (["--image", "{a}", "0", "1", "60"], "--image: CRF must be in [0, 51]"),
    "image missing": (["--image", "missing.png", "0", "1"], "--image: no such file 'missing.png'"),
    "image frame range": (["--image", "{a}", "121", "1"], "FRAME 121 is out of range for --num-frames 121"),
    "height 64": (["--height", "100"], "--height must be a positive multiple of 64 with two stages, got 100"),
    "width 32": (["--no-stage-2", "--width", "80"], "--width must be a positive multiple of 32 with --no-stage-2"),
    "num frames": (["--num-frames", "120"], "--num-frames: must be 8k + 1 (9, 17, ..., 121), got 120"),
    "num frames text": (["--num-frames", "many"], "--num-frames: expected 8k + 1 (9, 17, ..., 121) or 'auto'"),
    "steps": (["--num-inference-steps", "1"], "--num-inference-steps must be in [2, 1000], got 1"),
    "frame rate": (["--frame-rate", "0"], "--frame-rate: must be > 0"),
    "start time": (["--audio-start-time", "-1"], "--audio-start-time: must be >= 0"),
    "max duration": (["--audio-max-duration", "0"], "--audio-max-duration: must be > 0"),
    "cfg nan": (["--video-cfg-guidance-scale", "nan"], "--video-cfg-guidance-scale: expected a finite number"),
    "stg blocks": (["--video-stg-blocks", "-1"], "--video-stg-blocks: must be >= 0, got -1"),
    "skip step": (["--video-skip-step", "x"], "--video-skip-step: expected an integer, got 'x'"),
    "sweep empty": (["--modality-scale-sweep", "1,,2"], "--modality-scale-sweep: expected comma-separated numbers"),
    "sweep text": (["--modality-scale-sweep", "1,a"], "--modality-scale-sweep: expected a number, got 'a'"),
    "sweep twice": (["--modality-scale-sweep", "1,1"], "--modality-scale-sweep: values must be distinct"),
    "sweep short": (["--modality-scale-sweep", "1,2", "--num-frames", "1"], "need --num-frames >= 9"),
    "quantization": (["--quantization", "fp8-fast"], "--quantization: invalid choice: 'fp8-fast'"),
    "offload": (["--offload", "disk"], "--offload: invalid choice: 'disk'"),
    "dtype": (["--dtype", "int8"], "--dtype: invalid choice: 'int8'"),
    "lora arity": (["--distilled-lora", "{lora}", "1", "2"], "--distilled-lora: expects PATH [STRENGTH]"),
    "lora strength": (["--distilled-lora", "{lora}", "x"], "--distilled-lora: STRENGTH must be a number"),
    "lora missing": (["--distilled-lora", "nope.safetensors"], "--distilled-lora: no such file 'nope.safetensors'"),
    "upsampler missing": (["--spatial-upsampler-path", "nope"], "--spatial-upsampler-path: no such file 'nope'"),
    "gemma missing": (["--gemma-root", "nope"], "--gemma-root: no such folder 'nope'"),
    "device": (["--device", "tpu9"], "--device 'tpu9'"),
    "sequential on cpu": (["--device", "cpu", "--offload", "sequential"], "--offload sequential needs an accelerator"),
    "model file": (None, "--model must be a converted folder or a Hub id, got the file"),
    "audio missing": (None, "--audio-path: no such file 'nope.wav'"),
    "checkpoint no gemma": (None, "--gemma-root is required with --checkpoint-path"),
    "checkpoint no upsampler": (None, "--spatial-upsampler-path is required with --checkpoint-path for two stages"),
    "checkpoint no lora": (None, "--distilled-lora is required with --checkpoint-path for two stages"),
    "checkpoint missing": (None, "--checkpoint-path: no such file 'nope.safetensors'"),
    "output folder": (None, "is a folder; give a file name"),
}  # fmt: skip


def _bad_argv(name, extra, files):
    common = ["--audio-path", files["audio"], "--prompt", "p", "--output-path", "o.mp4"]
    ckpt = ["--checkpoint-path", files["ckpt"]]
    special = {
        "no prompt": ["--model", files["model"], "--audio-path", files["audio"], "--output-path", "o.mp4"],
        "model file": ["--model", files["ckpt"], *common],
        "audio missing": ["--model", files["model"], "--audio-path", "nope.wav", "--prompt", "p", "--output-path", "o"],
        "checkpoint no gemma": [*ckpt, *common],
        "checkpoint no upsampler": [*ckpt, "--gemma-root", files["gemma"], "--distilled-lora", files["gemma"], *common],
        "checkpoint no lora": [*ckpt, "--gemma-root", files["gemma"], "--spatial-upsampler-path", files["up"],
                               *common],
        "checkpoint missing": ["--checkpoint-path", "nope.safetensors", *common],
        "output folder": ["--model", files["model"], "--audio-path", files["audio"], "--prompt", "p",
                          "--output-path", files["gemma"]],
    }  # fmt: skip
    if name in special:
        return special[name]
    extra = [part.format(**files) for part in extra]
    return extra if name == "no model" else [*_base(files), *extra]


@pytest.mark.parametrize("name", list(BAD_ARGUMENTS))
def test_bad_arguments(name, files, capsys):
    extra, message = BAD_ARGUMENTS[name]
    argv = _bad_argv(name, extra, files)
    with pytest.raises(SystemExit) as exit_info:
        a2vid.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "ltx2-a2v: error:" in err
    assert message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a missing GPU")
def test_cuda_device_without_cuda(files, capsys):
    with pytest.raises(SystemExit):
        _parse(files, "--device", "cuda")
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_module_and_console_script_help():
    for command in ([sys.executable, "-m", "ltx2_diffusers.a2vid", "--help"], ["ltx2-a2v", "--help"]):
        if command[0] == "ltx2-a2v":
            script = os.path.join(os.path.dirname(sys.executable), "ltx2-a2v")
            if not os.path.exists(script):
                pytest.skip("console script not installed (pip install -e .)")
            command = [script, "--help"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "--modality-scale-sweep" in result.stdout and "--video-stg-blocks" in result.stdout


# ---------------------------------------------------------------------------------------------------- end to end
def _have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_single_file = pytest.mark.skipif(
    not all(
        _have(m)
        for m in (
            "ltx_core",
            "ltx2_diffusers.loaders.single_file_upsampler",
            "ltx2_diffusers.loaders.single_file_video_vae",
            "ltx2_diffusers.utils.tiny_text_encoder",
        )
    ),
    reason="single-file loaders or ltx-core not available yet",
)
needs_converter = pytest.mark.skipif(not _have("ltx2_diffusers.convert"), reason="converter not available yet")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """Tiny original-format checkpoint, upsampler, distilled LoRA, Gemma 3 folder and a 1.5 s drum WAV."""
    from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3

    factories = pytest.importorskip("factories")
    root = tmp_path_factory.mktemp("a2v_cli")
    checkpoint = factories.build_checkpoint(root / "ckpt.safetensors", "2.3", dtype=torch.float32)
    hidden, states = factories.text_encoder_dims(checkpoint)
    demo = _demo_module()
    audio = demo.write_drums(root / "drums.wav", 1.5, sample_rate=16000)
    return {
        "root": root,
        "checkpoint": checkpoint,
        "upsampler": factories.build_upsampler(root / "up.safetensors", dtype=torch.float32),
        "lora": factories.build_lora(root / "lora.safetensors", checkpoint, dtype=torch.float32),
        "gemma": build_tiny_gemma3(root / "gemma", hidden_size=hidden, num_hidden_layers=states - 1),
        "audio": audio,
    }


def _demo_module():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "demo.py")
    spec = importlib.util.spec_from_file_location("ltx2_demo_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_argv(out, audio, *extra):
    return [
        *("--audio-path", str(audio), "--prompt", "a drummer", "--output-path", str(out)),
        *("--height", "64", "--width", "64", "--num-frames", "auto", "--num-inference-steps", "2"),
        *("--video-stg-blocks", "1", "--dtype", "float32", "--device", "cpu", "--seed", "3"),
        *extra,
    ]


def _read(path):
    from ltx2_diffusers.video_io import read_video_with_audio

    return read_video_with_audio(path, require_audio=True)


@needs_single_file
def test_end_to_end_from_original_files(tiny_files, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    model = [
        *("--checkpoint-path", str(tiny_files["checkpoint"]), "--gemma-root", str(tiny_files["gemma"])),
        *("--spatial-upsampler-path", str(tiny_files["upsampler"])),
        *("--distilled-lora", str(tiny_files["lora"]), "0.8"),
    ]
    assert a2vid.main([*model, *_tiny_argv(out, tiny_files["audio"], "--sync-report")]) == 0
    stdout = capsys.readouterr().out
    media = _read(out)
    # 1.5 s at 24 fps -> 36 frames covered -> 33 (8k + 1); the audio is the input's 33 / 24 s.
    assert media.frames.shape == (33, 64, 64, 3) and media.fps == 24
    assert abs(media.audio.shape[-1] / media.sample_rate - 33 / 24) <= 1 / 24
    png, json_path = a2vid.sync_report_paths(str(out))
    assert os.path.getsize(png) > 0 and "best_lag_frames" in json.load(open(json_path))
    assert "done in" in stdout and ("peak RSS" in stdout or "peak CUDA" in stdout)


@needs_single_file
@needs_converter
def test_end_to_end_converted_folder_and_sweep(tiny_files, tmp_path, capsys):
    converted = tiny_files["root"] / "converted"
    if not converted.exists():
        subprocess.run(
            [
                *(sys.executable, "-m", "ltx2_diffusers.convert", "--checkpoint-path", str(tiny_files["checkpoint"])),
                *("--spatial-upsampler-path", str(tiny_files["upsampler"])),
                *("--distilled-lora", str(tiny_files["lora"]), "0.8", "--gemma-root", str(tiny_files["gemma"])),
                *("--output-dir", str(converted)),
            ],
            check=True,
        )
    single = tmp_path / "single.mp4"
    assert a2vid.main(["--model", str(converted), *_tiny_argv(single, tiny_files["audio"])]) == 0
    sweep = tmp_path / "sweep.mp4"
    argv = ["--model", str(converted), *_tiny_argv(sweep, tiny_files["audio"], "--modality-scale-sweep", "1,3")]
    assert a2vid.main(argv) == 0
    stdout = capsys.readouterr().out
    clips = [a2vid.sweep_path(str(sweep), s) for s in (1.0, 3.0)]
    # Same seed: the sweep's a2v 3 clip is the plain run's (default a2v scale 3); a2v 1 differs.
    same = _read(clips[1]).frames
    np.testing.assert_array_equal(same, _read(single).frames)
    assert not np.array_equal(_read(clips[0]).frames, same)
    table = json.load(open(tmp_path / "sweep_modality_sweep.json"))
    assert [row["modality_scale"] for row in table["clips"]] == [1.0, 3.0]
    assert (tmp_path / "sweep_modality_sweep.md").read_text().count("\n| ") == 3
    assert "| a2v guidance scale |" in stdout


@needs_single_file
def test_pipeline_errors_become_cli_errors(tiny_files, tmp_path, capsys):
    """Audio shorter than the requested video: the pipeline's ValueError, reported as a CLI error (exit 2)."""
    model = [
        *("--checkpoint-path", str(tiny_files["checkpoint"]), "--gemma-root", str(tiny_files["gemma"])),
        "--no-stage-2",
    ]
    argv = [*model, *_tiny_argv(tmp_path / "x.mp4", tiny_files["audio"]), "--num-frames", "121"]
    assert a2vid.main(argv) == 2
    assert "ltx2-a2v: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


@needs_single_file
def test_fp8_cast_is_ltx_cores(tiny_files):
    """`--quantization fp8-cast` on a loaded transformer == the fp8-cast single-file loader (ltx-core's policy)."""
    from ltx2_diffusers.loaders.fp8 import load_transformer_from_single_file
    from ltx2_diffusers.pipelines.pipeline_ltx2_audio_to_video import LTX2AudioToVideoPipeline

    checkpoint = tiny_files["checkpoint"]  # float32 file, loaded as float32 on both sides
    expected = load_transformer_from_single_file(checkpoint, fp8_cast=True, torch_dtype=torch.float32).state_dict()
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, distilled_lora=(tiny_files["lora"], 0.8), torch_dtype=torch.float32
    )
    patched = a2vid.fp8_cast(pipe.transformer)
    assert patched and all(".lora_" not in name for name in patched)
    state = {k.replace(".base_layer", ""): v for k, v in pipe.transformer.state_dict().items() if ".lora_" not in k}
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key].float(), value.float()), key
    assert sum(v.dtype == torch.float8_e4m3fn for v in state.values()) == len(
        [k for k in expected if expected[k].dtype == torch.float8_e4m3fn]
    )
    # the distilled LoRA is pipeline-owned (outside the transformer) and stays float32
    lora = [t for pair in pipe.distilled_lora.pairs().values() for t in pair]
    assert lora and all(v.dtype == torch.float32 for v in lora)
    assert pipe.transformer.dtype == torch.float32
