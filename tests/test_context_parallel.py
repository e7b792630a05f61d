"""Context parallelism of LTX2AudioVideoTransformer on CPU: 2 gloo processes against one process.

The ranks are forked (not spawned) so they inherit the imported modules, the tiny model and the inputs: the
module stays fast on a loaded machine. Each rank writes its outputs to a file; the comparison runs here.
"""

from __future__ import annotations

import datetime
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from factories import build_checkpoint

from ltx2_diffusers import LTX2AudioVideoTransformer, LTX2Perturbation


WORLD_SIZE = 2
TIMEOUT_S = 120
FRAMES, HEIGHT, WIDTH, AUDIO_FRAMES, TEXT = 2, 2, 3, 5, 7  # 12 video tokens (even), 5 audio tokens (odd)
VERSIONS = ("2.0", "2.3")


def _inputs(model, batch, seed, explicit_coords=False, **extra):
    from ltx2_diffusers.models.rope import audio_coords, video_coords

    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    tokens = FRAMES * HEIGHT * WIDTH
    text_dim = cfg.caption_channels if cfg.use_prompt_embeddings else None
    sigma = torch.rand(batch, generator=g) * 1000
    kwargs = dict(
        hidden_states=torch.randn(batch, tokens, cfg.in_channels, generator=g),
        audio_hidden_states=torch.randn(batch, AUDIO_FRAMES, cfg.audio_in_channels, generator=g),
        encoder_hidden_states=torch.randn(batch, TEXT, text_dim or cfg.cross_attention_dim, generator=g),
        audio_encoder_hidden_states=torch.randn(batch, TEXT, text_dim or cfg.audio_cross_attention_dim, generator=g),
        encoder_attention_mask=(torch.arange(TEXT) < TEXT - 2).expand(batch, TEXT).long(),
        timestep=sigma,
        audio_timestep=sigma.flip(0),
        sigma=sigma,
        audio_sigma=sigma.flip(0),
        use_cross_timestep=True,
        return_dict=False,
    )
    if explicit_coords:
        kwargs.update(
            video_coords=video_coords(batch, FRAMES, HEIGHT, WIDTH, fps=24.0, dtype=torch.float32),
            audio_coords=audio_coords(batch, AUDIO_FRAMES),
        )
    else:
        kwargs.update(num_frames=FRAMES, height=HEIGHT, width=WIDTH, audio_num_frames=AUDIO_FRAMES, fps=24.0)
    kwargs.update(extra)
    return kwargs


def _passes(model):
    """Every kind of guidance pass the pipelines run, as forward kwargs."""
    frame_tokens = HEIGHT * WIDTH
    sigma = torch.tensor([600.0, 300.0])
    video_t = sigma[:, None].repeat(1, FRAMES * frame_tokens)
    video_t[:, :frame_tokens] = 0.0  # first frame conditioned (per-token video timesteps)
    mask = torch.rand(2, FRAMES * frame_tokens, FRAMES * frame_tokens, generator=torch.Generator().manual_seed(5))
    mask[:, :, :frame_tokens] *= (mask[:, :, :frame_tokens] > 0.3).float()  # some exact zeros
    skip_self = (LTX2Perturbation("skip_video_self_attn", (1,)), LTX2Perturbation("skip_audio_self_attn", (1,)))
    isolate = (LTX2Perturbation("skip_a2v_cross_attn"), LTX2Perturbation("skip_v2a_cross_attn"))
    return {
        "plain": _inputs(model, 2, 1),
        "frozen_audio": _inputs(
            model,
            2,
            2,
            explicit_coords=True,
            timestep=video_t,
            audio_timestep=torch.zeros(2, AUDIO_FRAMES),
            sigma=sigma,
            audio_sigma=torch.zeros(2),
        ),
        "stg": _inputs(model, 2, 3, spatio_temporal_guidance_blocks=[1]),
        "stg_per_item": _inputs(
            model, 2, 3, spatio_temporal_guidance_blocks=[0], perturbation_mask=torch.tensor([0.0, 1.0])
        ),
        "isolated": _inputs(model, 2, 4, isolate_modalities=True),
        "batched_passes": _inputs(model, 4, 6, perturbations=[(), (), skip_self, isolate]),
        "self_attention_mask": _inputs(model, 2, 7, video_self_attention_mask=mask),
    }


def _record_block_tokens(model) -> list[tuple[int, int]]:
    """(video, audio) token counts each call of the first block sees."""
    seen = []
    model.transformer_blocks[0].register_forward_pre_hook(
        lambda m, args: seen.append((args[0].shape[1], args[1].shape[1]))
    )
    return seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: gloo's loopback TCP connections are occasionally reset on a loaded machine ("Connection reset by peer" while a
#: rank builds a process group); such a run is repeated on a fresh port, at most this many times in all.
NETWORK_ATTEMPTS = 3


