"""A batched forward whose coordinates are one item's expanded over the batch (as the pipelines' guidance steps pass
them) computes the rotary tables once, for one item, and broadcasts them in the blocks: the same outputs bit for
bit as with a copy of the coordinates per item (whose tables are computed per item), in both rotary layouts, with
the STG pass sharing the conditional pass's prefix and the isolated item skipping the cross-modal attention."""

import pytest
import torch
from factories import build_checkpoint
from test_stg_prefix import LAYERS, PASSES, forward

from ltx2_diffusers import LTX2AudioVideoTransformer
from ltx2_diffusers.models.perturbations import shared_prefixes


@pytest.fixture(scope="module", params=["split", "interleaved"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("rope") / "model.safetensors"
    build_checkpoint(path, "2.3", seed=11, components=("transformer",), num_layers=LAYERS, rope_type=request.param)
    return LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32)


def _table_batches(model, **kwargs):
    """The batch sizes of the coordinates each rotary table was computed from, and the forward's outputs."""
    seen, real = [], model._rotary

    def spy(coords, *args, **kw):
        seen.append(coords.shape[0])
        return real(coords, *args, **kw)

    model._rotary = spy
    try:
        return seen, forward(model, **kwargs)
    finally:
        del model._rotary


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "stg-prefix"])
def test_expanded_coordinates_give_one_item_tables_and_the_same_outputs(model, shared):
    prefix = shared_prefixes(PASSES, {2: 0}, LAYERS) if shared else None
    batches, out = _table_batches(model, shared_prefix=prefix)
    copied_batches, copied = _table_batches(model, shared_prefix=prefix, copied_coords=True)
    assert batches == [1, 1, 1, 1]  # video, audio and the two cross-modal tables: one item each
    assert copied_batches == [len(PASSES)] * 4
    for a, b in zip(out, copied, strict=True):
        assert torch.equal(a, b)
