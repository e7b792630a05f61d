"""LTX2AudioToVideoPipeline behaviour on tiny models: loading, output contract, mp4, offload, bad inputs."""

import av
import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch
from factories import build_checkpoint, build_lora, build_upsampler
from test_pipeline_parity import contexts

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2ImageCondition, MultiModalGuidance, export_to_video_with_audio


GUIDANCE = MultiModalGuidance(stg_blocks=[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    checkpoint = build_checkpoint(root / "ltx-2.3-tiny.safetensors", "2.3", seed=4)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=5)
    lora = build_lora(root / "lora.safetensors", checkpoint, seed=6, dtype=torch.float32)
    rate = 22050
    t = np.arange(int(rate * 0.9)) / rate
    wave = (0.5 * np.sin(2 * np.pi * 330 * t) * np.exp(-((t * 4) % 1) * 6)).astype(np.float32)
    audio = root / "mono.wav"
    sf.write(audio, wave, rate)  # mono, on purpose: the reference cannot take it
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, 0.6), torch_dtype=torch.float32
    )
    return dict(root=root, pipe=pipe, audio=audio, rate=rate, checkpoint=checkpoint, upsampler=upsampler, lora=lora)


def call(pipe, audio, **kwargs):
    args = dict(
        audio=audio,
        prompt_contexts=contexts(0, "2.3"),
        negative_prompt_contexts=contexts(1, "2.3"),
        height=128,
        width=128,
        num_frames=9,
        num_inference_steps=2,
        video_guidance=GUIDANCE,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    args.update(kwargs)
    return pipe(**args)


def test_from_single_file_components_and_lora_default(setup):
    pipe = setup["pipe"]
    assert pipe.config.distilled_lora_scale == 0.6
    assert pipe.config.model_version.startswith("2.3")
    assert pipe.distilled_lora is not None and not getattr(pipe.transformer, "peft_config", None)
    assert pipe.vocoder is not None and pipe.connectors is not None and pipe.latent_upsampler is not None


def test_output_contract_np_and_original_audio(setup):
    out = call(setup["pipe"], setup["audio"])
    assert out.frames.shape == (1, 9, 128, 128, 3)
    assert out.frames.dtype == np.float32 and 0.0 <= out.frames.min() and out.frames.max() <= 1.0
    source, rate = sf.read(setup["audio"], dtype="float32", always_2d=True)
    n = round(9 / 24.0 * rate)
    assert out.audio_sample_rate == rate
    assert torch.equal(out.audio, torch.from_numpy(source[:n].T.copy()))


def test_num_frames_none_follows_the_audio(setup):
    out = call(setup["pipe"], setup["audio"], num_frames=None, output_type="latent")
    # 0.9 s of audio at 24 fps covers 21.6 frames: the largest 8k + 1 is 17 (latent frames (17 - 1) / 8 + 1 = 3).
    assert out.frames.shape[2] == 3
    assert out.audio.shape[-1] == round(17 / 24.0 * setup["rate"])


def test_lora_scale_override_and_stage_switch(setup):
    pipe = setup["pipe"]
    default = call(pipe, setup["audio"], output_type="latent").frames
    same = call(pipe, setup["audio"], output_type="latent", distilled_lora_scale=0.6).frames
    other = call(pipe, setup["audio"], output_type="latent", distilled_lora_scale=0.0).frames
    assert torch.equal(default, same)
    assert (default - other).abs().max() > 1e-4


def test_one_stage_runs_at_the_requested_size(setup):
    out = call(setup["pipe"], setup["audio"], stage_2=False, height=96, width=64, output_type="np")
    assert out.frames.shape == (1, 9, 96, 64, 3)


def test_mp4_with_original_audio(setup, tmp_path):
    out = call(setup["pipe"], setup["audio"], output_type="np")
    path = export_to_video_with_audio(out.frames[0], out.audio, out.audio_sample_rate, tmp_path / "out.mp4", fps=24)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        frames = list(container.decode(video=0))
        assert len(frames) == 9
        assert (frames[0].width, frames[0].height) == (128, 128)
        assert float(video.average_rate) == 24.0
        assert audio.sample_rate == setup["rate"]
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert abs(samples / setup["rate"] - 9 / 24.0) <= 1 / 24.0 + 1024 / setup["rate"]


@pytest.mark.parametrize("mode", ["model", "sequential", "group"])
def test_offload_modes_give_the_same_frames(setup, mode):
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        setup["checkpoint"],
        spatial_upsampler_path=setup["upsampler"],
        distilled_lora=(setup["lora"], 0.6),
        torch_dtype=torch.float32,
    )
    expected = call(pipe, setup["audio"], output_type="latent").frames
    if mode == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    elif mode == "sequential":
        # diffusers' enable_sequential_cpu_offload targets "cpu:0", which accelerate's hooks cannot round-trip on a
        # CPU-only machine (plain tensors end up in _parameters); install the same hooks with device "cpu".
        from accelerate import cpu_offload

        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                cpu_offload(component, torch.device("cpu"), offload_buffers=len(component._parameters) > 0)
    else:
        pipe.enable_group_offload(
            onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
        )
    assert torch.equal(call(pipe, setup["audio"], output_type="latent").frames, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 96}, "height must be a positive multiple of 64"),
        ({"width": 100, "stage_2": False}, "width must be a positive multiple of 32"),
        ({"num_frames": 10}, "num_frames must be 8k \\+ 1"),
        ({"num_frames": 33}, "the audio covers .* but the video needs"),
        ({"conditions": [LTX2ImageCondition(np.zeros((8, 8, 3), np.uint8), 9, 1.0)]}, "frame_index 9 is out of range"),
        ({"conditions": [(np.zeros((8, 8, 3), np.uint8), 0, 1.5)]}, "strength must be in \\[0, 1\\]"),
        ({"video_guidance": MultiModalGuidance(stg_blocks=[7])}, "block 7 out of range"),
    ],
)
def test_bad_inputs_rejected_before_any_model_runs(setup, kwargs, match, monkeypatch):
    pipe = setup["pipe"]

    def forbidden(*args, **kwargs):
        raise AssertionError("a model ran")

    for component in (pipe.transformer, pipe.vae, pipe.audio_vae, pipe.latent_upsampler):
        monkeypatch.setattr(component, "forward", forbidden)
    monkeypatch.setattr(pipe.audio_vae, "encode_waveform", forbidden)
    with pytest.raises(ValueError, match=match):
        call(pipe, setup["audio"], **kwargs)


