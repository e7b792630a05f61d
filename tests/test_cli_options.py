"""`ltx2-a2v` accepts every option of ltx-pipelines' `a2vid_two_stage` (issue 10, point 5): user LoRAs, prompt
enhancement, both quantization policies, the audio-guidance flags (no effect on frozen audio, with a warning), and
one distilled-LoRA default strength (0.8) everywhere."""

import inspect
import logging
import sys
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from ltx2_diffusers import a2vid
from ltx2_diffusers.loaders import fp8
from ltx2_diffusers.pipelines.pipeline_ltx2_audio_to_video import LTX2AudioToVideoPipeline


a2v_reference = pytest.importorskip("ltx_pipelines.a2vid_two_stage")


class _Stop(Exception):
    pass


def reference_parser():
    """The parser ltx-pipelines' `a2vid_two_stage.main` builds (captured when it starts parsing)."""
    captured = {}

    def parse_args(self, *args, **kwargs):
        captured["parser"] = self
        raise _Stop

    with mock.patch("argparse.ArgumentParser.parse_args", parse_args), pytest.raises(_Stop):
        a2v_reference.main()
    return captured["parser"]


@pytest.fixture
def files(tmp_path):
    rate = 16000
    sf.write(tmp_path / "audio.wav", np.zeros(rate * 6, np.float32), rate)
    for name in ("ckpt", "up", "lora1", "lora2", "dist"):
        save_file({"x": torch.ones(1)}, tmp_path / f"{name}.safetensors")
    (tmp_path / "gemma").mkdir()
    (tmp_path / "amax.json").write_text("{}")
    return {k: str(tmp_path / v) for k, v in (
        ("audio", "audio.wav"), ("ckpt", "ckpt.safetensors"), ("up", "up.safetensors"), ("lora1", "lora1.safetensors"),
        ("lora2", "lora2.safetensors"), ("dist", "dist.safetensors"), ("gemma", "gemma"), ("amax", "amax.json"),
        ("out", "out.mp4"),
    )}  # fmt: skip


def _options(parser):
    return {option for action in parser._actions for option in action.option_strings}


def test_every_reference_option_is_accepted():
    reference = _options(reference_parser())
    ours = _options(a2vid.build_parser())
    assert reference - ours == set()
    assert {"--lora", "--enhance-prompt", "--quantization", "--audio-cfg-guidance-scale", "--v2a-guidance-scale",
            "--audio-stg-guidance-scale", "--audio-stg-blocks", "--audio-rescale-scale", "--audio-skip-step"} <= reference  # fmt: skip


def _full_reference_argv(files):
    """A command line for the reference CLI using every one of its options (except --enhance-prompt and
    fp8-scaled-mm, which need a GPU / an enhancer; they have their own tests)."""
    return [
        *("--checkpoint-path", files["ckpt"], "--gemma-root", files["gemma"], "--prompt", "a drummer"),
        *("--output-path", files["out"], "--seed", "7", "--height", "512", "--width", "768", "--num-frames", "97"),
        *("--frame-rate", "25", "--num-inference-steps", "12", "--image", files["up"], "0", "0.9", "20"),
        *("--lora", files["lora1"], "0.6", "--lora", files["lora2"], "--quantization", "fp8-cast"),
        *("--negative-prompt", "ugly", "--video-cfg-guidance-scale", "4", "--video-stg-guidance-scale", "0.5"),
        *("--video-rescale-scale", "0.3", "--video-stg-blocks", "3", "4", "--a2v-guidance-scale", "2"),
        *("--video-skip-step", "1", "--audio-cfg-guidance-scale", "6", "--audio-stg-guidance-scale", "0.5"),
        *("--audio-rescale-scale", "0.2", "--audio-stg-blocks", "1", "--v2a-guidance-scale", "2.5"),
        *("--audio-skip-step", "2", "--distilled-lora", files["dist"], "0.7", "--spatial-upsampler-path", files["up"]),
        *("--audio-path", files["audio"], "--audio-start-time", "0.5", "--audio-max-duration", "4.5"),
    ]


