"""The transformer's speed settings, a pipeline default on CUDA: regional compilation of the repeated blocks
(`compile_repeated_blocks`, diffusers' regional `torch.compile`) and an attention backend per GPU
generation (`AUTO_ATTENTION_BACKENDS`), never overriding what the user set.

`TransformerAcceleration` is the setting (`pipe.set_transformer_acceleration(...)`); `resolve_acceleration` is the
pure decision of one call; `accelerated(...)` applies it around a stage's transformer calls:

* ``compile="auto"`` compiles the blocks on the first call on a CUDA device, never on the CPU, never for a
  `reference_arithmetic` call, never when the user compiled something of the transformer themselves
  (`torch.compile(transformer)`, `transformer.compile()`, `compile_repeated_blocks`, a compiled `forward`), and
  not while offload hooks sit inside the blocks (sequential / group offload) or with context parallelism (neither
  measured compiled). ``True`` compiles on any device; ``False`` opts out (blocks the pipeline compiled are
  returned to eager).
* ``attention_backend="auto"`` picks `AUTO_ATTENTION_BACKENDS[compute capability]` on CUDA (None: diffusers'
  native SDPA, nothing set); a name is set as given; None sets nothing. The user's choice is read per model: a
  backend the user set on this transformer's attention processors (`transformer.set_attention_backend`) is never
  touched: "auto" leaves it, a different explicit name is refused until `transformer.reset_attention_backend()`
  takes it back. diffusers' process-wide default (`DIFFUSERS_ATTN_BACKEND`, the `attention_backend(...)` context,
  and what `set_attention_backend` on any model leaves behind, which `reset_attention_backend` does not clear) is
  no choice for this transformer: "auto" leaves it in force (sets nothing), an explicit name is set over it.
  The pipeline sets its backend on the processors only (not diffusers' process-wide active backend).
* ``reference_arithmetic=True`` calls run eager (`torch.compiler.set_stance("force_eager")` for the stage: the
  user's compiled modules too, so the mode stays bit-exact with the reference) and with the native attention
  unless a backend is in force (the user's on this transformer, or diffusers' process-wide default). The stance
  is process-wide for the duration of the stage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from diffusers.utils import logging

from ..utils.hooks import carries_hooks


logger = logging.get_logger(__name__)

AUTO = "auto"
#: compute capability -> diffusers attention backend name ("auto"); None: native SDPA (nothing set). Capabilities
#: absent from the table get None. Filled from GPU measurements (benchmarks/).
AUTO_ATTENTION_BACKENDS: dict[tuple[int, int], str | None] = {(9, 0): None}
_MARK_COMPILED = "_ltx2_auto_compiled"  # on a block: the compiled call the pipeline installed
_MARK_BACKEND = "_ltx2_auto_backend"  # on a processor: the backend the pipeline set


def attention_backend_names() -> tuple[str, ...]:
    """diffusers' attention backend names that need no download at run time (the `*_hub` ones do)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return tuple(sorted(b.value for b in AttentionBackendName if not b.value.endswith("_hub")))


@dataclass(frozen=True)
class TransformerAcceleration:
    """The pipeline's transformer speed settings.

    Args:
        compile: "auto" (regional compile on CUDA), True (on any device) or False (eager).
        attention_backend: "auto" (`AUTO_ATTENTION_BACKENDS` on CUDA), a diffusers backend name (e.g. "flash",
            "_native_cudnn"; not the `*_hub` ones, which download kernels), or None (set none).
    """

    compile: bool | str = AUTO
    attention_backend: str | None = AUTO

    def __post_init__(self):
        if isinstance(self.compile, str):
            if self.compile != AUTO:
                raise ValueError(f"compile must be 'auto', True or False, got {self.compile!r}")
        elif not isinstance(self.compile, bool):
            raise TypeError(f"compile must be 'auto', True or False, got {type(self.compile).__name__}")
        backend = self.attention_backend
        if backend is None or backend == AUTO:
            return
        if not isinstance(backend, str):
            raise TypeError(f"attention_backend must be a str or None, got {type(backend).__name__}")
        names = attention_backend_names()
        if backend.endswith("_hub"):
            raise ValueError(
                f"attention_backend={backend!r} downloads a kernel from the Hub at run time, which the pipeline "
                "does not do; set it yourself with transformer.set_attention_backend(...)"
            )
        if backend not in names:
            raise ValueError(f"attention_backend must be 'auto', None or one of {', '.join(names)}; got {backend!r}")


