"""`pipe.enable_vae_tiling(...)` against A2VidPipelineTwoStage decoding with the same ltx-core `TilingConfig` (as its
CLI decodes, with `TilingConfig.default()`): same files, audio, contexts and seed -> same frames (fp32, CPU), for
LTX-2.3 and LTX-2 (timestep-conditioned decoder: one noise draw per tile, in ltx-core's order), several tiles in
space and time; the switches and garbage arguments of `enable_vae_tiling`."""

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import build_checkpoint, build_lora, build_upsampler
from ltx_core.components.guiders import MultiModalGuiderParams
from ltx_core.model.video_vae.tiling import SpatialTilingConfig, TemporalTilingConfig, TilingConfig
from prompt_contexts import contexts
from reference_pipeline import run_reference_a2vid
from test_pipeline_parity import LORA_STRENGTH, our_pipeline

from ltx2_diffusers import LTX2AudioToVideoPipeline, MultiModalGuidance
from ltx2_diffusers.models.video_vae_tiling import VideoTilingConfig, plan_tiles


TOL = 1e-5
SIZE = dict(height=128, width=192, num_frames=17, frame_rate=24.0, num_inference_steps=2)
SEED = 3
TILES = dict(tile_size_in_pixels=96, tile_overlap_in_pixels=32, tile_size_in_frames=16, tile_overlap_in_frames=8)


@pytest.fixture(scope="module", params=["2.3", "2.0"])
def files(request, tmp_path_factory):
    version = request.param
    root = tmp_path_factory.mktemp("tiled")
    checkpoint = build_checkpoint(root / f"ltx-{version}.safetensors", version, seed=5)
    rate = 16000
    t = np.arange(int(rate * 1.2)) / rate
    sf.write(root / "a.wav", np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 5 * t)], 1) * 0.4, rate)
    return dict(
        version=version,
        checkpoint=checkpoint,
        upsampler=build_upsampler(root / "upsampler.safetensors", seed=6),
        lora=build_lora(root / "lora.safetensors", checkpoint, seed=7, dtype=torch.float32),
        audio=root / "a.wav",
    )


def _reference(files, positive, negative, **kwargs):
    """A2VidPipelineTwoStage with the tests' guidance, decoding with `TILES` as ltx-core's `TilingConfig`."""
    return run_reference_a2vid(
        checkpoint=files["checkpoint"],
        upsampler=files["upsampler"],
        distilled_strength=LORA_STRENGTH,
        audio_path=files["audio"],
        positive=positive,
        negative=negative,
        seed=SEED,
        guider_params=MultiModalGuiderParams(
            cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[0]
        ),
        tiling_config=TilingConfig(SpatialTilingConfig(96, 32), TemporalTilingConfig(16, 8)),
        **SIZE,
        **kwargs,
    )


def test_tiled_pipeline_equals_reference_tiled(files):
    version = files["version"]
    positive, negative = contexts(0, version), contexts(1, version)
    guidance = MultiModalGuidance(stg_blocks=[0])
    reference, latent, *_ = _reference(files, positive, negative, distilled_lora=files["lora"])
    pipe = our_pipeline(files)
    pipe.enable_vae_tiling(**TILES)
    calls = []
    hook = pipe.vae.decoder.register_forward_hook(lambda module, args, output: calls.append(output.shape))

    def ours(**kwargs):
        return pipe(
            audio=files["audio"],
            prompt_contexts=positive,
            negative_prompt_contexts=negative,
            video_guidance=guidance,
            generator=torch.Generator().manual_seed(SEED),
            output_type="pt",
            **SIZE,
            **kwargs,
        ).frames.permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W) as the reference decoder

    try:
        frames = ours()
        exact = ours(reference_arithmetic=True)
    finally:
        hook.remove()
    plan = plan_tiles(tuple(latent.shape[2:]), VideoTilingConfig(**TILES))
    tiles = len(plan)
    assert len(calls) == 2 * tiles and min(len(plan.frames), len(plan.rows), len(plan.columns)) > 1
    assert frames.shape == reference.shape == (1, 3, 17, 128, 192)
    delta = (frames - reference).abs().max().item()
    print(f"tiled A2V {version}: {tiles} tiles; max|delta| = {delta:.3g} (default), reference_arithmetic bit-exact")
    assert delta <= TOL
    assert torch.equal(exact, reference)
    # the tiles did change the video: the same final latent decoded in one piece differs
    pipe.disable_vae_tiling()
    whole = pipe.decode(latent, torch.Generator().manual_seed(0), "pt").permute(0, 2, 1, 3, 4)
    assert (whole - reference).abs().max().item() > 1e-3