def test_stage_2_needs_upsampler_and_distilled_lora(setup):
    pipe = LTX2AudioToVideoPipeline.from_single_file(setup["checkpoint"], torch_dtype=torch.float32)
    with pytest.raises(ValueError, match="needs a latent_upsampler"):
        call(pipe, setup["audio"])
    pipe.latent_upsampler = setup["pipe"].latent_upsampler
    with pytest.raises(ValueError, match="needs the distilled LoRA"):
        call(pipe, setup["audio"])


def test_prompt_text_path_and_cached_embeddings(setup, tmp_path):
    """A prompt through the tiny Gemma 3 == the same prompt's cached (diffusers-convention) embeddings."""
    from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3, tiny_gemma3_dims

    pipe = setup["pipe"]
    gemma = build_tiny_gemma3(tmp_path / "gemma", **tiny_gemma3_dims(pipe.connectors.config))
    from ltx2_diffusers.pipelines.pipeline_ltx2_audio_to_video import load_gemma

    pipe.text_encoder, pipe.tokenizer = load_gemma(gemma, torch.float32)
    try:
        kwargs = dict(
            prompt_contexts=None, negative_prompt_contexts=None, max_sequence_length=128, output_type="latent"
        )
        by_text = call(pipe, setup["audio"], prompt="a man sings", negative_prompt="blurry", **kwargs).frames
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt("a man sings", "blurry", max_sequence_length=128)
        assert embeds.shape[-1] == pipe.connectors.config.caption_channels * pipe.connectors.config.text_proj_in_factor
        pipe.text_encoder = None  # the text encoder can be dropped once the embeddings exist
        by_embeds = call(
            pipe,
            setup["audio"],
            prompt_embeds=embeds,
            prompt_attention_mask=mask,
            negative_prompt_embeds=neg_embeds,
            negative_prompt_attention_mask=neg_mask,
            **kwargs,
        ).frames
        assert torch.equal(by_text, by_embeds)
        with pytest.raises(ValueError, match="no text_encoder"):
            call(pipe, setup["audio"], prompt="a man sings", **kwargs)
    finally:
        pipe.text_encoder = pipe.tokenizer = None