def resolve_acceleration(
    setting: TransformerAcceleration,
    device,
    reference_arithmetic: bool,
    capability: tuple[int, int] | None,
    user_compiled: bool,
    user_backend: bool,
    *,
    hooked_blocks: bool = False,
    context_parallel: bool = False,
    process_backend: bool = False,
) -> tuple[bool, str | None]:
    """`(compile, attention_backend)` the pipeline applies for one call: whether the blocks are (to be) compiled
    by the pipeline, and the backend it sets on the attention processors (None: none).

    `device`: the execution device; `capability`: its CUDA compute capability (None off CUDA); `user_compiled` /
    `user_backend`: the user compiled part of the transformer / set an attention backend on it (a name: that
    backend; True: several); `process_backend`: diffusers' process-wide default is not the native one (then "auto"
    sets nothing); `hooked_blocks`: offload hooks sit inside the blocks; `context_parallel`: the transformer is
    sequence parallel. Under `reference_arithmetic` the pipeline compiles nothing (and the call runs eager).
    `compile=True` with offload hooks in the blocks, and an explicit backend other than the user's own, are refused
    (ValueError)."""
    if not isinstance(setting, TransformerAcceleration):
        raise TypeError(f"setting must be a TransformerAcceleration, got {type(setting).__name__}")
    cuda = torch.device(device).type == "cuda"
    if setting.compile is True and hooked_blocks and not user_compiled:
        raise ValueError(
            "compile=True: the transformer blocks carry offload hooks (sequential or group offload), which a "
            "full-graph block compile cannot trace; use compile='auto' (eager under such offload) or model offload"
        )
    if user_compiled or reference_arithmetic or setting.compile is False:
        compile = False
    elif setting.compile is True:
        compile = True
    else:
        compile = cuda and not hooked_blocks and not context_parallel

    backend = setting.attention_backend
    if backend not in (None, AUTO) and user_backend and user_backend != backend:
        raise ValueError(
            f"attention_backend={backend!r}: the user already set an attention backend on this transformer "
            "(transformer.set_attention_backend), which the pipeline never overrides; call "
            "pipe.transformer.reset_attention_backend() first or keep attention_backend='auto'"
        )
    if backend == AUTO:
        auto = cuda and not reference_arithmetic and not user_backend and not context_parallel and not process_backend
        backend = AUTO_ATTENTION_BACKENDS.get(tuple(capability), None) if auto and capability is not None else None
    return compile, backend


# ------------------------------------------------------------------------------------------------ inspection
def _blocks(transformer) -> list[torch.nn.Module]:
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    return [m for m in transformer.modules() if type(m).__name__ in names]


def _is_ours(module) -> bool:
    mark = module.__dict__.get(_MARK_COMPILED)
    return mark is not None and mark is module.__dict__.get("_compiled_call_impl")


def compiled_by_user(transformer) -> bool:
    """Whether anything of `transformer` was `torch.compile`d by someone else than the pipeline: the model itself
    (`OptimizedModule`, `.compile()`), a submodule's `.compile()` (e.g. `compile_repeated_blocks`), or a compiled
    function set as a module's `forward`."""
    if isinstance(transformer, torch._dynamo.eval_frame.OptimizedModule):
        return True
    for module in transformer.modules():
        if module.__dict__.get("_compiled_call_impl") is not None and not _is_ours(module):
            return True
        if hasattr(module.__dict__.get("forward"), "_torchdynamo_orig_callable"):
            return True
    return False


def _processors(transformer) -> list:
    from diffusers.models.attention import AttentionModuleMixin

    found = []
    for module in transformer.modules():
        processor = getattr(module, "processor", None) if isinstance(module, AttentionModuleMixin) else None
        if processor is not None and hasattr(processor, "_attention_backend"):
            found.append(processor)
    return found


def _backend_is_ours(processor) -> bool:
    mark = processor.__dict__.get(_MARK_BACKEND)
    return mark is not None and processor._attention_backend == mark


def backend_set_by_user(transformer) -> str | bool:
    """The attention backend the user chose for this transformer: set on its processors, not by the pipeline
    (`transformer.set_attention_backend`, `reset_attention_backend` takes it back). Its name when every such
    processor has the same one, True when they differ, False when none. diffusers' process-wide default is not
    read here (`process_backend_set`): `set_attention_backend` on another model also sets it."""
    processors = _processors(transformer)
    users = {p._attention_backend for p in processors if p._attention_backend is not None and not _backend_is_ours(p)}
    if not users:
        return False
    return str(getattr(next(iter(users)), "value", next(iter(users)))) if len(users) == 1 else True