def _run_ranks(fn, port, *args):
    """Fork `WORLD_SIZE` processes running `fn(rank, port, *args)`; fail (and kill them) after `TIMEOUT_S`. A run
    that fails only on a gloo network reset is repeated on a fresh port (`NETWORK_ATTEMPTS`); any other failure
    fails at once."""
    for attempt in range(NETWORK_ATTEMPTS):
        context = mp.start_processes(fn, args=(port, *args), nprocs=WORLD_SIZE, join=False, start_method="fork")
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    pytest.fail(f"context-parallel ranks did not finish within {TIMEOUT_S} s")
            return
        except mp.ProcessRaisedException as error:
            network = "DistNetworkError" in str(error) or "Connection reset by peer" in str(error)
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            if not network or attempt == NETWORK_ATTEMPTS - 1:
                raise
            port = _free_port()


def _rank_main(rank, port, models, passes, out_dir):
    from diffusers import ContextParallelConfig
    from diffusers.models.modeling_utils import ModelMixin

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        results = {}
        for version, model in models.items():
            if torch.accelerator.device_count() == 0:  # the reason for our override
                try:
                    ModelMixin._resolve_parallel_config(model, ContextParallelConfig(ulysses_degree=WORLD_SIZE))
                    results[(version, "diffusers_cpu_resolve")] = "ok"
                except ZeroDivisionError:
                    results[(version, "diffusers_cpu_resolve")] = "ZeroDivisionError"
                model._parallel_config = None
            try:
                LTX2AudioVideoTransformer.from_config(model.config).enable_parallelism(
                    config=ContextParallelConfig(ring_degree=WORLD_SIZE)
                )
            except ValueError as error:
                results[(version, "ring")] = str(error)
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD_SIZE))
            seen = _record_block_tokens(model)
            with torch.no_grad():
                for name, kwargs in passes[version].items():
                    results[(version, name)] = model(**kwargs)
                try:
                    tokens = torch.randn(1, 3, model.config.in_channels)
                    model(**_inputs(model, 1, 0, hidden_states=tokens, num_frames=1, height=1, width=3))
                except ValueError as error:
                    results[(version, "odd_tokens")] = str(error)
            results[(version, "block_tokens")] = set(seen)
            uneven = LTX2AudioVideoTransformer.from_config(model.config)
            uneven.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD_SIZE, ulysses_anything=True))
            try:
                uneven(**_inputs(uneven, 1, 0, hidden_states=tokens, num_frames=1, height=1, width=3))
            except ValueError as error:
                results[(version, "uneven_gloo")] = str(error)
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from peft import LoraConfig

    folder = tmp_path_factory.mktemp("cp")
    result = {
        v: LTX2AudioVideoTransformer.from_single_file(
            build_checkpoint(folder / f"{v}.safetensors", v, dtype=torch.float32, components=("transformer",))
        ).eval()
        for v in VERSIONS
    }
    # An adapter on proj_out and the attentions (2.0 model): it must stay outside the output gather.
    result["2.0"].add_adapter(
        LoraConfig(r=2, target_modules=["proj_out", "to_q", "to_v", "to_out.0"], init_lora_weights=False)
    )
    return result


@pytest.fixture(scope="module")
def ranks(models, tmp_path_factory):
    """(single-process outputs, per-rank results) for every version and pass."""
    passes = {v: _passes(model) for v, model in models.items()}
    with torch.no_grad():
        expected = {(v, name): models[v](**kw) for v in VERSIONS for name, kw in passes[v].items()}
    out_dir = tmp_path_factory.mktemp("cp_out")
    _run_ranks(_rank_main, _free_port(), models, passes, out_dir)
    results = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    return expected, results


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "name", ["plain", "frozen_audio", "stg", "stg_per_item", "isolated", "batched_passes", "self_attention_mask"]
)
def test_ulysses_forward_equals_single_process(ranks, version, name):
    expected, results = ranks
    video, audio = expected[(version, name)]
    for rank, result in enumerate(results):
        par_video, par_audio = result[(version, name)]
        assert par_video.shape == video.shape and par_audio.shape == audio.shape
        print(
            f"{version} {name} rank {rank}: max|d| video {(par_video - video).abs().max().item():.3g} "
            f"audio {(par_audio - audio).abs().max().item():.3g}"
        )
        assert (par_video - video).abs().max().item() <= 1e-5, (rank, "video")
        assert (par_audio - audio).abs().max().item() <= 1e-5, (rank, "audio")
        assert video.abs().max().item() > 1e-2  # not a trivial output


