"""One guided denoising step of the LTX-2.3 transformer: ours vs ltx-core vs diffusers, same random weights.

A stage-1 audio-to-video step needs four passes (cond, negative, STG, modality-isolated). ltx-core runs them as
four batch-1 forwards; diffusers' LTX2Pipeline batches cond+negative and runs STG and isolation separately; ours
runs all four as ONE batched forward (per-item perturbations). Prints a table and one JSON line.

    python benchmarks/transformer_step.py --layers 8 --video-tokens 6144   # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def build_models(layers: int, device: torch.device, dtype: torch.dtype, seed: int):
    from diffusers import LTX2VideoTransformer3DModel
    from ltx_core.model.transformer.model_configurator import LTXModelConfigurator

    from ltx2_diffusers import LTX2AudioVideoTransformer
    from ltx2_diffusers.loaders.single_file_transformer import TRANSFORMER_KEY_TABLE, transformer_config_from_original

    section = dict(
        num_layers=layers,
        caption_proj_before_connector=True,
        apply_gated_attention=True,
        cross_attention_adaln=True,
        rope_type="split",
        frequencies_precision="float64",
        av_ca_timestep_scale_multiplier=1000.0,
        caption_channels=3840,
    )
    fixed = dict(
        dropout=0.0, attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        use_linear_projection=False, only_cross_attention=False, cross_attention_norm=True,
        double_self_attention=False, upcast_attention=False, standardization_norm="rms_norm",
        norm_elementwise_affine=False, qk_norm="rms_norm", positional_embedding_type="rope",
        use_audio_video_cross_attention=True, share_ff=False, av_cross_ada_norm=True, use_middle_indices_grid=True,
    )  # fmt: skip
    with torch.device("meta"):
        reference = LTXModelConfigurator.from_config({"transformer": {**fixed, **section}})
    reference = reference.to_empty(device=device).to(dtype)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 1.0 / max(p.shape[-1], 1) ** 0.5, generator=generator)
    state = {
        TRANSFORMER_KEY_TABLE.map_key("model.diffusion_model." + k): v
        for k, v in reference.state_dict().items()
        if TRANSFORMER_KEY_TABLE.owns("model.diffusion_model." + k)
    }
    config = transformer_config_from_original(section)
    with torch.device("meta"):
        ours = LTX2AudioVideoTransformer.from_config(config)
        theirs = LTX2VideoTransformer3DModel(**{k: v for k, v in config.items()})
    ours.load_state_dict(state, assign=True)
    theirs.load_state_dict(state, assign=True)
    return reference.eval(), ours.eval(), theirs.eval()


def make_inputs(video_tokens: int, audio_tokens: int, text_tokens: int, device, dtype, seed: int):
    from ltx2_diffusers.models.rope import audio_coords, video_coords

    g = torch.Generator(device).manual_seed(seed)
    width = 24
    height = max(1, video_tokens // (16 * width))
    frames = max(1, video_tokens // (height * width))
    n = frames * height * width

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    return dict(
        video=randn(1, n, 128),
        audio=randn(1, audio_tokens, 128),
        video_context=randn(1, text_tokens, 4096),
        negative_context=randn(1, text_tokens, 4096),
        audio_context=randn(1, text_tokens, 2048),
        sigma=torch.tensor([0.7], device=device),
        video_coords=video_coords(1, frames, height, width, device=device, dtype=dtype),
        audio_coords=audio_coords(1, audio_tokens, device=device),
    )


PASSES = ("cond", "negative", "stg", "isolated")


def run_reference(model, x, stg_block):
    from ltx_core.guidance.perturbations import (
        BatchedPerturbationConfig,
        Perturbation,
        PerturbationConfig,
        PerturbationType,
    )
    from ltx_core.model.transformer.modality import Modality

    perturbations = {
        "cond": [],
        "negative": [],
        "stg": [Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, [stg_block])],
        "isolated": [
            Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
            Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None),
        ],
    }
    outputs = []
    for name in PASSES:
        context = x["negative_context"] if name == "negative" else x["video_context"]
        video = Modality(x["video"], x["sigma"], x["sigma"][:, None].expand(1, x["video"].shape[1]),
                         x["video_coords"], context)  # fmt: skip
        audio = Modality(x["audio"], x["sigma"], torch.zeros(1, x["audio"].shape[1], device=x["audio"].device),
                         x["audio_coords"], x["audio_context"])  # fmt: skip
        config = BatchedPerturbationConfig([PerturbationConfig(perturbations[name])])
        outputs.append(model(video, audio, config)[0])
    return torch.cat(outputs)


def _ours_kwargs(x, n, contexts, per_item: bool = False):
    """Our transformer's arguments for `n` passes; `per_item`: one timestep per item (the pipeline's default for
    a uniform mask) instead of one per token (the reference's, and `reference_arithmetic`'s)."""
    sigma = x["sigma"] * 1000
    if per_item:
        timesteps = dict(timestep=sigma.expand(n), audio_timestep=torch.zeros(n, device=sigma.device))
    else:
        timesteps = dict(
            timestep=sigma[:, None].expand(n, x["video"].shape[1]),
            audio_timestep=torch.zeros(n, x["audio"].shape[1], device=sigma.device),
        )
    return dict(
        hidden_states=x["video"].expand(n, -1, -1),
        audio_hidden_states=x["audio"].expand(n, -1, -1),
        encoder_hidden_states=contexts,
        audio_encoder_hidden_states=x["audio_context"].expand(n, -1, -1),
        **timesteps,
        sigma=sigma.expand(n),
        audio_sigma=sigma.expand(n),
        video_coords=x["video_coords"].expand(n, -1, -1, -1),
        audio_coords=x["audio_coords"].expand(n, -1, -1, -1),
        use_cross_timestep=True,
        return_dict=False,
    )


def run_ours_batched(model, x, stg_block):
    from ltx2_diffusers import LTX2Perturbation

    contexts = torch.cat([x["video_context"], x["negative_context"], x["video_context"], x["video_context"]])
    perturbations = [
        [],
        [],
        [LTX2Perturbation("skip_video_self_attn", (stg_block,))],
        [LTX2Perturbation("skip_a2v_cross_attn"), LTX2Perturbation("skip_v2a_cross_attn")],
    ]
    return model(**_ours_kwargs(x, 4, contexts), perturbations=perturbations)[0]


def run_ours_separate(model, x, stg_block):
    """Ours, four batch-1 forwards like ltx-core (isolates implementation differences from batching)."""
    from ltx2_diffusers import LTX2Perturbation

    perturbations = {
        "cond": [],
        "negative": [],
        "stg": [LTX2Perturbation("skip_video_self_attn", (stg_block,))],
        "isolated": [LTX2Perturbation("skip_a2v_cross_attn"), LTX2Perturbation("skip_v2a_cross_attn")],
    }
    outputs = []
    for name in PASSES:
        context = x["negative_context"] if name == "negative" else x["video_context"]
        outputs.append(model(**_ours_kwargs(x, 1, context), perturbations=[perturbations[name]])[0])
    return torch.cat(outputs)


def run_diffusers_style(model, x, stg_block):
    """diffusers' LTX2Pipeline: [negative, cond] in one batch, then the STG pass, then the isolated pass."""
    cfg = model(**_ours_kwargs(x, 2, torch.cat([x["negative_context"], x["video_context"]])))[0]
    stg = model(**_ours_kwargs(x, 1, x["video_context"]), spatio_temporal_guidance_blocks=[stg_block])[0]
    iso = model(**_ours_kwargs(x, 1, x["video_context"]), isolate_modalities=True)[0]
    return torch.cat([cfg[1:], cfg[:1], stg, iso])