def test_callback_and_interrupt(setup):
    pipe = setup["pipe"]
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, float(timestep), pipeline.stage_index, tuple(tensors["latents"].shape)))
        if len(seen) == 3:
            pipeline._interrupt = True
        return {}

    call(pipe, setup["audio"], callback_on_step_end=callback, output_type="latent")
    # stage 1 (2 steps), then stage 2 (step indices continue) stops after its first step
    assert [s[0] for s in seen] == [0, 1, 2] and [s[2] for s in seen] == [0, 0, 1]
    assert seen[0][1] > 990 and seen[2][1] == pytest.approx(909.375)  # timesteps = sigma * 1000


def test_tiled_decode_runs(setup):
    pipe = setup["pipe"]
    full = call(pipe, setup["audio"], output_type="pt").frames
    pipe.vae.enable_tiling(
        tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=32, tile_sample_stride_width=32
    )
    try:
        tiled = call(pipe, setup["audio"], output_type="pt").frames
    finally:
        pipe.vae.disable_tiling()
    assert tiled.shape == full.shape and torch.isfinite(tiled).all()


def test_distilled_lora_connector_keys_are_not_applied(setup, tmp_path):
    """ltx-core applies the distilled LoRA to the transformer only; its connector keys must not change the text."""
    lora = build_lora(
        tmp_path / "lora_conn.safetensors", setup["checkpoint"], seed=6, dtype=torch.float32, include_connectors=True
    )
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        setup["checkpoint"],
        spatial_upsampler_path=setup["upsampler"],
        distilled_lora=(lora, 0.6),
        torch_dtype=torch.float32,
    )
    assert pipe.distilled_lora is not None  # pipeline-owned, outside PEFT
    assert not getattr(pipe.transformer, "peft_config", None) and not getattr(pipe.connectors, "peft_config", None)
    expected = call(setup["pipe"], setup["audio"], output_type="latent").frames
    assert torch.equal(call(pipe, setup["audio"], output_type="latent").frames, expected)


def test_defaults_follow_the_checkpoint_version(setup):
    """ltx-pipelines' detect_params: LTX-2.3 -> 30 steps, STG block 28; LTX-2 -> 40 steps, STG block 29."""
    from ltx_pipelines.utils.constants import LTX_2_3_PARAMS, LTX_2_PARAMS

    pipe = setup["pipe"]
    defaults = pipe.version_defaults()
    steps, guidance = defaults.num_inference_steps, defaults.video_guidance
    assert (
        steps == LTX_2_3_PARAMS.num_inference_steps
        and guidance.stg_blocks == LTX_2_3_PARAMS.video_guider_params.stg_blocks
    )
    audio = LTX_2_3_PARAMS.audio_guider_params
    assert (defaults.audio_guidance.cfg_scale, defaults.audio_guidance.stg_blocks) == (
        audio.cfg_scale,
        audio.stg_blocks,
    )
    assert defaults.sigmas is None and defaults.stage_2_lora
    pipe.register_to_config(model_version="2.0.0")
    try:
        defaults = pipe.version_defaults()
        steps, guidance = defaults.num_inference_steps, defaults.video_guidance
        assert steps == LTX_2_PARAMS.num_inference_steps
        assert guidance.stg_blocks == LTX_2_PARAMS.video_guider_params.stg_blocks
        assert guidance.cfg_scale == LTX_2_PARAMS.video_guider_params.cfg_scale
    finally:
        pipe.register_to_config(model_version="2.3.0")
    seen = []
    call(pipe, setup["audio"], num_inference_steps=None, video_guidance=MultiModalGuidance(stg_blocks=[1]),
         output_type="latent", callback_on_step_end=lambda p, i, s, t: seen.append(i) or {})  # fmt: skip
    assert len(seen) == 30 + 3  # stage 1 at the version default, then the 3 distilled stage-2 steps


def test_latents_with_keyframe_condition_and_shape_check(setup):
    pipe = setup["pipe"]
    latents = torch.randn(1, 128, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    out = call(pipe, setup["audio"], latents=latents, conditions=[(image, 8, 0.5)], output_type="latent")
    assert out.frames.shape == (1, 128, 2, 4, 4)
    with pytest.raises(ValueError, match="latents must have shape \\(1, 128, 2, 2, 2\\)"):
        call(pipe, setup["audio"], latents=torch.randn(1, 128, 2, 4, 4), output_type="latent")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": ["a", "b"], "prompt_contexts": None}, "prompt must be one string"),
        ({"callback_on_step_end_tensor_inputs": ["prompt_embeds"]}, "callback_on_step_end_tensor_inputs has"),
        ({"audio_start_time": None}, "audio_start_time must be a finite number"),
        ({"audio_max_duration": 0.2}, "audio_max_duration=0.2 s is shorter than the video"),
        ({"prompt_contexts": (torch.zeros(2, 4, 64), torch.zeros(2, 4, 32))}, "prompt_contexts must be"),
        (
            {
                "prompt_contexts": None,
                "negative_prompt_contexts": None,
                "prompt_embeds": torch.zeros(1, 128, 192),
                "prompt_attention_mask": torch.ones(1, 128, dtype=torch.long),
            },
            "no text_encoder/tokenizer: pass negative",
        ),
    ],
)
def test_more_bad_inputs(setup, kwargs, match):
    with pytest.raises(ValueError, match=match):
        call(setup["pipe"], setup["audio"], **kwargs)