@pytest.mark.parametrize("version", VERSIONS)
def test_cpu_route_and_refusals(ranks, version):
    _, results = ranks
    for result in results:
        if (version, "diffusers_cpu_resolve") in result:  # no accelerator here
            assert result[(version, "diffusers_cpu_resolve")] == "ZeroDivisionError"
        assert "ring attention needs an attention backend" in result[(version, "ring")]
        assert "3 video tokens cannot be split evenly over 2" in result[(version, "odd_tokens")]
        assert "gloo backend cannot all-gather unequal shards" in result[(version, "uneven_gloo")]
        video_tokens = FRAMES * HEIGHT * WIDTH
        assert result[(version, "block_tokens")] == {(video_tokens // WORLD_SIZE, AUDIO_FRAMES)}  # video sharded


def test_refuses_tensor_parallel_and_indivisible_heads():
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import TensorParallelConfig

    model = LTX2AudioVideoTransformer(
        num_attention_heads=3, attention_head_dim=8, cross_attention_dim=24, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=1, caption_channels=16,
    )  # fmt: skip
    with pytest.raises(ValueError, match="ulysses_degree=2 must divide the 3 video attention heads"):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    with pytest.raises(ValueError, match="tensor parallelism is not supported"):
        model.enable_parallelism(config=TensorParallelConfig(tp_degree=2))
    assert model._parallel_config is None


# ---------------------------------------------------------------------------------------------------------
# A tiny two-stage audio-to-video run: every rank runs the whole pipeline (text, VAEs replicated), the
# transformer is context-parallel; the frames must be those of one process.
# ---------------------------------------------------------------------------------------------------------


def _pipeline_call(pipe, audio):
    from factories import checkpoint_config

    from ltx2_diffusers import MultiModalGuidance

    section = checkpoint_config("2.3")["transformer"]
    dims = (
        section["num_attention_heads"] * section["attention_head_dim"],
        section["audio_num_attention_heads"] * section["audio_attention_head_dim"],
    )
    g = torch.Generator().manual_seed(0)
    positive, negative = ([torch.randn(1, 32, d, generator=g) for d in dims] for _ in range(2))
    return pipe(
        audio=audio,
        prompt_contexts=tuple(positive),
        negative_prompt_contexts=tuple(negative),
        height=128,  # stage 1: 2 x 2 x 2 = 8 video tokens, stage 2: 2 x 4 x 4 = 32
        width=128,
        num_frames=9,
        num_inference_steps=2,
        video_guidance=MultiModalGuidance(stg_blocks=[1]),  # CFG, STG and modality isolation passes
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).frames


def _pipeline_rank_main(rank, port, pipe, audio, out_dir):
    """One process of `torchrun --nproc-per-node 2` (its environment), set up by `enable_context_parallel`."""
    import os

    from ltx2_diffusers.parallel import enable_context_parallel, is_main_process

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    try:
        with pytest.raises(ValueError, match="degree 3 must equal the number of launched processes"):
            enable_context_parallel(pipe.transformer, 3)  # initialises the group, then refuses
        device = enable_context_parallel(pipe.transformer, WORLD_SIZE)
        seen = _record_block_tokens(pipe.transformer)
        frames = _pipeline_call(pipe.to(device), audio)
        torch.save((frames, sorted(set(seen)), is_main_process()), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_resolve_parallel_config_defers_to_diffusers_with_an_accelerator(monkeypatch):
    from diffusers.models.modeling_utils import ModelMixin

    model = LTX2AudioVideoTransformer(
        num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=1, caption_channels=16,
    )  # fmt: skip
    monkeypatch.setattr(ModelMixin, "_resolve_parallel_config", lambda self, config: ("diffusers", config))
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 1)
    assert model._resolve_parallel_config("cfg") == ("diffusers", "cfg")


def test_enable_context_parallel_refuses_before_any_setup():
    from ltx2_diffusers.parallel import enable_context_parallel, is_main_process

    model = torch.nn.Module()
    for degree in (1, 2.0, True):
        with pytest.raises(ValueError, match="degree must be an integer >= 2"):
            enable_context_parallel(model, degree)
    if not dist.is_initialized() and "RANK" not in __import__("os").environ:
        with pytest.raises(ValueError, match="launch under torchrun"):
            enable_context_parallel(model, 2)
    assert is_main_process()


def test_two_stage_pipeline_frames_equal_single_process(tmp_path):
    import numpy as np
    import soundfile as sf
    from factories import build_lora, build_upsampler

    from ltx2_diffusers import LTX2AudioToVideoPipeline

    checkpoint = build_checkpoint(tmp_path / "ltx-2.3-tiny.safetensors", "2.3", seed=4)
    upsampler = build_upsampler(tmp_path / "upsampler.safetensors", seed=5)
    lora = build_lora(tmp_path / "lora.safetensors", checkpoint, seed=6, dtype=torch.float32)
    rate = 16000
    t = np.arange(int(rate * 0.5)) / rate
    audio = tmp_path / "tone.wav"
    sf.write(audio, (0.5 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, 0.6), torch_dtype=torch.float32
    )
    seen = _record_block_tokens(pipe.transformer)
    expected = _pipeline_call(pipe, audio)
    single_tokens = sorted(set(seen))
    assert [v for v, _ in single_tokens] == [8, 32]  # stage 1, stage 2
    _run_ranks(_pipeline_rank_main, _free_port(), pipe, audio, tmp_path)
    for rank in range(WORLD_SIZE):
        frames, tokens, main = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert main == (rank == 0)
        assert tokens == [(v // WORLD_SIZE, a) for v, a in single_tokens]  # video sharded, audio whole
        print(f"pipeline rank {rank}: max|d| frames {(frames - expected).abs().max().item():.3g}")
        assert frames.shape == expected.shape
        assert (frames - expected).abs().max().item() <= 1e-4, rank
    assert expected.std().item() > 1e-3  # not a blank clip
