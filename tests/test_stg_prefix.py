"""Shared block prefixes in one batched forward: an item with the same inputs as another and the same
perturbations before block k (the STG pass vs the conditional pass) runs only from block k on, from a copy of the
other item's hidden states, and gives the unshared forward's output (float32: within 1e-5; the matmuls of a smaller
batch may round differently)."""

from __future__ import annotations

import pytest
import torch
from factories import build_checkpoint, transformer_parity_inputs

from ltx2_diffusers import LTX2AudioVideoTransformer, LTX2Perturbation
from ltx2_diffusers.models.perturbations import SharedPrefix, first_divergent_block, shared_prefixes


LAYERS, STG_BLOCK = 4, 2
STG = (LTX2Perturbation("skip_video_self_attn", (STG_BLOCK,)),)
ISOLATED = (LTX2Perturbation("skip_a2v_cross_attn"), LTX2Perturbation("skip_v2a_cross_attn"))
#: cond, negative, STG, isolated: the four guidance passes of a stage-1 step
PASSES = [(), (), STG, ISOLATED]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    build_checkpoint(path, "2.3", seed=5, components=("transformer",), num_layers=LAYERS)
    return LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32)


def forward(model, perturbations=PASSES, shared_prefix=None, seed=0, negative_items=(1,), copied_coords=False):
    """One forward of the items `perturbations`; the items `negative_items` take the negative context. The
    coordinates are one item's expanded over the batch (as the pipelines pass them), or copies (`copied_coords`)."""
    x = transformer_parity_inputs(model.config)
    negative = torch.randn(x["ctx"].shape, generator=torch.Generator().manual_seed(seed + 1))
    n = len(perturbations)
    contexts = [negative if i in negative_items else x["ctx"] for i in range(n)]
    sigma = x["sigma"].expand(n) * 1000
    with torch.no_grad():
        return model(
            hidden_states=x["video"].expand(n, -1, -1),
            audio_hidden_states=x["audio"].expand(n, -1, -1),
            encoder_hidden_states=torch.cat(contexts),
            audio_encoder_hidden_states=x["actx"].expand(n, -1, -1),
            timestep=x["vt"].expand(n, -1) * 1000,
            audio_timestep=x["at"].expand(n, -1) * 1000,
            sigma=sigma,
            audio_sigma=sigma,
            video_coords=x["vc"].expand(n, -1, -1, -1).clone() if copied_coords else x["vc"].expand(n, -1, -1, -1),
            audio_coords=x["ac"].expand(n, -1, -1, -1).clone() if copied_coords else x["ac"].expand(n, -1, -1, -1),
            use_cross_timestep=True,
            perturbations=perturbations,
            shared_prefix=shared_prefix,
            return_dict=False,
        )


def test_prefix_is_found_from_the_perturbations():
    assert first_divergent_block(PASSES, 2, 0, LAYERS) == STG_BLOCK
    assert first_divergent_block(PASSES, 3, 0, LAYERS) == 0
    assert first_divergent_block(PASSES, 1, 0, LAYERS) == LAYERS
    # The isolated pass shares nothing, so it is left out.
    assert shared_prefixes(PASSES, {2: 0, 3: 0}, LAYERS) == (SharedPrefix(2, 0, STG_BLOCK),)


def test_stg_prefix_shared_equals_the_unshared_forward(model):
    plain = forward(model)
    shared = forward(model, shared_prefix=shared_prefixes(PASSES, {2: 0}, LAYERS))
    for a, b in zip(plain, shared):
        assert a.shape == b.shape
        # float32 rounding only: the prefix runs on 3 items instead of 4, and the matmul blocking follows the batch.
        assert (a - b).abs().max().item() <= 1e-5
    # The STG item really differs from the conditional one (the perturbed block ran for it).
    assert (plain[0][2] - plain[0][0]).abs().max() > 1e-4


def test_the_prefix_runs_once(model):
    """Blocks before the STG block see 3 items, the rest all 4."""
    seen = []
    hooks = [
        block.register_forward_pre_hook(lambda m, args, i=i: seen.append((i, args[0].shape[0])))
        for i, block in enumerate(model.transformer_blocks)
    ]
    try:
        forward(model, shared_prefix=[SharedPrefix(2, 0, STG_BLOCK)])
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(0, 3), (1, 3), (2, 4), (3, 4)]


def test_an_item_sharing_every_block_is_a_copy_of_its_source(model):
    passes = [(), ISOLATED, ()]
    out = forward(model, passes, shared_prefix=[SharedPrefix(2, 0, LAYERS)])
    plain = forward(model, passes)
    assert torch.equal(out[0][2], out[0][0]) and torch.equal(out[1][2], out[1][0])
    assert (out[0][:2] - plain[0][:2]).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "entry, error, match",
    [
        (SharedPrefix(2, 0, STG_BLOCK + 1), ValueError, "perturbed differently from block 2"),
        (SharedPrefix(3, 0, 1), ValueError, "perturbed differently from block 0"),
        (SharedPrefix(2, 2, 1), ValueError, "two different items"),
        (SharedPrefix(4, 0, 1), ValueError, "two different items"),
        (SharedPrefix(2, 0, LAYERS + 1), ValueError, "until must lie"),
        (SharedPrefix(2, 0, 1.5), TypeError, "until must be an integer"),
        ((2, 0, 1), TypeError, "SharedPrefix entries"),
    ],
)
def test_wrong_declarations_are_refused(model, entry, error, match):
    with pytest.raises(error, match=match):
        forward(model, shared_prefix=[entry])


def test_chains_and_duplicates_are_refused(model):
    with pytest.raises(ValueError, match="no chains"):
        forward(model, [(), (), ()], shared_prefix=[SharedPrefix(1, 0, 2), SharedPrefix(2, 1, 2)])
    with pytest.raises(ValueError, match="twice"):
        forward(model, [(), (), ()], shared_prefix=[SharedPrefix(1, 0, 2), SharedPrefix(1, 2, 2)])
