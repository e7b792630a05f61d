"""Block streaming (`pipelines/block_streaming.py`, issue 12): a transformer keeping some blocks resident and
streaming the others through device slots computes exactly what the plain transformer computes (bit for bit:
the slots hold copies of the same values), with the distilled LoRA applied or not and the LoRA switched between
forwards; its weights come back to their home tensors after every block; `to()` leaves the streamed blocks alone;
compiled blocks run from the slots without recompiling per block."""

from __future__ import annotations

import contextlib

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


def test_a_transformer_moved_off_the_streamers_device_is_refused():
    model = tiny()
    BlockStreamer(model, "cpu", {0}).attach()._transformer._block_streamer.device = torch.device("meta")
    with pytest.raises(ValueError, match="streams its blocks to meta but was moved to cpu"):
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


def count_copies(streamer):
    calls = []
    original = streamer._copy

    def counting(slot, idx, manifest, key):
        calls.append(idx)
        return original(slot, idx, manifest, key)

    streamer._copy = counting
    return calls


def test_each_streamed_block_is_copied_once_per_forward():
    """Prefetched slots are used, not copied again: a forward copies each streamed block once (the first two of the
    next forward are prefetched at the end of this one)."""
    model = tiny(num_layers=6)
    streamer = BlockStreamer(model, "cpu", {0, 3}).attach()
    copies = count_copies(streamer)
    for _ in range(3):
        run(model)
    assert sorted(copies) == sorted([1, 2, 4, 5] * 3 + [1, 2])  # + the next forward's, prefetched at the end


def test_weights_changed_in_place_between_forwards_are_copied_again():
    """`load_state_dict` between two forwards (in place: same storage, new values) invalidates the slots prefetched
    with the old values; the output is the new weights' output."""
    model, other = tiny(seed=0), tiny(seed=1)
    expected = run(other)
    streamer = BlockStreamer(model, "cpu", {1}).attach()
    run(model)
    model.load_state_dict(other.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(run(model), expected))
    streamer.detach()


def test_user_peft_adapters_in_streamed_blocks():
    """A user's PEFT adapter on the blocks (its A/B weights are parameters of the streamed blocks) streams with
    them, and the user's adapter weights apply: the same outputs as the plain model with the adapter."""
    from peft import LoraConfig

    def with_adapter():
        model = tiny()
        torch.manual_seed(3)
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
        return model

    plain, model = with_adapter(), with_adapter()
    BlockStreamer(model, "cpu", {0}).attach()
    for weight in (1.0, 0.5):
        plain.set_adapters(["default"], weights=[weight])
        model.set_adapters(["default"], weights=[weight])
        expected = run(plain)
        assert all(torch.equal(a, b) for a, b in zip(run(model), expected))
    assert not torch.equal(run(tiny())[0], expected[0])  # the adapter matters


def test_shared_prefix_forward_streams_bit_exact():
    """The batched guidance forward with the STG pass joining at its perturbed block (`shared_prefix`: blocks run
    in segments on part of the batch) streams like the plain one."""
    from ltx2_diffusers import LTX2Perturbation
    from ltx2_diffusers.models.perturbations import shared_prefixes

    model = tiny()
    passes = [(), (LTX2Perturbation("skip_video_self_attn", (2,)),), ()]
    extra = dict(perturbations=passes, shared_prefix=shared_prefixes(passes, {1: 0}, 4))
    expected = run(model, **extra)
    BlockStreamer(model, "cpu", {2}).attach()
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(run(model, **extra), expected))


@pytest.mark.parametrize("image", [False, True])
def test_stream_tier_on_the_audio_video_pipelines(tmp_path_factory, image):
    """Text/image -> audio + video under the stream tier (no block resident, the text side hooked, the rest
    resident): the same frames and waveform as the pipeline placed as loaded, over two calls."""
    from dataclasses import replace

    import PIL.Image
    from factories import cached_checkpoint
    from test_pipeline_av_pretrained import call

    from ltx2_diffusers import LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline
    from ltx2_diffusers.pipelines import memory

    checkpoint = cached_checkpoint("checkpoint", "2.3", seed=17, dtype=torch.float32)
    upsampler = cached_checkpoint("upsampler", seed=18, dtype=torch.float32)
    lora = cached_checkpoint("lora", checkpoint_path=checkpoint, seed=19, dtype=torch.float32)
    cls = LTX2ImageToAudioVideoPipeline if image else LTX2AudioVideoPipeline
    extra = {"output_type": "pt"}
    if image:
        path = tmp_path_factory.mktemp("image") / "image.png"
        PIL.Image.new("RGB", (96, 64), (200, 40, 90)).save(path)
        extra["image"] = path

    def load():
        return cls.from_single_file(checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, 0.7),
                                    torch_dtype=torch.float32)  # fmt: skip

    expected = call(load(), **extra)
    pipe = load()
    tier = replace(next(t for t in memory.TIERS if t.offload == "stream" and not t.tiled_decode), resident_blocks=0)
    pipe.enable_memory_tier(tier, "cpu")
    assert len(pipe.transformer._block_streamer.streamed) == pipe.transformer.config.num_layers
    for _ in range(2):
        out = call(pipe, **extra)
        assert torch.equal(out.frames, expected.frames) and torch.equal(out.audio, expected.audio)


