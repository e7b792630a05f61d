"""LTX2AudioVideoTransformer vs ltx-core's LTXModel on tiny random original-format checkpoints (fp32, CPU)."""

import pytest
import torch
from factories import build_checkpoint, load_reference
from ltx_core.guidance.perturbations import (
    BatchedPerturbationConfig,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)
from ltx_core.model.transformer.modality import Modality

from ltx2_diffusers import LTX2AudioVideoTransformer, LTX2Perturbation
from ltx2_diffusers.models.rope import audio_coords, video_coords


TOL = 1e-5
FRAMES, HEIGHT, WIDTH, AUDIO_FRAMES, TEXT = 3, 2, 3, 7, 9
CONFIGS = [
    ("2.0", "interleaved", False),
    ("2.0", "split", True),
    ("2.3", "split", True),
    ("2.3", "interleaved", True),
]

_REF_KIND = {
    "skip_video_self_attn": PerturbationType.SKIP_VIDEO_SELF_ATTN,
    "skip_audio_self_attn": PerturbationType.SKIP_AUDIO_SELF_ATTN,
    "skip_a2v_cross_attn": PerturbationType.SKIP_A2V_CROSS_ATTN,
    "skip_v2a_cross_attn": PerturbationType.SKIP_V2A_CROSS_ATTN,
}


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}-f64{c[2]}")
def models(request, tmp_path_factory):
    version, rope_type, double = request.param
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    build_checkpoint(
        path,
        version,
        seed=3,
        components=("transformer",),
        rope_type=rope_type,
        double_precision=double,
        num_layers=3,
        av_ca_timestep_scale_multiplier=1000.0 if version == "2.3" else 1.0,
    )
    ours = LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32)
    reference = load_reference(path, "transformer", dtype=torch.float32)
    return ours, reference


