"""Block streaming (`pipelines/block_streaming.py`, issue 12): a transformer keeping some blocks resident and
streaming the others through device slots computes exactly what the plain transformer computes (bit for bit:
the slots hold copies of the same values), with the distilled LoRA applied or not and the LoRA switched between
forwards; its weights come back to their home tensors after every block; `to()` leaves the streamed blocks alone;
compiled blocks run from the slots without recompiling per block."""

from __future__ import annotations

import pytest
import torch
from test_acceleration import dynamo, random_distilled_lora  # noqa: F401  (fixture)
from test_transformer_diffusers_interop import forward_kwargs, randomize_, tiny_diffusers_config

from ltx2_diffusers import LTX2AudioVideoTransformer
from ltx2_diffusers.pipelines.block_streaming import BlockStreamer, spread_blocks


def tiny(num_layers=4, seed=0):
    config = dict(tiny_diffusers_config("2.3"), num_layers=num_layers)
    return randomize_(LTX2AudioVideoTransformer(**config), seed).eval()


def run(model, **extra):
    with torch.no_grad():
        return model(**forward_kwargs(model, batch=3, **extra))


def homes(model):
    return {name: t.data_ptr() for name, t in [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("resident", [set(), {1}, {0, 3}, {0, 1, 2, 3}])
@pytest.mark.parametrize("slots", [1, 2, 3])
def test_streamed_forward_is_bit_exact(resident, slots):
    model = tiny()
    expected = run(model)
    before = homes(model)
    streamer = BlockStreamer(model, "cpu", resident, slots=slots).attach()
    for _ in range(2):  # the second forward starts from the slots the first prefetched
        out = run(model)
        assert all(torch.equal(a, b) for a, b in zip(out, expected))
    assert homes(model) == before  # every tensor back to its home after each block
    streamer.detach()
    assert model._block_streamer is None and homes(model) == before


def test_streamed_blocks_compute_from_the_slots():
    """A streamed block reads the slot, not its home tensors: zeroing a slot view during the block changes the
    output (so the equality above is not the home tensors read directly)."""
    model = tiny(num_layers=2)
    streamer = BlockStreamer(model, "cpu", {0}).attach()
    seen = []
    block = model.transformer_blocks[1]
    handle = block.register_forward_pre_hook(lambda m, args: seen.append(m.ff.net[2].weight.data_ptr()))
    run(model)
    handle.remove()
    slot_ptrs = {s.buffer.data_ptr() for s in streamer._slots if s.buffer is not None}
    home = model.transformer_blocks[1].ff.net[2].weight.data_ptr()
    assert seen and seen[0] != home
    assert any(p <= seen[0] < p + streamer.slot_bytes() for p in slot_ptrs)


def test_distilled_lora_streams_with_its_block_and_switches_between_forwards():
    model = tiny()
    lora = random_distilled_lora(model)
    plain = run(model)
    with lora.applied(model, 0.8):
        with_lora = run(model)
    assert (with_lora[0] - plain[0]).abs().max() > 1e-3  # the LoRA matters
    streamer = BlockStreamer(model, "cpu", {0, 2}).attach()
    # stage 1, stage 2, stage 1 again: the slots prefetched for the next forward hold the other LoRA state
    for applied, expected in ((False, plain), (True, with_lora), (False, plain), (True, with_lora)):
        if applied:
            with lora.applied(model, 0.8):
                out = run(model)
        else:
            out = run(model)
        assert all(torch.equal(a, b) for a, b in zip(out, expected))
    manifest = streamer._manifest(1)
    assert manifest and all(owner is None for owner, _, _ in manifest)  # no factor attached after stage 2
    streamer.detach()


def test_to_moves_everything_but_the_streamed_blocks_and_a_dtype_change_is_refused():
    model = tiny()
    BlockStreamer(model, "cpu", {0, 1}).attach()
    model.to(torch.float64)
    assert model.transformer_blocks[0].ff.net[2].weight.dtype == torch.float64
    assert model.transformer_blocks[2].ff.net[2].weight.dtype == torch.float32  # streamed: left alone
    with pytest.raises(ValueError, match="streamed transformer block 2 holds torch.float32 weights"):
        run(model)


def test_bad_arguments_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match=r"resident block indices \[4\] out of range for 4 blocks"):
        BlockStreamer(model, "cpu", {4})
    with pytest.raises(ValueError, match="slots must be an int >= 1"):
        BlockStreamer(model, "cpu", {0}, slots=0)
    BlockStreamer(model, "cpu", {0}).attach()
    with pytest.raises(ValueError, match="already streams its blocks"):
        BlockStreamer(model, "cpu", {1}).attach()


def test_spread_blocks():
    assert spread_blocks(48, 0) == []
    assert spread_blocks(8, 4) == [0, 2, 4, 6]
    assert spread_blocks(5, 5) == [0, 1, 2, 3, 4]
    assert len(spread_blocks(48, 29)) == 29
    with pytest.raises(ValueError):
        spread_blocks(4, 5)


def test_compiled_blocks_run_from_the_slots_without_recompiling(dynamo):  # noqa: F811
    """dynamo (full graph, eager backend) over streamed and resident blocks, with and without the distilled LoRA:
    the slot views (storage offsets into one buffer) reuse the graphs; outputs equal eager."""
    model = tiny()
    lora = random_distilled_lora(model)
    plain = run(model)
    with lora.applied(model, 0.8):
        with_lora = run(model)
    BlockStreamer(model, "cpu", spread_blocks(4, 2)).attach()
    model.compile_repeated_blocks(fullgraph=True, backend="eager")
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(run(model), plain))
        with lora.applied(model, 0.8):
            assert all(torch.equal(a, b) for a, b in zip(run(model), with_lora))
    assert dynamo() == 2
