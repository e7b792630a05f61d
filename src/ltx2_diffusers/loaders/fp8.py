"""float8 LTX-2 transformers: pre-quantised checkpoints, ltx-core's fp8-cast, and upcast-at-compute linears.

Two fp8 layouts exist for the transformer's block linears (`transformer_blocks.*.{to_q,to_k,to_v,to_out.0}`,
`*ff.net.0.proj`, `*ff.net.2`):

- cast-only: `float8_e4m3fn` weights (and biases) holding the values themselves (ltx-core's `fp8-cast` policy
  produces this at load; some released files store it). Upcasting is exact.
- scaled: `float8_e4m3fn` weights `[out, in]` with a per-tensor float32 `weight_scale` (and an `input_scale` used only
  by TensorRT-LLM's scaled matmul); the real weight is `W.float() * weight_scale`.

Applying `fp8-cast` to a file that is already fp8 is refused here: ltx-core loads it without the scales and
silently computes with the wrong weights.
"""

from __future__ import annotations

import math
import os
import re
import types
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from diffusers.utils import logging

from .single_file import load_component_state_dict, load_state_dict_strict, read_checkpoint_config


logger = logging.get_logger(__name__)

__all__ = [
    "FP8_CAST_PATTERN",
    "Fp8CheckpointPlan",
    "attach_fused_lora",
    "check_fp8_conversion",
    "check_scales_saved",
    "detach_fused_lora",
    "enable_fp8_scaled_mm",
    "enable_fp8_upcast",
    "fp8_cast_state_dict",
    "fused_lora_fp8_weight",
    "is_fp8_cast_target",
    "is_scaled_mm_linear",
    "load_fp8_transformer",
    "load_transformer_from_single_file",
]

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_TRANSFORMER_PREFIX = "model.diffusion_model."
#: Transformer keys (original or our naming: both keep these parts) that ltx-core's fp8-cast stores in float8.
FP8_CAST_PATTERN = re.compile(
    r"^(?:model\.diffusion_model\.)?transformer_blocks\.\d+\..*(?:\.to_q|\.to_k|\.to_v|\.to_out\.0|ff\.net\.0\.proj|ff\.net\.2)\.(?:weight|bias)$"
)
_SCALE_SUFFIXES = (".weight_scale", ".input_scale")


def is_fp8_cast_target(key: str) -> bool:
    """Whether ltx-core's fp8-cast policy stores `key` (a transformer weight/bias) in float8."""
    return FP8_CAST_PATTERN.match(key) is not None


