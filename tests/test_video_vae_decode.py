"""The channels-last decode (`ltx2_diffusers.models.video_vae_decode`) against `AutoencoderKLLTX2Video.decode` (and so
against ltx-core's decoder, which `tests/test_video_vae_single_file.py` ties it to).

1. Both released decoder layouts (LTX-2.3: plain upsamplers, no timestep conditioning, zero padding; LTX-2: residual
   upsamplers, timestep-conditioned, reflect padding), randomised latent shapes, timesteps and `causal`: fp32 within
   1e-5 of `vae.decode`, bf16 within bf16 rounding; the result is a contiguous NCDHW tensor like `vae.decode`'s.
   Then 64 random tiny decoder configurations (1-3 up blocks, upsampling factor 1 or 2 so that blocks open with a
   channel-changing resnet, spatial / temporal / spatio-temporal upsamplers with and without residual, 0-2 resnets
   per block, timestep conditioning, patch size 1 or 2, the four padding modes, causal or not, batch 1 or 2):
   equal to `vae.decode` within fp32 1e-5 wherever diffusers decodes them, and raising where it raises.
2. The weights, their memory format and the inputs are left as they were.
3. `channels_last_decode_supported` says no where the walk would not compute what `vae.decode` does: diffusers'
   slicing / tiling / framewise decoding on, offload hooks (accelerate's, diffusers' hook registry), a user's
   forward (pre-)hooks on any decoder module or global ones, a subclass or an instance-level `decode` / `forward`,
   mixed dtypes, autocast, training mode, autograd, noise-injecting resnets, a replaced module.
"""

import random

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video
from factories import build_checkpoint

from ltx2_diffusers.loaders.single_file_video_vae import load_video_vae_from_single_file
from ltx2_diffusers.models.video_vae_decode import channels_last_decode_supported, decode_channels_last


@pytest.fixture(scope="module", params=["2.3", "2"])
def vae(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"vae{request.param}")
    seed = 31 if request.param == "2.3" else 32
    path = build_checkpoint(
        folder / "vae.safetensors", request.param, seed=seed, components=("vae",), dtype=torch.float32
    )
    model = load_video_vae_from_single_file(path, torch_dtype=torch.float32).eval()
    with torch.no_grad():  # random non-trivial weights everywhere (scale-shift tables, biases, layer norms)
        g = torch.Generator().manual_seed(seed)
        for p in model.decoder.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _inputs(vae, rng: random.Random, dtype):
    frames, height, width = rng.choice([1, 2, 3]), rng.choice([2, 3]), rng.choice([2, 4])  # reflect pads need 2+
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    z = torch.randn(1, 128, frames, height, width, generator=g).to(dtype)
    temb = None
    if vae.config.timestep_conditioning:
        temb = torch.tensor([rng.uniform(0.0, 0.2)], dtype=dtype)
    return z, temb


@pytest.mark.parametrize("case", range(3))
def test_equals_vae_decode_fp32(vae, case):
    rng = random.Random(100 + case)
    z, temb = _inputs(vae, rng, torch.float32)
    causal = [None, True, False][case]
    with torch.no_grad():
        assert channels_last_decode_supported(vae)
        expected = vae.decode(z, temb=temb, causal=causal, return_dict=False)[0]
        got = decode_channels_last(vae, z, temb, causal=causal)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert got.is_contiguous()
    assert expected.abs().max() > 0.1  # a decode that says something
    assert (got - expected).abs().max().item() <= 1e-5


def test_equals_vae_decode_bf16(vae):
    model = AutoencoderKLLTX2Video.from_config(vae.config).eval()
    model.load_state_dict(vae.state_dict())
    model = model.to(torch.bfloat16)
    z, temb = _inputs(model, random.Random(7), torch.bfloat16)
    with torch.no_grad():
        expected = model.decode(z, temb=temb, return_dict=False)[0].float()
        got = decode_channels_last(model, z, temb).float()
    scale = expected.abs().max().item()
    # bf16 keeps 8 significant bits; a different reduction order moves a value by about one rounding step.
    assert (got - expected).abs().max().item() <= 2**-6 * max(scale, 1.0)
    assert (got - expected).abs().mean().item() <= 2**-9 * max(scale, 1.0)