def make_inputs(model, batch=1, seed=0, coords_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    text_dim = c.caption_channels if c.use_prompt_embeddings else None
    tokens = FRAMES * HEIGHT * WIDTH
    return dict(
        video=torch.randn(batch, tokens, c.in_channels, generator=g),
        audio=torch.randn(batch, AUDIO_FRAMES, c.audio_in_channels, generator=g),
        context=torch.randn(batch, TEXT, text_dim or c.cross_attention_dim, generator=g),
        audio_context=torch.randn(batch, TEXT, text_dim or c.audio_cross_attention_dim, generator=g),
        sigma=torch.rand(batch, generator=g) * 0.9 + 0.05,
        video_coords=video_coords(batch, FRAMES, HEIGHT, WIDTH, fps=24.0, dtype=coords_dtype),
        audio_coords=audio_coords(batch, AUDIO_FRAMES),
    )


def run_reference(reference, inputs, video_t, audio_t, audio_sigma, perturbations=None, **modality_kwargs):
    batch = inputs["video"].shape[0]
    video = Modality(
        latent=inputs["video"],
        sigma=inputs["sigma"],
        timesteps=video_t,
        positions=inputs["video_coords"],
        context=inputs["context"],
        context_mask=modality_kwargs.get("context_mask"),
        attention_mask=modality_kwargs.get("self_mask"),
    )
    audio = Modality(
        latent=inputs["audio"],
        sigma=audio_sigma,
        timesteps=audio_t,
        positions=inputs["audio_coords"],
        context=inputs["audio_context"],
        context_mask=modality_kwargs.get("audio_context_mask"),
    )
    config = BatchedPerturbationConfig(
        [
            PerturbationConfig([Perturbation(_REF_KIND[p.kind], p.blocks and list(p.blocks)) for p in item])
            for item in (perturbations or [()] * batch)
        ]
    )
    with torch.no_grad():
        return reference(video, audio, config)


def run_ours(model, inputs, video_t, audio_t, audio_sigma, perturbations=None, **kwargs):
    with torch.no_grad():
        return model(
            hidden_states=inputs["video"],
            audio_hidden_states=inputs["audio"],
            encoder_hidden_states=inputs["context"],
            audio_encoder_hidden_states=inputs["audio_context"],
            timestep=video_t * 1000,
            audio_timestep=audio_t * 1000,
            sigma=inputs["sigma"] * 1000,
            audio_sigma=audio_sigma * 1000,
            video_coords=inputs["video_coords"],
            audio_coords=inputs["audio_coords"],
            use_cross_timestep=True,
            perturbations=perturbations,
            return_dict=False,
            **kwargs,
        )


def assert_close(ours, reference):
    for a, b in zip(ours, reference):
        diff = (a - b).abs().max().item()
        assert diff <= TOL, f"max |diff| {diff}"


def per_token(inputs, batch, video_frozen=0, audio_frozen=False):
    sigma = inputs["sigma"]
    video_t = sigma[:, None].expand(batch, FRAMES * HEIGHT * WIDTH).clone()
    video_t[:, : video_frozen * HEIGHT * WIDTH] = 0.0  # image-conditioned first latent frame
    audio_t = torch.zeros(batch, AUDIO_FRAMES) if audio_frozen else sigma[:, None].expand(batch, AUDIO_FRAMES)
    return video_t, audio_t


@pytest.mark.parametrize(
    "case",
    ["plain", "per_token", "frozen_audio", "bf16_positions"],
)
def test_forward_matches_reference(models, case):
    ours, reference = models
    batch = 2
    inputs = make_inputs(ours, batch, coords_dtype=torch.bfloat16 if case == "bf16_positions" else torch.float32)
    video_t, audio_t = per_token(
        inputs,
        batch,
        video_frozen=1 if case in ("per_token", "frozen_audio") else 0,
        audio_frozen=case == "frozen_audio",
    )
    audio_sigma = inputs["sigma"]
    assert_close(
        run_ours(ours, inputs, video_t, audio_t, audio_sigma),
        run_reference(reference, inputs, video_t, audio_t, audio_sigma),
    )


PERTURBATION_CASES = {
    "stg_video": [[LTX2Perturbation("skip_video_self_attn", (1,))]],
    "stg_audio": [[LTX2Perturbation("skip_audio_self_attn", (0, 2))]],
    "stg_both": [[LTX2Perturbation("skip_video_self_attn", (2,)), LTX2Perturbation("skip_audio_self_attn", (2,))]],
    "isolation": [[LTX2Perturbation("skip_a2v_cross_attn"), LTX2Perturbation("skip_v2a_cross_attn")]],
    "a2v_only_block0": [[LTX2Perturbation("skip_a2v_cross_attn", (0,))]],
}


@pytest.mark.parametrize("case", sorted(PERTURBATION_CASES))
def test_perturbations_match_reference(models, case):
    ours, reference = models
    inputs = make_inputs(ours, 1, seed=5)
    video_t, audio_t = per_token(inputs, 1, audio_frozen=True)
    perturbations = PERTURBATION_CASES[case]
    assert_close(
        run_ours(ours, inputs, video_t, audio_t, inputs["sigma"], perturbations),
        run_reference(reference, inputs, video_t, audio_t, inputs["sigma"], perturbations),
    )


def test_masks_match_reference(models):
    ours, reference = models
    batch = 2
    inputs = make_inputs(ours, batch, seed=7)
    video_t, audio_t = per_token(inputs, batch)
    context_mask = torch.ones(batch, TEXT, dtype=torch.int64)
    context_mask[0, 6:] = 0
    tokens = FRAMES * HEIGHT * WIDTH
    g = torch.Generator().manual_seed(1)
    self_mask = torch.rand(batch, tokens, tokens, generator=g)
    self_mask[self_mask < 0.2] = 0.0
    ours_out = run_ours(
        ours,
        inputs,
        video_t,
        audio_t,
        inputs["sigma"],
        encoder_attention_mask=context_mask,
        audio_encoder_attention_mask=context_mask,
        video_self_attention_mask=self_mask,
    )
    reference_out = run_reference(
        reference,
        inputs,
        video_t,
        audio_t,
        inputs["sigma"],
        context_mask=context_mask,
        audio_context_mask=context_mask,
        self_mask=self_mask,
    )
    assert_close(ours_out, reference_out)
    # The mask matters: without it the output differs.
    unmasked = run_ours(ours, inputs, video_t, audio_t, inputs["sigma"])
    assert (unmasked[0] - ours_out[0]).abs().max() > 1e-3


def test_one_batched_forward_equals_four_reference_passes(models):
    """cond / negative / STG / isolated items of one guidance step in ONE forward."""
    ours, reference = models
    inputs = make_inputs(ours, 1, seed=11)
    negative_context = make_inputs(ours, 1, seed=12)["context"]
    video_t, audio_t = per_token(inputs, 1, video_frozen=1, audio_frozen=True)
    passes = [
        ("cond", inputs["context"], ()),
        ("negative", negative_context, ()),
        ("stg", inputs["context"], (LTX2Perturbation("skip_video_self_attn", (1,)),)),
        (
            "isolated",
            inputs["context"],
            (LTX2Perturbation("skip_a2v_cross_attn"), LTX2Perturbation("skip_v2a_cross_attn")),
        ),
    ]
    separate = []
    for _, context, perturbation in passes:
        item = dict(inputs, context=context)
        separate.append(run_reference(reference, item, video_t, audio_t, inputs["sigma"], [perturbation]))

    def stack(key):
        return torch.cat([inputs[key]] * 4)

    batched_inputs = {key: stack(key) for key in inputs}
    batched_inputs["context"] = torch.cat([context for _, context, _ in passes])
    video, audio = run_ours(
        ours,
        batched_inputs,
        video_t.repeat(4, 1),
        audio_t.repeat(4, 1),
        batched_inputs["sigma"],
        [p for _, _, p in passes],
    )
    for i, (name, *_rest) in enumerate(passes):
        assert_close((video[i : i + 1], audio[i : i + 1]), separate[i])
    # The four passes really differ from each other.
    assert min((video[0] - video[i]).abs().max().item() for i in (1, 2, 3)) > 1e-4


def test_a_mismapped_weight_breaks_parity(models):
    ours, reference = models
    inputs = make_inputs(ours, 1, seed=2)
    video_t, audio_t = per_token(inputs, 1)
    table = ours.transformer_blocks[0].video_a2v_cross_attn_scale_shift_table
    original = table.detach().clone()
    with torch.no_grad():
        table.copy_(ours.transformer_blocks[1].video_a2v_cross_attn_scale_shift_table)
    try:
        out = run_ours(ours, inputs, video_t, audio_t, inputs["sigma"])
        ref = run_reference(reference, inputs, video_t, audio_t, inputs["sigma"])
        assert (out[0] - ref[0]).abs().max().item() > 1e-3
    finally:
        with torch.no_grad():
            table.copy_(original)