@dataclass
class Fp8CheckpointPlan:
    """How a conversion treats float8: which tensors are float8, scaled, folded or downcast."""

    fp8_keys: list[str]
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # weight key -> its float32 weight_scale
    folded: list[str] = field(default_factory=list)  # scale keys consumed by dequantisation
    cast: bool = False  # fp8-cast: downcast the targets of a bf16/fp16/fp32 file

    @property
    def output_is_fp8(self) -> bool:
        return self.cast or (bool(self.fp8_keys) and not self.scales)

    def output_dtype(self, key: str, source: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
        if self.cast and is_fp8_cast_target(key):
            return torch.float8_e4m3fn
        if not source.is_floating_point or requested is None:
            return source
        return requested

    def transform(self, key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The output tensor for source `key`: dequantised (scaled fp8), downcast (fp8-cast) or plainly cast."""
        if key in self.scales:
            return (tensor.to(torch.float32) * self.scales[key]).to(dtype)
        return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _fp8_summary(keys: list[str]) -> str:
    return f"{len(keys)} float8 tensors, e.g. {keys[:3]}"


def check_fp8_conversion(checkpoint, dtype: torch.dtype | None, fp8_cast: bool = False) -> Fp8CheckpointPlan | None:
    """The fp8 plan of a conversion, or None when neither the file nor the request involves float8.

    `checkpoint` is the converter's header reader (`.entries`: key -> (dtype, shape, start, end); `.read(key, f)`).
    Raises `ValueError` for fp8-cast on a file that is already float8, for scaled fp8 without a target `dtype`,
    and for scale tensors without their weight.
    """
    entries = checkpoint.entries
    fp8_keys = sorted(k for k, e in entries.items() if e[0] in FP8_DTYPES)
    scale_keys = sorted(k for k in entries if k.startswith(_TRANSFORMER_PREFIX) and k.endswith(_SCALE_SUFFIXES))
    if fp8_cast:
        if fp8_keys or scale_keys:
            raise ValueError(
                f"fp8_cast was requested but {os.fspath(checkpoint.path)!r} is already quantised "
                f"({_fp8_summary(fp8_keys)}{', with per-tensor scales' if scale_keys else ''}); casting it again "
                "would drop the scales and compute with wrong weights (ltx-core does so silently). Convert it "
                "without fp8_cast (kept as float8, or dequantised with dtype=...)."
            )
        return Fp8CheckpointPlan(fp8_keys=[], cast=True)
    if not fp8_keys and not scale_keys:
        return None
    plan = Fp8CheckpointPlan(fp8_keys=fp8_keys)
    weight_scales = [k for k in scale_keys if k.endswith(".weight_scale")]
    orphans = [k for k in weight_scales if k[: -len("_scale")] not in entries]
    if orphans:
        raise ValueError(f"scale tensors without their weight in {os.fspath(checkpoint.path)!r}: {orphans[:10]}")
    if weight_scales:
        if dtype is None:
            raise ValueError(
                f"{os.fspath(checkpoint.path)!r} holds scaled float8 weights ({len(weight_scales)} weight_scale "
                "tensors); a diffusers folder cannot carry the scales, so pass dtype (bfloat16, float16 or "
                "float32) to dequantise them"
            )
        with open(checkpoint.path, "rb") as handle:
            for key in weight_scales:
                scale = checkpoint.read(key, handle).to(torch.float32)
                if scale.numel() != 1:
                    raise ValueError(f"{key!r} is not a per-tensor scale (shape {tuple(scale.shape)})")
                plan.scales[key[: -len("_scale")]] = scale.reshape(())
    plan.folded = scale_keys
    return plan


# ------------------------------------------------------------------------------------------------ model side
def _upcast_linear_forward(self, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight.to(x.dtype)
    scale = getattr(self, "fp8_weight_scale", None)
    if scale is not None:
        weight = weight * scale.to(x.dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, weight, bias)


def enable_fp8_upcast(model: torch.nn.Module, scales: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """Keep float8 linear weights in float8 and upcast them to the input dtype at every call (ltx-core's fp8-cast
    compute: `F.linear(x, W.to(x.dtype), b.to(x.dtype))`). `scales` (module name -> per-tensor scale) makes the
    upcast `W.to(x.dtype) * scale` for scaled fp8 weights; they are non-persistent buffers (not saved).
    Returns the names of the patched linears."""
    scales = dict(scales or {})
    patched = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype in FP8_DTYPES:
            if name in scales:
                module.register_buffer("fp8_weight_scale", scales.pop(name).to(torch.float32), persistent=False)
            module.forward = types.MethodType(_upcast_linear_forward, module)
            patched.append(name)
    if scales:
        raise ValueError(f"scales given for modules without float8 weights: {sorted(scales)[:10]}")
    return patched


FP8_E4M3_MAX = 448.0
#: Block linears (our names, PEFT's `.base_layer` stripped) whose matmuls `enable_fp8_scaled_mm` runs in float8.
_SCALED_MM_PATTERN = re.compile(
    r"^transformer_blocks\.\d+\..*(?:\.to_q|\.to_k|\.to_v|\.to_out\.0|ff\.net\.0\.proj|ff\.net\.2)$"
)


def _quantize(x: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x_fp8, scale)` with `x ≈ x_fp8.float() * scale`: per row (`(rows, 1)` scales) or per tensor (scalar).
    ltx-core's quantiser (`quantize_weight_to_fp8_per_tensor`): `clamp(x * (448 / amax)).to(float8_e4m3fn)`, the
    scale being `(448 / amax).reciprocal()`; per row, the same with each row's amax. An all-zero row or tensor gets
    a finite scale (its amax is taken as 1e-12)."""
    x = x.float()
    low, high = torch.aminmax(x, dim=-1, keepdim=True) if rowwise else torch.aminmax(x)
    amax = torch.maximum(high, -low)  # max |x| in one pass over x (no |x| temporary)
    inverse = FP8_E4M3_MAX / amax.clamp(min=1e-12)
    scaled = x * inverse
    return scaled.clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn), inverse.reciprocal()


def fused_lora_fp8_weight(
    linear: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(W'_fp8, W'_scale)` of a linear patched by `enable_fp8_scaled_mm` with the LoRA `(A, B)` at `scale` fused
    in, as ltx-core fuses a LoRA into scaled float8 weights (`_fp8_scaled_mm_fuse` in 1.2.0, the same arithmetic
    in 1.0): `delta = (B * scale) @ A` in bfloat16 (the factors cast first), `W = W_fp8.float() * W_scale +
    delta` in float32, then requantised with fresh scales of the layer's granularity (`_quantize`; ltx-core has
    per-tensor scales only). The layer's own weight and scale are not touched; the result is a temporary."""
    weight, weight_scale, rowwise = linear.weight, linear.fp8_weight_scale, linear.fp8_rowwise
    delta = torch.matmul(b.to(weight.device, torch.bfloat16) * scale, a.to(weight.device, torch.bfloat16))
    fused = weight.float().mul_(weight_scale.reshape(-1, 1) if rowwise else weight_scale).add_(delta)
    del delta
    fused_fp8, fused_scale = _quantize(fused, rowwise)
    return fused_fp8, fused_scale.reshape(1, -1) if rowwise else fused_scale


def _scaled_mm_linear_forward(self, x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    x_fp8, x_scale = _quantize(rows, self.fp8_rowwise)
    weight, weight_scale = self.weight, self.fp8_weight_scale
    if self.fp8_fused_lora is not None:  # the pipeline's distilled LoRA (stage 2), fused per call
        weight, weight_scale = fused_lora_fp8_weight(self, *self.fp8_fused_lora)
    out = torch._scaled_mm(
        x_fp8,
        weight.t(),
        scale_a=x_scale,
        scale_b=weight_scale,
        bias=None if self.bias is None else self.bias.to(x.dtype),
        out_dtype=x.dtype,
    )
    return out.reshape(*x.shape[:-1], out.shape[-1])


def is_scaled_mm_linear(module: torch.nn.Module) -> bool:
    """Whether `module` is a linear patched by `enable_fp8_scaled_mm`."""
    return isinstance(module, torch.nn.Linear) and "fp8_rowwise" in module.__dict__


def check_scales_saved(model: torch.nn.Module, label: str) -> None:
    """`ValueError` naming `label` and the first such linear when `model` computes with float8 weight scales that
    `save_pretrained` does not write (non-persistent buffers): linears patched by `enable_fp8_scaled_mm`, or float8
    weights kept with their checkpoint scale (`fp8="upcast"` of a scaled float8 file). A folder saved so would load as
    the unscaled float8 values: silently wrong weights."""
    scaled_mm = [n for n, m in model.named_modules() if is_scaled_mm_linear(m)]
    if scaled_mm:
        raise ValueError(
            f"{label} runs float8 scaled matmuls (enable_fp8_scaled_mm: {scaled_mm[0]}, ...), whose weight scales are "
            "not saved; save before enable_fp8_scaled_mm, and apply it again after loading"
        )
    scaled = [n for n, m in model.named_modules() if getattr(m, "fp8_weight_scale", None) is not None]
    if scaled:
        raise ValueError(
            f"{label} holds float8 weights with their checkpoint scale ({scaled[0]}, ...: loaded with fp8='upcast' "
            "from a scaled float8 file), which save_pretrained does not write: the saved folder would load as wrong "
            "weights; to save, load the file with fp8='dequantize' (or convert it with the converter)"
        )


def attach_fused_lora(linear: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    """Until `detach_fused_lora`, the scaled-mm `linear` computes with `fused_lora_fp8_weight(linear, a, b, scale)`
    formed at every call (no second copy of the weights is kept). `ValueError` if it is not a scaled-mm linear,
    already carries a LoRA, or `scale` is not a finite number."""
    if not is_scaled_mm_linear(linear):
        raise ValueError(f"attach_fused_lora needs a linear patched by enable_fp8_scaled_mm, got {linear!r}")
    if linear.fp8_fused_lora is not None:
        raise ValueError("the float8 scaled-mm linear already carries a fused LoRA (applied twice?)")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"the fused LoRA scale must be a finite number, got {scale!r}")
    linear.fp8_fused_lora = (a, b, float(scale))


def detach_fused_lora(linear: torch.nn.Linear) -> None:
    """The scaled-mm `linear` computes with its own float8 weight again."""
    linear.fp8_fused_lora = None


def _scaled_mm_targets(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    targets = []
    for name, module in transformer.named_modules():
        plain = name[: -len(".base_layer")] if name.endswith(".base_layer") else name
        if isinstance(module, torch.nn.Linear) and _SCALED_MM_PATTERN.match(plain):
            targets.append((name, module))
    return targets


def _patch_scaled_mm(targets: list[tuple[str, torch.nn.Linear]], rowwise: bool) -> list[str]:
    """Quantise each target's weight to float8 (in place) and route its forward through `torch._scaled_mm`."""
    patched = []
    for name, module in targets:
        weight = module.weight.detach()
        if weight.dtype in FP8_DTYPES:  # fp8-cast weights: the values themselves (times a per-tensor scale, if any)
            weight = weight.float() * getattr(module, "fp8_weight_scale", torch.ones((), device=weight.device))
        w_fp8, w_scale = _quantize(weight, rowwise)
        module.weight = torch.nn.Parameter(w_fp8, requires_grad=False)
        module.register_buffer("fp8_weight_scale", w_scale.reshape(1, -1) if rowwise else w_scale, persistent=False)
        module.fp8_rowwise = rowwise
        module.fp8_fused_lora = None  # (A, B, scale) while a LoRA is attached (attach_fused_lora)
        module.forward = types.MethodType(_scaled_mm_linear_forward, module)
        patched.append(name)
    return patched


def enable_fp8_scaled_mm(transformer: torch.nn.Module, granularity: str = "row") -> list[str]:
    """Run the transformer blocks' linears (attention q/k/v/out, feed-forwards) as float8 matmuls on the GPU's
    float8 units through `torch._scaled_mm`: weights are quantised once to `float8_e4m3fn` (in place; the bf16
    weights are freed), activations at every call, each with `granularity` scales (`"row"`: one per output channel
    and one per token; `"tensor"`: one per tensor). Other layers stay in their dtype. A LoRA held by PEFT keeps
    working (its base layer is the patched linear); the pipeline's distilled LoRA is fused into a requantised
    float8 weight at every stage-2 call (`attach_fused_lora`), the stored weights staying as they are.

    Needs the model on a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); anything else is refused with a
    `ValueError` before any weight is touched. Returns the names of the patched linears.
    """
    if granularity not in ("row", "tensor"):
        raise ValueError(f"granularity must be 'row' or 'tensor', got {granularity!r}")
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(f"enable_fp8_scaled_mm needs a torch.nn.Module, got {type(transformer).__name__}")
    targets = _scaled_mm_targets(transformer)
    if not targets:
        raise ValueError("enable_fp8_scaled_mm found no transformer block linears (transformer_blocks.N...)")
    devices = {module.weight.device for _, module in targets}
    device = next(iter(devices))
    if len(devices) != 1 or device.type != "cuda":
        raise ValueError(
            "enable_fp8_scaled_mm needs the transformer's weights on one CUDA GPU (float8 matmuls run on the GPU's "
            f"float8 units), but they are on {sorted(str(d) for d in devices)}; move the model first (offloaded or "
            "CPU models cannot use it: use fp8 upcast instead)"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        raise ValueError(
            f"enable_fp8_scaled_mm needs a GPU with float8 matrix units (compute capability 8.9+, e.g. Ada or "
            f"Hopper); {torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}"
        )
    odd = [n for n, m in targets if m.in_features % 16 or m.out_features % 16]
    if odd:
        raise ValueError(f"float8 matmuls need in/out features divisible by 16; not so for {odd[:5]}")
    patched = _patch_scaled_mm(targets, rowwise=granularity == "row")
    logger.info("float8 scaled matmuls (%s scales) in %d linears", granularity, len(patched))
    return patched


def fp8_cast_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ltx-core's fp8-cast downcast of a transformer state dict (our names); `ValueError` if it is already fp8."""
    already = sorted(k for k, v in state_dict.items() if v.dtype in FP8_DTYPES)
    if already:
        raise ValueError(f"fp8_cast on a state dict that is already float8 ({_fp8_summary(already)})")
    return {k: v.to(torch.float8_e4m3fn) if is_fp8_cast_target(k) else v for k, v in state_dict.items()}


def load_transformer_from_single_file(
    path: str | os.PathLike,
    *,
    fp8: str = "upcast",
    fp8_cast: bool = False,
    torch_dtype: torch.dtype = torch.bfloat16,
):
    """`LTX2AudioVideoTransformer` from an original checkpoint, handling float8.

    - `fp8_cast=True`: downcast the block linears of a bf16/fp16/fp32 file to float8 (ltx-core's fp8-cast) and
      upcast them at compute; refused (`ValueError`) on a file that is already float8.
    - float8 files: `fp8="upcast"` keeps the float8 weights (scaled ones with their scale) and upcasts at compute;
      `fp8="dequantize"` turns them into `torch_dtype` (`W * weight_scale` for scaled weights).
    Every other tensor is cast to `torch_dtype`.
    """
    from ..convert import _SafetensorsFile
    from ..models.transformer_ltx2_av import LTX2AudioVideoTransformer
    from .single_file_transformer import TRANSFORMER_KEY_TABLE, transformer_config_from_original

    if fp8 not in ("upcast", "dequantize"):
        raise ValueError(f"fp8 must be 'upcast' or 'dequantize', got {fp8!r}")
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point or torch_dtype in FP8_DTYPES:
        raise TypeError(f"torch_dtype must be a floating torch.dtype (not float8), got {torch_dtype!r}")
    st = _SafetensorsFile(path)
    plan = check_fp8_conversion(st, torch_dtype, fp8_cast=fp8_cast)
    config, _ = read_checkpoint_config(path)
    state_dict = load_component_state_dict(path, TRANSFORMER_KEY_TABLE)
    scales = {}
    if plan is not None and plan.folded:
        origin = {TRANSFORMER_KEY_TABLE.map_key(k): k for k in plan.folded}
        for new in origin:
            state_dict.pop(new)
        scales = {TRANSFORMER_KEY_TABLE.map_key(k): v for k, v in plan.scales.items()}
    out = {}
    for key, tensor in state_dict.items():
        if fp8_cast and is_fp8_cast_target(key):
            out[key] = tensor.to(torch.float8_e4m3fn)
        elif tensor.dtype in FP8_DTYPES and fp8 == "upcast":
            out[key] = tensor
        elif key in scales:
            out[key] = (tensor.to(torch.float32) * scales[key]).to(torch_dtype)
        elif tensor.is_floating_point():
            out[key] = tensor.to(torch_dtype)
        else:
            out[key] = tensor
    with torch.device("meta"):
        model = LTX2AudioVideoTransformer.from_config(transformer_config_from_original(config["transformer"]))
    load_state_dict_strict(model, out, "transformer")
    kept_scales = {k[: -len(".weight")]: v for k, v in scales.items() if out[k].dtype in FP8_DTYPES}
    enable_fp8_upcast(model, kept_scales)
    return model.eval()


def load_fp8_transformer(
    folder: str | os.PathLike, subfolder: str | None = "transformer", torch_dtype: torch.dtype = torch.bfloat16
):
    """`LTX2AudioVideoTransformer` from a converted folder whose block linears are float8, kept in float8 and upcast
    at compute (diffusers' `from_pretrained` would upcast them all: use it with `torch_dtype` to dequantise).
    Every other tensor is cast to `torch_dtype`; keys are checked strictly."""
    import json

    from safetensors.torch import load_file

    from ..models.transformer_ltx2_av import LTX2AudioVideoTransformer

    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point or torch_dtype in FP8_DTYPES:
        raise TypeError(f"torch_dtype must be a floating torch.dtype (not float8), got {torch_dtype!r}")
    root = os.path.join(os.fspath(folder), subfolder) if subfolder else os.fspath(folder)
    config_path = os.path.join(root, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{root!r} has no config.json (not a converted transformer folder)")
    shards = sorted(f for f in os.listdir(root) if f.endswith(".safetensors"))
    if not shards:
        raise ValueError(f"{root!r} holds no .safetensors weights")
    state_dict = {}
    for name in shards:
        for key, tensor in load_file(os.path.join(root, name)).items():
            keep = tensor.dtype in FP8_DTYPES or not tensor.is_floating_point()
            state_dict[key] = tensor if keep else tensor.to(torch_dtype)
    with open(config_path) as f:
        config = json.load(f)
    with torch.device("meta"):
        model = LTX2AudioVideoTransformer.from_config(config)
    load_state_dict_strict(model, state_dict, "transformer")
    if not enable_fp8_upcast(model):
        logger.warning(f"{root!r} holds no float8 linear weights; nothing is kept in float8")
    return model.eval()