def test_weights_untouched(vae):
    before = {k: (v.clone(), v.stride()) for k, v in vae.state_dict().items()}
    z, temb = _inputs(vae, random.Random(3), torch.float32)
    with torch.no_grad():
        decode_channels_last(vae, z, temb)
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k


def test_supported_says_no_where_the_walk_would_differ(vae):
    with torch.no_grad():
        assert channels_last_decode_supported(vae)
    assert not channels_last_decode_supported(vae)  # autograd on
    with torch.no_grad():
        for switch in ("use_slicing", "use_tiling", "use_framewise_decoding"):
            setattr(vae, switch, True)
            try:
                assert not channels_last_decode_supported(vae), switch
            finally:
                setattr(vae, switch, False)
        vae.train()
        try:
            assert not channels_last_decode_supported(vae)
        finally:
            vae.eval()
        resnet = vae.decoder.mid_block.resnets[0]
        resnet.per_channel_scale1 = torch.nn.Parameter(torch.zeros(1))
        try:
            assert not channels_last_decode_supported(vae)
        finally:
            resnet.per_channel_scale1 = None
        original = resnet.norm1
        resnet.norm1 = torch.nn.Identity()
        try:
            assert not channels_last_decode_supported(vae)
        finally:
            resnet.norm1 = original
        resnet._hf_hook = object()
        try:
            assert not channels_last_decode_supported(vae)
        finally:
            del resnet._hf_hook
        assert channels_last_decode_supported(vae)


# ------------------------------------------------------------------------------------------------ in the pipeline
@pytest.fixture(scope="module")
def pipe_setup(tmp_path_factory):
    from test_pipeline import setup as pipeline_setup

    return pipeline_setup.__wrapped__(tmp_path_factory)


def _spy(monkeypatch):
    from ltx2_diffusers.pipelines import ltx2_base

    calls = []

    def spy(vae, z, temb=None, causal=None):
        calls.append(tuple(z.shape))
        return decode_channels_last(vae, z, temb, causal)

    monkeypatch.setattr(ltx2_base, "decode_channels_last", spy)
    return calls


@pytest.mark.parametrize("tiled", [False, True])
def test_pipeline_decodes_channels_last_where_enabled(pipe_setup, monkeypatch, tiled):
    """On the devices of `CHANNELS_LAST_DECODE_DEVICES` (CUDA; here the CPU, set on the instance) the pipeline's
    decode (whole or tile by tile) goes through the channels-last walk and gives the plain decode's frames."""
    from test_pipeline import call

    pipe = pipe_setup["pipe"]
    if tiled:
        pipe.enable_vae_tiling(tile_size_in_pixels=64, tile_overlap_in_pixels=32)
    try:
        calls = _spy(monkeypatch)
        plain = call(pipe, pipe_setup["audio"], output_type="pt").frames
        assert calls == []  # the CPU is not in the class default
        pipe.CHANNELS_LAST_DECODE_DEVICES = ("cpu",)
        fast = call(pipe, pipe_setup["audio"], output_type="pt").frames
        assert len(calls) > 1 if tiled else len(calls) == 1
        assert (fast - plain).abs().max().item() <= 1e-5
        calls.clear()
        exact = call(pipe, pipe_setup["audio"], output_type="pt", reference_arithmetic=True).frames
        assert calls == []  # reference_arithmetic keeps diffusers' decode
        assert exact.shape == plain.shape
    finally:
        pipe.__dict__.pop("CHANNELS_LAST_DECODE_DEVICES", None)
        pipe.disable_vae_tiling()