def test_condition_images_any_pil_mode_and_channel_layout():
    from ltx2_diffusers.pipelines.image_conditions import prepare_condition_image

    rgb = PIL.Image.new("RGB", (40, 30), (255, 0, 0))
    for mode in ("P", "CMYK", "LA", "L"):
        converted = rgb.convert(mode)
        expected = prepare_condition_image(converted.convert("RGB"), 32, 32, crf=0)
        assert torch.equal(prepare_condition_image(converted, 32, 32, crf=0), expected), mode
    assert prepare_condition_image(rgb, 32, 32, crf=0)[0, :, 0].mean(dim=(1, 2)).tolist() == [1.0, -1.0, -1.0]
    with pytest.raises(TypeError, match="channels last"):
        prepare_condition_image(np.zeros((3, 30, 40), np.uint8), 32, 32)
    with pytest.raises(ValueError, match="at least 2x2"):
        prepare_condition_image(np.zeros((1, 1, 3), np.uint8), 32, 32)


def test_prompt_embeds_with_a_text_negative_prompt(setup, tmp_path):
    from ltx2_diffusers.pipelines.pipeline_ltx2_audio_to_video import load_gemma
    from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3, tiny_gemma3_dims

    pipe = setup["pipe"]
    gemma = build_tiny_gemma3(tmp_path / "gemma", **tiny_gemma3_dims(pipe.connectors.config))
    pipe.text_encoder, pipe.tokenizer = load_gemma(gemma, torch.float32)
    try:
        kwargs = dict(
            prompt_contexts=None, negative_prompt_contexts=None, max_sequence_length=128, output_type="latent"
        )
        embeds, mask, _, _ = pipe.encode_prompt("a man sings", "blurry", max_sequence_length=128)
        by_text = call(pipe, setup["audio"], prompt="a man sings", negative_prompt="blurry", **kwargs).frames
        mixed = call(
            pipe, setup["audio"], prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt="blurry", **kwargs
        ).frames
        assert torch.equal(by_text, mixed)
    finally:
        pipe.text_encoder = pipe.tokenizer = None


def test_distilled_lora_from_a_hub_repo(setup, tmp_path, monkeypatch):
    """A converted repo on the Hub: `distilled_lora/` is fetched with hf_hub_download (here: a local stand-in)."""
    import huggingface_hub

    from ltx2_diffusers.convert import convert_checkpoint

    out = tmp_path / "converted"
    convert_checkpoint(
        setup["checkpoint"], out, spatial_upsampler_path=setup["upsampler"], distilled_lora=setup["lora"]
    )
    seen = {}

    def fake_download(repo_id, filename, subfolder=None, **kwargs):
        seen.update(repo_id=repo_id, filename=filename, subfolder=subfolder)
        return str(out / subfolder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    pipe = LTX2AudioToVideoPipeline.from_single_file(setup["checkpoint"], torch_dtype=torch.float32)
    pipe._load_distilled_lora_from("someone/ltx-2.3-diffusers", {})
    assert seen == {"repo_id": "someone/ltx-2.3-diffusers", "filename": "pytorch_lora_weights.safetensors",
                    "subfolder": "distilled_lora"}  # fmt: skip
    assert pipe.distilled_lora is not None


def test_positive_and_negative_texts_of_different_lengths(setup):
    """Contexts of different token counts run in separate forwards and give what one-pass-per-forward gives."""
    negative = tuple(c[:, :16] for c in contexts(1, "2.3"))
    batched = call(setup["pipe"], setup["audio"], negative_prompt_contexts=negative, output_type="latent").frames
    separate = call(
        setup["pipe"], setup["audio"], negative_prompt_contexts=negative, guidance_batch_size=1, output_type="latent"
    ).frames
    assert torch.equal(batched, separate)