def test_fp8_cast_blocks_stream_with_the_distilled_lora_hook():
    """float8-stored linears (ltx-core's fp8-cast: upcast at each call, the distilled LoRA added by a forward hook)
    stream their float8 bytes: the same outputs as the plain fp8 model, with and without the LoRA."""
    from ltx2_diffusers.cli_running import fp8_cast

    model = tiny()
    fp8_cast(model)
    lora = random_distilled_lora(model)
    plain = run(model)
    with lora.applied(model, 0.8):
        with_lora = run(model)
    assert model.transformer_blocks[1].ff.net[2].weight.dtype == torch.float8_e4m3fn
    BlockStreamer(model, "cpu", {0, 3}).attach()
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(run(model), plain))
        with lora.applied(model, 0.8):
            assert all(torch.equal(a, b) for a, b in zip(run(model), with_lora))


def test_grad_mode_is_refused():
    model = tiny()
    BlockStreamer(model, "cpu", {0}).attach()
    with pytest.raises(ValueError, match="block streaming computes without autograd"):
        model(**forward_kwargs(model, batch=1))


class _Recording(torch.nn.Linear):
    def __init__(self, log, name):
        super().__init__(2, 2)
        self.log, self.name = log, name

    def to(self, *args, **kwargs):
        self.log.append((self.name, str(args[0])))
        return super().to(*args, **kwargs)


def test_text_component_hooks_take_turns_and_leave_at_the_transformer_forward():
    """The stream tier's text components: each comes to the device when it runs and sends the other home first;
    the transformer's next forward sends both home. Not accelerate's CpuOffload (diffusers would take it for model
    offload)."""
    from accelerate.hooks import CpuOffload, add_hook_to_module

    from ltx2_diffusers.pipelines.block_streaming import TextComponentHook

    log, group = [], []
    encoder, connectors = _Recording(log, "encoder"), _Recording(log, "connectors")
    for module in (encoder, connectors):
        add_hook_to_module(module, TextComponentHook(torch.device("cpu"), group))
    assert not isinstance(encoder._hf_hook, CpuOffload)
    log.clear()
    encoder(torch.ones(2))
    assert log == [("connectors", "cpu"), ("encoder", "cpu")]  # the other home, then itself to the device
    log.clear()
    connectors(torch.ones(2))
    assert log == [("encoder", "cpu"), ("connectors", "cpu")]
    model = tiny()
    streamer = BlockStreamer(model, "cpu", {0}).attach()
    streamer.offload_before_forward = group
    log.clear()
    run(model)
    assert log == [("encoder", "cpu"), ("connectors", "cpu")]


def test_user_lora_loaded_after_the_stream_tier_keeps_the_placement():
    """`load_lora_weights` after the stream tier: diffusers does not mistake the text hooks for model CPU offload
    (it would remove them and re-apply model offload to every component); the adapter streams with its blocks."""
    from dataclasses import replace

    from factories import cached_checkpoint

    from ltx2_diffusers import LTX2AudioToVideoPipeline
    from ltx2_diffusers.pipelines import memory
    from ltx2_diffusers.pipelines.block_streaming import TextComponentHook

    checkpoint = cached_checkpoint("checkpoint", "2.3", seed=4)
    user_lora = cached_checkpoint("lora", checkpoint_path=checkpoint, seed=8, dtype=torch.float32)
    pipe = LTX2AudioToVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32)
    tier = replace(next(t for t in memory.TIERS if t.offload == "stream"), resident_blocks=1)
    pipe.enable_memory_tier(tier, "cpu")
    pipe.load_lora_weights(str(user_lora), adapter_name="user")
    assert isinstance(pipe.connectors._hf_hook, TextComponentHook)
    assert pipe.transformer._block_streamer is not None and pipe._memory_tier == tier
    streamed = pipe.transformer._block_streamer.streamed[0]
    assert any("lora_A" in name for name, _ in pipe.transformer.transformer_blocks[streamed].named_parameters())


def test_stream_ordering_with_recorded_cuda_streams(monkeypatch):
    """The CUDA ordering, recorded with stand-in streams and events on the CPU: a new slot's copy waits for the
    compute stream (whose memory pool the slot comes from); a block waits for its slot's copy; a copy into a used
    slot waits for the block that read it; freeing the slots waits for the copies in flight."""
    log = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            log.append(("wait_stream", self.name, other.name))

        def wait_event(self, event):
            log.append(("wait_event", self.name, event.name))

        def synchronize(self):
            pass

    class Event:
        count = 0

        def __init__(self):
            Event.count += 1
            self.name = f"event{Event.count}"

        def record(self, stream):
            log.append(("record", self.name, stream.name))

    compute, copy = Stream("compute"), Stream("copy")
    current = [compute]

    @contextlib.contextmanager
    def stream(s):
        current[0], old = s, current[0]
        try:
            yield
        finally:
            current[0] = old

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    model = tiny(num_layers=6)
    expected = run(model)
    streamer = BlockStreamer(model, "cpu", {0, 3}).attach()
    streamer._cuda, streamer._copy_stream = True, copy
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(run(model), expected))
    streamer.release_slots()

    assert ("wait_stream", "copy", "copy") not in log
    recorded = {name: stream for kind, name, stream in log if kind == "record"}
    loaded = [name for name, s in recorded.items() if s == "copy"]
    released = [name for name, s in recorded.items() if s == "compute"]
    # the first copy into each of the two new slots waits for the compute stream
    assert [entry for entry in log if entry[0] == "wait_stream"][:2] == [("wait_stream", "copy", "compute")] * 2
    # every block reading a slot waited for that slot's copy (the last two copies prefetch the next forward)
    waited = [name for kind, who, name in log if kind == "wait_event" and who == "compute"]
    assert set(loaded[:-2]) <= set(waited)
    # copies into used slots wait for the block that last read them, recorded on the compute stream
    copy_waits = [name for kind, who, name in log if kind == "wait_event" and who == "copy"]
    assert copy_waits and set(copy_waits) <= set(released)
    assert log[-1] == ("wait_stream", "compute", "copy")  # release_slots: the copies in flight first