def _random_config(rng: random.Random) -> dict:
    blocks = rng.choice([1, 2, 3])
    return dict(
        in_channels=3, out_channels=3, latent_channels=rng.choice([4, 8]), block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_block_out_channels=tuple(rng.choice([8, 16]) for _ in range(blocks)),
        decoder_layers_per_block=tuple(rng.choice([0, 1, 2]) for _ in range(blocks + 1)),
        decoder_spatio_temporal_scaling=tuple(rng.random() < 0.75 for _ in range(blocks)),
        decoder_inject_noise=False,
        upsample_type=tuple(rng.choice(["spatial", "temporal", "spatiotemporal"]) for _ in range(blocks)),
        upsample_residual=tuple(rng.random() < 0.5 for _ in range(blocks)),
        upsample_factor=tuple(rng.choice([1, 2]) for _ in range(blocks)),
        timestep_conditioning=rng.random() < 0.5, patch_size=rng.choice([1, 2]), patch_size_t=1,
        decoder_causal=rng.random() < 0.5,
        decoder_spatial_padding_mode=rng.choice(["zeros", "reflect", "replicate", "circular"]),
    )  # fmt: skip


def test_random_decoder_configurations():
    rng, decoded = random.Random(2026), 0
    for _ in range(64):
        config = _random_config(rng)
        try:
            vae = AutoencoderKLLTX2Video(**config).eval()
        except Exception:  # a layout diffusers cannot build
            continue
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        with torch.no_grad():
            for p in vae.decoder.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if vae.decoder.timestep_scale_multiplier is not None:
                vae.decoder.timestep_scale_multiplier.fill_(1000.0)
        batch = rng.choice([1, 2])
        shape = (batch, config["latent_channels"], rng.choice([1, 2, 3]), rng.choice([2, 3]), rng.choice([2, 3]))
        z = torch.randn(shape, generator=g)
        temb = torch.rand(batch, generator=g) * 0.2 if config["timestep_conditioning"] else None
        causal = rng.choice([None, True, False])
        with torch.no_grad():
            assert channels_last_decode_supported(vae), config
            try:
                expected = vae.decode(z, temb=temb, causal=causal, return_dict=False)[0]
            except Exception as error:  # diffusers cannot decode it (e.g. a conditioned channel-changing resnet)
                with pytest.raises(type(error)):
                    decode_channels_last(vae, z, temb, causal=causal)
                continue
            z_before = z.clone()
            got = decode_channels_last(vae, z, temb, causal=causal)
        assert torch.equal(z, z_before)
        assert got.shape == expected.shape and got.is_contiguous(), config
        assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item()), config
        decoded += 1
    assert decoded >= 20  # most random layouts are decodable: the comparison is not vacuous


def test_supported_refuses_hooks_subclasses_dtypes_and_autocast(vae):
    from diffusers.hooks import apply_layerwise_casting
    from torch.nn.modules.module import register_module_forward_hook

    def check(expected=False):
        with torch.no_grad():
            assert channels_last_decode_supported(vae) is expected

    for module in (vae.decoder, vae.decoder.norm_out, vae.decoder.up_blocks[0], vae.decoder.mid_block.resnets[0]):
        handle = module.register_forward_hook(lambda m, args, out: out * 2)
        check()
        handle.remove()
        handle = module.register_forward_pre_hook(lambda m, args: None)
        check()
        handle.remove()
    handle = register_module_forward_hook(lambda m, args, out: None)
    check()
    handle.remove()
    vae.decoder.conv_out.forward = vae.decoder.conv_out.forward  # an instance-level forward
    check()
    del vae.decoder.conv_out.forward
    vae.decode = vae.decode
    check()
    del vae.decode
    check(True)

    class Clamped(type(vae)):
        pass

    sub = Clamped.from_config(vae.config).eval()
    sub.load_state_dict(vae.state_dict())
    with torch.no_grad():
        assert not channels_last_decode_supported(sub)
    mixed = AutoencoderKLLTX2Video.from_config(vae.config).eval()
    mixed.load_state_dict(vae.state_dict())
    mixed.decoder.conv_out.to(torch.float64)
    with torch.no_grad():
        assert not channels_last_decode_supported(mixed)
    apply_layerwise_casting(mixed, storage_dtype=torch.float32, compute_dtype=torch.float32)
    with torch.no_grad():
        assert not channels_last_decode_supported(mixed)  # diffusers' hook registry
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check()
    check(True)