def timed(fn, repeats: int, device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--video-tokens", type=int, default=6144)
    parser.add_argument("--audio-tokens", type=int, default=126)
    parser.add_argument("--text-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--stg-block", type=int, default=None)
    parser.add_argument("--attention-backend", default=None, help="diffusers backend for ours, e.g. _native_cudnn")
    parser.add_argument("--compile", action="store_true", help="also time ours with compile_repeated_blocks")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    stg_block = args.layers // 2 if args.stg_block is None else args.stg_block

    reference, ours, theirs = build_models(args.layers, device, dtype, seed=0)
    if args.attention_backend:
        ours.set_attention_backend(args.attention_backend)
    x = make_inputs(args.video_tokens, args.audio_tokens, args.text_tokens, device, dtype, seed=1)
    rows = []
    with torch.no_grad():
        expected = run_reference(reference, x, stg_block)
        candidates = {
            "ltx-core (4 x batch-1)": lambda: run_reference(reference, x, stg_block),
            "ltx2-diffusers (4 x batch-1)": lambda: run_ours_separate(ours, x, stg_block),
            "ltx2-diffusers (1 x batch-4)": lambda: run_ours_batched(ours, x, stg_block),
            "diffusers LTX2 (batch-2 + 2 x batch-1)": lambda: run_diffusers_style(theirs, x, stg_block),
        }
        if args.compile:
            import copy

            compiled = copy.deepcopy(ours)  # compile_repeated_blocks compiles in place: keep `ours` eager
            compiled.compile_repeated_blocks(fullgraph=True)
            candidates["ltx2-diffusers compiled (4 x batch-1)"] = lambda: run_ours_separate(compiled, x, stg_block)
            candidates["ltx2-diffusers compiled (1 x batch-4)"] = lambda: run_ours_batched(compiled, x, stg_block)
        for name, fn in candidates.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = timed(fn, args.repeats, device)
            out = fn()
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            diff = (out.float() - expected.float()).abs().max().item()
            rows.append({"impl": name, "step_s": seconds, "peak_gib": peak, "max_abs_diff_vs_ltx_core": diff})
    base = rows[0]["step_s"]
    print(f"{'implementation':40s} {'s/step':>9s} {'speed-up':>9s} {'peak GiB':>9s} {'max|d| vs ref':>14s}")
    for row in rows:
        row["speedup_vs_ltx_core"] = base / row["step_s"]
        print(
            f"{row['impl']:40s} {row['step_s']:9.4f} {row['speedup_vs_ltx_core']:9.2f} "
            f"{row['peak_gib']:9.2f} {row['max_abs_diff_vs_ltx_core']:14.3e}"
        )
    result = {
        "benchmark": "transformer_step",
        "layers": args.layers,
        "video_tokens": int(x["video"].shape[1]),
        "audio_tokens": args.audio_tokens,
        "text_tokens": args.text_tokens,
        "dtype": args.dtype,
        "attention_backend": args.attention_backend or "native",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "rows": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