def process_backend_set() -> bool:
    """Whether diffusers' process-wide attention backend (used by processors without one of their own) is not the
    native one: `DIFFUSERS_ATTN_BACKEND`, the `attention_backend(...)` context, or left by `set_attention_backend`."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    return AttentionBackendName(_AttentionBackendRegistry._active_backend) != AttentionBackendName.NATIVE


def blocks_carry_offload_hooks(transformer) -> bool:
    """Whether offload hooks (diffusers' hook registry, accelerate's `_hf_hook`) sit on or inside the blocks."""
    return any(carries_hooks(block) for block in _blocks(transformer))


def is_context_parallel(transformer) -> bool:
    return any(getattr(p, "_parallel_config", None) is not None for p in _processors(transformer))


def cuda_capability(device) -> tuple[int, int] | None:
    device = torch.device(device)
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------------ applying
def check_attention_backend(name: str | None) -> None:
    """`ValueError` naming `attention_backend` if the backend's package is missing."""
    if name is None or name == AUTO:
        return
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except RuntimeError as error:
        raise ValueError(f"attention_backend={name!r} cannot run here: {error}") from None


def apply_compile(transformer, compile: bool) -> None:
    """Compile the repeated blocks (full graph), or return the blocks the pipeline compiled to eager."""
    blocks = _blocks(transformer)
    ours = [b for b in blocks if _is_ours(b)]
    if compile and len(ours) < len(blocks):
        logger.info(f"compiling {len(blocks)} transformer blocks (first call is slower)")
        # The blocks trace whole (tests/test_acceleration.py counts no graph break), so fullgraph=False compiles the
        # same graphs; it only differs past dynamo's recompile limit (8 graphs per block code: batch 1 vs >1,
        # dtypes, models, first new sizes), where fullgraph=True raises FailOnRecompileLimitHit mid-call and this
        # runs the new shapes eager, with dynamo's warning.
        transformer.compile_repeated_blocks(fullgraph=False)
        for block in blocks:
            setattr(block, _MARK_COMPILED, block._compiled_call_impl)
    elif not compile:
        for block in ours:
            block._compiled_call_impl = None
            delattr(block, _MARK_COMPILED)


def apply_attention_backend(transformer, backend: str | None) -> None:
    """Set `backend` on the attention processors the user left alone (None: take back the pipeline's)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    value = None if backend is None else AttentionBackendName(backend)
    for processor in _processors(transformer):
        if processor._attention_backend is not None and not _backend_is_ours(processor):
            continue  # the user's
        if value is None:
            processor.__dict__.pop(_MARK_BACKEND, None)
            processor.__dict__.pop("_attention_backend", None)  # back to the class default (None)
        else:
            processor._attention_backend = value
            setattr(processor, _MARK_BACKEND, value)


def resolved_acceleration(transformer, setting: TransformerAcceleration, device, reference_arithmetic: bool):
    """`resolve_acceleration` for `transformer` as it is now (the user's compile, backend and hooks read from it),
    changing nothing: the pipelines call it before any model runs, so that what `accelerated` would refuse
    (ValueError) is refused first."""
    return resolve_acceleration(
        setting, device, reference_arithmetic, cuda_capability(device), compiled_by_user(transformer),
        backend_set_by_user(transformer), hooked_blocks=blocks_carry_offload_hooks(transformer),
        context_parallel=is_context_parallel(transformer), process_backend=process_backend_set(),
    )  # fmt: skip


@contextlib.contextmanager
def accelerated(transformer, setting: TransformerAcceleration, device, reference_arithmetic: bool):
    """Resolve and apply `setting` for a stage on `device`; a `reference_arithmetic` stage runs eager."""
    compiled = compiled_by_user(transformer)
    compile, backend = resolved_acceleration(transformer, setting, device, reference_arithmetic)
    if not compiled and not reference_arithmetic:
        apply_compile(transformer, compile)
    if setting.attention_backend == AUTO and backend is not None:
        try:
            check_attention_backend(backend)
        except ValueError as error:
            logger.warning(f"attention_backend='auto' keeps the native attention: {error}")
            backend = None
    check_attention_backend(backend)
    apply_attention_backend(transformer, backend)
    with torch.compiler.set_stance("force_eager") if reference_arithmetic else contextlib.nullcontext():
        yield
