"""Block streaming: a transformer keeps some of its blocks on the accelerator and streams the others.

`BlockStreamer(transformer, device, resident)` keeps the transformer outside its blocks and the `resident` blocks on
`device`; the other blocks live in pinned host memory and are copied, one or two blocks ahead, into a few device
slots on a side stream while the blocks before them compute. The weights a block computes with are the same
tensors' values (a copy, never a conversion), so a streamed transformer computes exactly what the resident one
does, and the blocks stay compilable (`compile_repeated_blocks`): no hook sits inside them, the transformer swaps a
streamed block's tensors (`tensor.data`) to its slot for the block's call and back to the host afterwards.

What a block streams (`_manifest`): all its parameters and buffers when it is streamed, and for every block the
distilled LoRA factors attached to its linears while stage 2 applies them (`LORA_FACTOR_ATTRIBUTES`) when they are
not on the device (the memory tiers keep them in pinned host memory). A prefetched slot whose manifest changed
before its block ran (the LoRA applied or removed between two forwards) is copied again, and so is one whose
tensors changed in place through autograd-visible operations (`load_state_dict`, `copy_`: their version counter).
Changes through `.data` (PEFT's `fuse_lora`, for one) are invisible to that check: the pipelines free the slots at
the end of every stage (`slots_released_after`), so such changes between pipeline calls are safe; between two
forwards of the transformer called directly, call `release_slots()` after changing the weights.

The transformer calls `streamer.begin_forward()` at the start of each forward (which first moves the components
registered with `offload_before_forward` back to the host: the memory tier's other components) and runs each
block inside `streamer.block(idx)`. `transformer.to(...)` / `pipe.to(...)` move everything but the streamed
blocks, which stay on the host; `detach()` brings them back where the rest of the transformer is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from accelerate.hooks import ModelHook
from accelerate.utils import send_to_device


#: Attributes of a linear holding `(A, B, scale)` while a LoRA is applied to it: the distilled LoRA's
#: `W + (B * scale) @ A` (`loaders.distilled_lora.DELTA_ATTRIBUTE`) and the float8 fused LoRA (`loaders.fp8`).
LORA_FACTOR_ATTRIBUTES = ("_ltx2_distilled_delta", "fp8_fused_lora")
ALIGNMENT = 256  # bytes: every tensor of a slot starts at a multiple (what compiled kernels assume)


def spread_blocks(num_blocks: int, count: int) -> list[int]:
    """`count` block indices spread evenly over `range(num_blocks)` (streamed blocks are interleaved with resident
    ones, so that each copy overlaps the compute of the blocks before it)."""
    if not 0 <= count <= num_blocks:
        raise ValueError(f"count must be in [0, {num_blocks}], got {count}")
    return sorted({(i * num_blocks) // count for i in range(count)}) if count else []


def _version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors keep no version counter
        return -1


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


class _Slot:
    def __init__(self):
        self.buffer: torch.Tensor | None = None
        self.block: int | None = None
        self.key: tuple = ()
        self.views: list[torch.Tensor] = []
        self.loaded = None  # CUDA event: the copy into the slot has finished
        self.released = None  # CUDA event: the block computing from the slot has finished


class BlockStreamer:
    """Streams the transformer blocks outside `resident` from pinned host memory (see the module docstring).

    Args:
        transformer: a model with a `transformer_blocks` ModuleList calling `begin_forward` / `block(idx)`.
        device: where the transformer computes.
        resident: indices of the blocks kept on `device`.
        slots: device slots for streamed blocks (2: one computes while the next is copied).
    """

    def __init__(self, transformer: torch.nn.Module, device, resident: Iterable[int], slots: int = 2):
        blocks = transformer.transformer_blocks
        resident = set(resident)
        bad = sorted(i for i in resident if not (isinstance(i, int) and 0 <= i < len(blocks)))
        if bad:
            raise ValueError(f"resident block indices {bad} out of range for {len(blocks)} blocks")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.resident = frozenset(resident)
        self.streamed = tuple(i for i in range(len(blocks)) if i not in resident)
        self.offload_before_forward: list = []
        self._transformer = transformer
        self._blocks = blocks
        self._slots = [_Slot() for _ in range(slots)]
        self._cuda = self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._attached = False

    # ------------------------------------------------------------------------------------------- placing
    def attach(self) -> "BlockStreamer":
        """Streamed blocks to (pinned) host memory, the rest of the transformer to the device."""
        if getattr(self._transformer, "_block_streamer", None) is not None:
            raise ValueError("the transformer already streams its blocks (BlockStreamer.detach() first)")
        pin = self._cuda
        for idx in self.streamed:
            for tensor in self._tensors(self._blocks[idx]):
                host = tensor.data.to("cpu")
                if pin and not host.is_pinned():
                    host = host.pin_memory()
                tensor.data = host
        self._transformer._block_streamer = self
        self._attached = True
        self._transformer.to(self.device)
        return self

    def detach(self) -> None:
        """The streamed blocks back where the rest of the transformer is; the slots freed."""
        if not self._attached:
            return
        self.synchronize()
        self._transformer._block_streamer = None
        self._attached = False
        self._slots = [_Slot() for _ in self._slots]
        for idx in self.streamed:
            self._blocks[idx].to(self.device)

    def synchronize(self) -> None:
        if self._cuda:
            self._copy_stream.synchronize()

    @contextlib.contextmanager
    def hidden_blocks(self):
        """The streamed blocks taken out of the block list for the duration (so `Module._apply` skips them)."""
        modules = self._blocks._modules
        saved = {str(i): modules[str(i)] for i in self.streamed}
        for key in saved:
            modules[key] = torch.nn.Identity()
        try:
            yield
        finally:
            modules.update(saved)

    def release_slots(self) -> None:
        """Free the slots (the end of a stage: the decode can use their memory); the next forward allocates them
        again. The compute stream first waits for the copies in flight."""
        if self._cuda:
            torch.cuda.current_stream(self.device).wait_stream(self._copy_stream)
        self._slots = [_Slot() for _ in self._slots]

    def slot_bytes(self) -> int:
        return max((s.buffer.numel() for s in self._slots if s.buffer is not None), default=0)

    # ------------------------------------------------------------------------------------------- forward
    def begin_forward(self) -> None:
        """Called by the transformer at the start of a forward: the registered other components leave the device;
        a transformer moved off the streamer's device, or whose dtype changed under the streamed blocks, is
        refused."""
        for hook in self.offload_before_forward:
            hook.offload()
        here = self._transformer.device
        if here != self.device:
            raise ValueError(
                f"the transformer streams its blocks to {self.device} but was moved to {here} (to() after the "
                "memory tier): call its BlockStreamer's detach() before moving it, or load the pipeline again"
            )
        if torch.is_grad_enabled() and any(
            p.requires_grad for idx in self.streamed[:1] for p in self._blocks[idx].parameters()
        ):
            raise ValueError(
                "block streaming computes without autograd (a streamed block's weights are on the device only "
                "during its call): run the transformer under torch.no_grad() / torch.inference_mode(), or "
                "BlockStreamer.detach() to train"
            )
        dtype = self._transformer.dtype
        for idx in self.streamed[:1]:
            for tensor in self._tensors(self._blocks[idx]):
                if tensor.is_floating_point() and tensor.dtype != dtype and tensor.dtype.itemsize > 1:
                    raise ValueError(
                        f"streamed transformer block {idx} holds {tensor.dtype} weights, the transformer {dtype}: "
                        "change the dtype before enabling block streaming (BlockStreamer.detach() first)"
                    )
                break

    @contextlib.contextmanager
    def block(self, idx: int):
        """Block `idx` computes from its slot (when it streams anything) for the duration."""
        manifest = self._manifest(idx)
        if not manifest:
            yield
            return
        slot = self._load(idx, manifest, wait=True)
        saved = []
        try:
            for (owner, name, source), view in zip(manifest, slot.views):
                if owner is None:
                    saved.append((source, None, source.data))
                    source.data = view
                else:
                    factors = owner.__dict__[name]
                    saved.append((owner, name, factors))
                    a, b = factors[0], factors[1]
                    replaced = (view, b, *factors[2:]) if source is a else (a, view, *factors[2:])
                    owner.__dict__[name] = replaced
            yield
        finally:
            for target, name, value in reversed(saved):
                if name is None:
                    target.data = value
                else:
                    target.__dict__[name] = value
            if self._cuda:
                slot.released = torch.cuda.Event()
                slot.released.record(torch.cuda.current_stream(self.device))
            slot.block = None
            self._prefetch_after(idx)

    # ------------------------------------------------------------------------------------------- internals
    @staticmethod
    def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
        return [*module.parameters(), *module.buffers()]

    def _manifest(self, idx: int) -> list[tuple]:
        """`(owner, attribute, source)` of every tensor block `idx` streams: `(None, None, tensor)` for its weights
        (streamed blocks), `(linear, attribute, factor)` for LoRA factors away from the device."""
        block = self._blocks[idx]
        streamed = idx not in self.resident
        items = [(None, None, t) for t in self._tensors(block)] if streamed else []
        for module in block.modules():
            for name in LORA_FACTOR_ATTRIBUTES:
                factors = module.__dict__.get(name)
                if not factors:
                    continue
                for factor in factors[:2]:
                    if streamed or factor.device != self.device:
                        items.append((module, name, factor))
        return items

    @staticmethod
    def _key(manifest) -> tuple:
        """What a slot copied: each source's storage, layout and version (an in-place change, as
        `load_state_dict` makes, bumps the version and so invalidates a prefetched copy)."""
        return tuple((t.data_ptr(), t.dtype, tuple(t.shape), _version(t)) for _, _, t in manifest)

    def _load(self, idx: int, manifest, wait: bool) -> _Slot:
        """A slot holding block `idx`'s manifest (copied now unless a prefetch already did); with `wait` the
        current stream waits for the copy."""
        key = self._key(manifest)
        slot = next((s for s in self._slots if s.block == idx and s.key == key), None)
        if slot is None:
            slot = self._free_slot(avoid=idx)
            self._copy(slot, idx, manifest, key)
        if wait and self._cuda:
            torch.cuda.current_stream(self.device).wait_event(slot.loaded)
        return slot

    def _free_slot(self, avoid: int) -> _Slot:
        free = [s for s in self._slots if s.block is None]
        if free:
            return free[0]
        # Every slot holds a prefetched block: take the one needed last (cyclic distance from `avoid`).
        n = len(self._blocks)
        return max(self._slots, key=lambda s: (s.block - avoid) % n)

    def _copy(self, slot: _Slot, idx: int, manifest, key) -> None:
        sizes = [_aligned(t.numel() * t.element_size()) for _, _, t in manifest]
        needed = sum(sizes)
        compute = torch.cuda.current_stream(self.device) if self._cuda else None
        fresh = slot.buffer is None or slot.buffer.numel() < needed
        if fresh:  # allocated on the compute stream, which the copy stream then waits for
            if self._cuda and slot.buffer is not None and slot.loaded is not None:
                compute.wait_event(slot.loaded)  # no copy still writes the old buffer once its memory is reused
            slot.buffer, slot.views = None, []
            slot.buffer = torch.empty(needed, dtype=torch.uint8, device=self.device)
        views, offset = [], 0
        for (_, _, t), size in zip(manifest, sizes):
            nbytes = t.numel() * t.element_size()
            views.append(slot.buffer[offset : offset + nbytes].view(t.dtype).view(t.shape))
            offset += size
        context = torch.cuda.stream(self._copy_stream) if self._cuda else contextlib.nullcontext()
        with context:
            if self._cuda:
                if fresh or slot.released is None:
                    self._copy_stream.wait_stream(compute)
                else:
                    self._copy_stream.wait_event(slot.released)
            for view, (_, _, t) in zip(views, manifest):
                view.copy_(t.detach().contiguous(), non_blocking=True)
            if self._cuda:
                slot.loaded = torch.cuda.Event()
                slot.loaded.record(self._copy_stream)
        slot.block, slot.key, slot.views = idx, key, views

    def _prefetch_after(self, idx: int) -> None:
        """Fill the slots with the next blocks (cyclic: the next forward's first ones after the last) that stream."""
        n = len(self._blocks)
        wanted = []
        for step in range(1, n + 1):
            nxt = (idx + step) % n
            if nxt == idx:
                break
            manifest = self._manifest(nxt)
            if manifest:
                wanted.append((nxt, manifest))
            if len(wanted) == len(self._slots):
                break
        wanted_ids = {i for i, _ in wanted}
        for nxt, manifest in wanted:
            key = self._key(manifest)
            if any(s.block == nxt and s.key == key for s in self._slots):
                continue
            free = [s for s in self._slots if s.block is None or s.block not in wanted_ids]
            if not free:
                return
            self._copy(free[0], nxt, manifest, key)


@contextlib.contextmanager
def slots_released_after(transformer: torch.nn.Module):
    """A stage of the pipeline: a streaming transformer's slots are freed when it ends."""
    try:
        yield
    finally:
        streamer = getattr(transformer, "_block_streamer", None)
        if streamer is not None:
            streamer.release_slots()


class TextComponentHook(ModelHook):
    """Where a text component (`memory.TEXT_COMPONENTS`) of the stream tier lives: on the device from its use (its
    forward, or a method under diffusers' `apply_forward_hook`) until the transformer's next forward or the use of
    another text component of its group, on the host otherwise. An accelerate `ModelHook`, but not its
    `CpuOffload`: diffusers would take that for model CPU offload (and re-apply model offload to the whole pipeline
    around `load_lora_weights`)."""

    def __init__(self, device: torch.device, group: list):
        self.execution_device = device
        self.group = group
        self.module = None
        group.append(self)

    def init_hook(self, module):
        self.module = module
        return module.to("cpu")

    def pre_forward(self, module, *args, **kwargs):
        for other in self.group:
            if other is not self:
                other.offload()
        module.to(self.execution_device)
        return send_to_device(args, self.execution_device), send_to_device(kwargs, self.execution_device)

    def offload(self) -> None:
        if self.module is not None:
            self.module.to("cpu")


def enable_block_streaming(
    pipe, device, resident_blocks: int | None = None, text_offload: str = "hook"
) -> BlockStreamer:
    """The memory tier "stream" on `pipe`: its transformer keeps `resident_blocks` blocks (spread evenly; None:
    all) and the transformer outside the blocks on `device` and streams the others from pinned host memory; the
    text encoder and connectors (`memory.TEXT_COMPONENTS`, used once per call) get a `TextComponentHook` that brings
    each to `device` when it runs (sending the other one home) and back to the host when the transformer's next
    forward starts (`text_offload="layers"`: diffusers' leaf-level group offload instead, with a CUDA stream on
    CUDA); the other components (the distilled LoRA aside, which the caller places) go to `device`."""
    from accelerate.hooks import add_hook_to_module
    from diffusers.hooks import apply_group_offloading

    from .memory import STREAM_SLOTS, TEXT_COMPONENTS, TEXT_OFFLOADS

    if text_offload not in TEXT_OFFLOADS:
        raise ValueError(f"text_offload must be one of {TEXT_OFFLOADS}, got {text_offload!r}")

    device = torch.device(device)
    transformer = pipe.transformer
    num_blocks = len(transformer.transformer_blocks)
    kept = num_blocks if resident_blocks is None else resident_blocks
    if isinstance(kept, bool) or not isinstance(kept, int) or not 0 <= kept <= num_blocks:
        raise ValueError(f"resident_blocks must be an int in [0, {num_blocks}], got {resident_blocks!r}")
    streamed = set(spread_blocks(num_blocks, num_blocks - kept))
    kept_blocks = [i for i in range(num_blocks) if i not in streamed]
    streamer = BlockStreamer(transformer, device, kept_blocks, slots=STREAM_SLOTS)  # what the estimate counts
    hooks = []
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module) or name in ("transformer", "distilled_lora"):
            continue
        if name in TEXT_COMPONENTS and text_offload == "layers":
            component.to("cpu")
            apply_group_offloading(
                component, onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level",
                use_stream=device.type == "cuda",
            )  # fmt: skip
        elif name in TEXT_COMPONENTS:
            add_hook_to_module(component, TextComponentHook(device, hooks))
        else:
            component.to(device)
    streamer.attach()
    streamer.offload_before_forward = hooks
    return streamer