def test_tiled_bfloat16_reference_arithmetic_is_bit_exact(files, tmp_path):
    """In bf16 (the reference's precision, where its tiled decode sums in bf16) with a bf16 LoRA as released."""
    version = files["version"]
    lora = build_lora(tmp_path / "lora.safetensors", files["checkpoint"], seed=8)
    positive, negative = contexts(2, version), contexts(3, version)
    reference, *_ = _reference(files, positive, negative, distilled_lora=lora, dtype=torch.bfloat16)
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        files["checkpoint"],
        spatial_upsampler_path=files["upsampler"],
        distilled_lora=(lora, LORA_STRENGTH),
        torch_dtype=torch.bfloat16,
    )
    pipe.enable_vae_tiling(**TILES)
    frames = pipe(
        audio=files["audio"],
        prompt_contexts=tuple(c.to(torch.bfloat16) for c in positive),
        negative_prompt_contexts=tuple(c.to(torch.bfloat16) for c in negative),
        video_guidance=MultiModalGuidance(stg_blocks=[0]),
        generator=torch.Generator().manual_seed(SEED),
        output_type="pt",
        reference_arithmetic=True,
        **SIZE,
    ).frames.permute(0, 2, 1, 3, 4)
    assert torch.equal(frames.float(), reference.float())


def test_enable_vae_tiling_switches_and_refuses_garbage(files):
    pipe = our_pipeline(files)
    assert pipe.vae_tiling is None
    pipe.vae.enable_tiling()  # diffusers' own tiling is switched off: one tiling at a time
    pipe.enable_vae_tiling()
    assert pipe.vae_tiling == VideoTilingConfig() and not pipe.vae.use_tiling
    default = TilingConfig.default()
    assert (pipe.vae_tiling.tile_size_in_pixels, pipe.vae_tiling.tile_size_in_frames) == (
        default.spatial_config.tile_size_in_pixels,
        default.temporal_config.tile_size_in_frames,
    )
    pipe.enable_vae_tiling(tile_size_in_frames=None, tile_size_in_pixels=256)
    assert pipe.vae_tiling == VideoTilingConfig(tile_size_in_pixels=256, tile_size_in_frames=None)
    before = pipe.vae_tiling
    for kwargs, error, name in [
        (dict(tile_size_in_pixels=0), ValueError, "tile_size_in_pixels"),
        (dict(tile_overlap_in_pixels=512), ValueError, "tile_overlap_in_pixels"),
        (dict(tile_size_in_frames=12), ValueError, "tile_size_in_frames"),
        (dict(tile_overlap_in_frames=-8), ValueError, "tile_overlap_in_frames"),
        (dict(tile_size_in_pixels="512"), TypeError, "tile_size_in_pixels"),
        (dict(tile_sample_min_height=64), TypeError, "tile_sample_min_height"),
    ]:
        with pytest.raises(error, match=name):
            pipe.enable_vae_tiling(**kwargs)
        assert pipe.vae_tiling == before  # a refused call changes nothing
    pipe.disable_vae_tiling()
    assert pipe.vae_tiling is None and not pipe.vae.use_tiling


def test_cli_vae_tiling_flag_is_the_reference_cli_tiling(files):
    """`--vae-tiling` (a2vid and av) sets the tiling the reference CLI decodes with."""
    from types import SimpleNamespace

    from ltx2_diffusers.cli_running import prepare_pipeline

    pipe = our_pipeline(files)
    for flag in (False, True):
        args = SimpleNamespace(quantization=None, vae_tiling=flag, offload="none")
        prepare_pipeline(pipe, args, torch.device("cpu"))
        assert pipe.vae_tiling == (VideoTilingConfig() if flag else None)