def test_a_full_reference_command_line_means_the_same(files, caplog):
    argv = _full_reference_argv(files)
    with mock.patch.object(sys, "argv", ["a2vid_two_stage", *argv]):
        reference = reference_parser().parse_args(argv)
    with caplog.at_level(logging.WARNING):
        ours = a2vid.parse_args(argv)
    for name in ("seed", "height", "width", "num_frames", "frame_rate", "num_inference_steps", "negative_prompt",
                 "video_cfg_guidance_scale", "video_stg_guidance_scale", "video_rescale_scale", "video_stg_blocks",
                 "a2v_guidance_scale", "video_skip_step", "audio_cfg_guidance_scale", "audio_stg_guidance_scale",
                 "audio_rescale_scale", "audio_stg_blocks", "v2a_guidance_scale", "audio_skip_step",
                 "audio_start_time", "audio_max_duration", "prompt"):  # fmt: skip
        assert getattr(ours, name) == getattr(reference, name), name
    assert [(p, s) for p, s in ours.lora] == [(files["lora1"], 0.6), (files["lora2"], 1.0)]
    assert [(lora.path, lora.strength) for lora in reference.lora] == ours.lora
    assert ours.distilled_lora == (files["dist"], 0.7) == (reference.distilled_lora[0].path,
                                                          reference.distilled_lora[0].strength)  # fmt: skip
    assert [tuple(image) for image in reference.images] == ours.images
    assert ours.quantization == "fp8-cast" and ours.quantization_amax_path is None
    # The audio-guidance flags changed: one warning names each and says they have no effect.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no effect" in warnings[0] and "frozen" in warnings[0]
    for flag in ("--audio-cfg-guidance-scale 6.0", "--v2a-guidance-scale 2.5", "--audio-stg-blocks [1]",
                 "--audio-skip-step 2", "--audio-rescale-scale 0.2", "--audio-stg-guidance-scale 0.5"):  # fmt: skip
        assert flag in warnings[0], flag


def test_audio_guidance_defaults_are_the_references_and_silent(files, caplog):
    from ltx_pipelines.utils.constants import LTX_2_3_PARAMS

    audio = LTX_2_3_PARAMS.audio_guider_params
    with caplog.at_level(logging.WARNING):
        args = a2vid.parse_args(["--model", files["gemma"], "--audio-path", files["audio"], "--prompt", "p",
                                 "--output-path", files["out"]])  # fmt: skip
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (args.audio_cfg_guidance_scale, args.audio_stg_guidance_scale, args.audio_rescale_scale,
            args.v2a_guidance_scale, args.audio_skip_step, args.audio_stg_blocks) == (
        audio.cfg_scale, audio.stg_scale, audio.rescale_scale, audio.modality_scale, audio.skip_step,
        audio.stg_blocks)  # fmt: skip


def _base(files, *extra):
    return ["--model", files["gemma"], "--audio-path", files["audio"], "--prompt", "p", "--output-path",
            files["out"], *extra]  # fmt: skip


def test_enhance_prompt(files, capsys):
    supported = "enhance_prompt" in inspect.signature(LTX2AudioToVideoPipeline.__call__).parameters
    if supported:
        assert a2vid.parse_args(_base(files, "--enhance-prompt")).enhance_prompt is True
        return
    with pytest.raises(SystemExit):
        a2vid.parse_args(_base(files, "--enhance-prompt"))
    assert "--enhance-prompt: prompt enhancement is not implemented" in capsys.readouterr().err
    assert a2vid.parse_args(_base(files)).enhance_prompt is False


def test_fp8_scaled_mm(files, capsys, monkeypatch):
    if not hasattr(fp8, "enable_fp8_scaled_mm"):
        with pytest.raises(SystemExit):
            a2vid.parse_args(_base(files, "--quantization", "fp8-scaled-mm"))
        err = capsys.readouterr().err
        assert "--quantization fp8-scaled-mm is not available" in err and "Hopper" in err
    calls = []

    def enable_fp8_scaled_mm(transformer, amax_path=None):
        calls.append((transformer, amax_path))

    monkeypatch.setattr(fp8, "enable_fp8_scaled_mm", enable_fp8_scaled_mm, raising=False)
    plain = a2vid.parse_args(_base(files, "--quantization", "fp8-scaled-mm", "--device", "cpu"))
    calibrated = a2vid.parse_args(_base(files, "--quantization", "fp8-scaled-mm", files["amax"], "--device", "cpu"))
    assert (plain.quantization, plain.quantization_amax_path) == ("fp8-scaled-mm", None)
    assert calibrated.quantization_amax_path == files["amax"]
    pipe = mock.MagicMock()
    a2vid.prepare_pipeline(pipe, plain, torch.device("cpu"))
    a2vid.prepare_pipeline(pipe, calibrated, torch.device("cpu"))
    assert calls == [(pipe.transformer, None), (pipe.transformer, files["amax"])]
    with pytest.raises(SystemExit):
        a2vid.parse_args(_base(files, "--quantization", "fp8-cast", files["amax"]))
    assert "fp8-cast takes no AMAX_PATH" in capsys.readouterr().err


