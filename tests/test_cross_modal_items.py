"""A batched forward whose items skip the audio<->video cross-attention for some items only (the isolated-modality
pass of a guidance step) computes those attentions for the other items only, and each item's output is that of
its own batch-1 forward (float32: within 1e-5; the matmuls of a smaller batch may round differently)."""

from __future__ import annotations

import pytest
import torch
from factories import build_checkpoint
from test_stg_prefix import ISOLATED, LAYERS, PASSES, STG_BLOCK, forward

from ltx2_diffusers import LTX2AudioVideoTransformer
from ltx2_diffusers.models.perturbations import SharedPrefix, add_to_items, item_runs, take_items


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    build_checkpoint(path, "2.3", seed=7, components=("transformer",), num_layers=LAYERS)
    return LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32)


def _cross_modal_batches(model, **kwargs):
    """Per block, the batch sizes the two cross-modal attentions were called with."""
    seen = []
    hooks = [
        attn.register_forward_pre_hook(lambda m, args, i=i, n=name: seen.append((i, n, args[0].shape[0])))
        for i, block in enumerate(model.transformer_blocks)
        for name, attn in (("a2v", block.audio_to_video_attn), ("v2a", block.video_to_audio_attn))
    ]
    try:
        out = forward(model, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


@pytest.mark.parametrize(
    "passes, negative_items",
    [(PASSES, (1,)), ([ISOLATED, (), ISOLATED, ()], (3,)), ([(), ISOLATED], ())],
    ids=["guidance-step", "alternating", "isolated-last"],
)
def test_each_item_equals_its_own_forward(model, passes, negative_items):
    seen, (video, audio) = _cross_modal_batches(model, perturbations=passes, negative_items=negative_items)
    kept = sum(1 for p in passes if p != ISOLATED)
    assert {n for _, _, n in seen} == {kept}  # the isolated items ran no cross-modal attention
    assert len(seen) == 2 * LAYERS
    for i, item in enumerate(passes):
        alone_video, alone_audio = forward(model, [item], negative_items=(0,) if i in negative_items else ())
        assert (video[i : i + 1] - alone_video).abs().max().item() <= 1e-5
        assert (audio[i : i + 1] - alone_audio).abs().max().item() <= 1e-5
    # the cross-modal attention matters: an isolated item differs from the same item not isolated
    assert (forward(model, [ISOLATED])[0] - forward(model, [()])[0]).abs().max().item() > 1e-4


def test_with_a_shared_prefix_the_waiting_item_is_left_out_too(model):
    """Before the STG block the batch holds cond, negative, isolated (2 attend); from it on, all 4 (3 attend)."""
    seen, out = _cross_modal_batches(model, shared_prefix=[SharedPrefix(2, 0, STG_BLOCK)])
    assert [n for i, name, n in seen if name == "a2v"] == [2] * STG_BLOCK + [3] * (LAYERS - STG_BLOCK)
    plain = forward(model)
    for a, b in zip(plain, out):
        assert (a - b).abs().max().item() <= 1e-5


def test_item_helpers():
    x = torch.arange(5.0).view(5, 1)
    assert item_runs([0, 1, 3]) == [(0, 2), (3, 4)]
    assert take_items(x, (0, 1, 3), 5).flatten().tolist() == [0.0, 1.0, 3.0]
    assert take_items(x, (1, 2), 5).data_ptr() == x[1].data_ptr()  # consecutive items: a view
    broadcast = torch.ones(1, 3)
    assert take_items(broadcast, (0, 3), 5) is broadcast and take_items(None, (0,), 5) is None
    assert take_items(x, None, 5) is x
    out = add_to_items(x, torch.tensor([[10.0], [20.0]]), (1, 4))
    assert out.flatten().tolist() == [0.0, 11.0, 2.0, 3.0, 24.0]