def test_user_loras_become_weighted_adapters(files):
    pipe = mock.MagicMock()
    args = a2vid.parse_args(_base(files, "--lora", files["lora1"], "0.25", "--lora", files["lora2"]))
    assert a2vid.load_user_loras(pipe, args.lora) == ["cli_lora_0", "cli_lora_1"]
    assert pipe.load_lora_weights.call_args_list == [
        mock.call(files["lora1"], adapter_name="cli_lora_0"),
        mock.call(files["lora2"], adapter_name="cli_lora_1"),
    ]
    pipe.set_adapters.assert_called_once_with(["cli_lora_0", "cli_lora_1"], [0.25, 1.0])
    pipe.reset_mock()
    assert a2vid.load_user_loras(pipe, []) == [] and not pipe.method_calls


def test_user_lora_on_a_real_pipeline():
    """`--lora` through the real loader: the adapter is attached with its strength next to the distilled LoRA."""
    factories = pytest.importorskip("factories")
    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=4)
    lora = factories.cached_checkpoint("lora", checkpoint_path=checkpoint, seed=6, dtype=torch.float32)
    style = factories.cached_checkpoint("lora", checkpoint_path=checkpoint, seed=7, dtype=torch.float32)
    pipe = LTX2AudioToVideoPipeline.from_single_file(checkpoint, distilled_lora=lora, torch_dtype=torch.float32)
    assert pipe.config.distilled_lora_scale == 0.8  # from_single_file's default == the CLI's
    # The CLI's loader from original files (what `--checkpoint-path ... --lora PATH 0.4` runs).
    args = SimpleNamespace(
        dtype="float32",
        checkpoint_path=str(checkpoint),
        spatial_upsampler_path=None,
        distilled_lora=(str(lora), 0.8),
        gemma_root=None,
        lora=[(str(style), 0.4)],
    )
    pipe = a2vid.load_pipeline(args)
    assert set(pipe.transformer.peft_config) == {"cli_lora_0"}  # the distilled LoRA is pipeline-owned, not PEFT
    assert pipe.distilled_lora is not None and pipe.distilled_lora.pairs()
    layer = next(m for m in pipe.transformer.modules() if hasattr(m, "scaling") and "cli_lora_0" in m.scaling)
    assert layer.scaling["cli_lora_0"] == pytest.approx(0.4)


def test_one_distilled_lora_default_strength(files):
    from ltx2_diffusers.convert import DEFAULT_DISTILLED_LORA_SCALE

    args = a2vid.parse_args(_base(files, "--distilled-lora", files["dist"]))
    assert args.distilled_lora == (files["dist"], 0.8) and DEFAULT_DISTILLED_LORA_SCALE == 0.8
    assert a2vid.DEFAULT_DISTILLED_LORA_SCALE == 0.8
    assert "(default strength 0.8, as the converter)" in " ".join(a2vid.build_parser().format_help().split())


def test_size_bound_overrides_reach_the_pipeline(files, monkeypatch):
    seen = {}

    def fake_pipe(**kwargs):
        seen.update(kwargs)
        frames = np.zeros((1, 9, 64, 64, 3), np.float32)
        return SimpleNamespace(frames=frames, audio=torch.zeros(1, 6000), audio_sample_rate=16000)

    monkeypatch.setattr(a2vid, "load_pipeline", lambda args: fake_pipe)
    monkeypatch.setattr(a2vid, "prepare_pipeline", lambda pipe, args, device: None)
    argv = _base(files, "--num-frames", "9", "--height", "64", "--width", "64", "--device", "cpu")
    assert a2vid.main([*argv, "--max-num-frames", "2000", "--max-video-tokens", "300000"]) == 0
    assert seen["max_num_frames"] == 2000 and seen["max_video_tokens"] == 300000
    assert "enhance_prompt" not in seen
