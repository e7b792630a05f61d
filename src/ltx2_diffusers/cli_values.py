"""What the flags of `ltx2-a2v` and `ltx2-av` accept: their defaults (ltx-pipelines' LTX-2.3 parameters) and their
value types (argparse `type=` parsers and `action=` classes that refuse a bad value with the flag's name). The flag
groups themselves and their checks are in `cli_common`, which re-exports every name here.
"""

from __future__ import annotations

import argparse
import math

from .loaders.distilled_lora import DEFAULT_DISTILLED_LORA_SCALE


# ltx-pipelines' LTX_2_3_PARAMS with the two-stage output size.
DEFAULT_SEED = 10
MAX_SEED = 2**63 - 1  # `--seed` is in [0, MAX_SEED] (torch.Generator.manual_seed takes any int64)
DEFAULT_HEIGHT = 1024
DEFAULT_WIDTH = 1536
DEFAULT_NUM_FRAMES = 121
DEFAULT_FRAME_RATE = 24.0
DEFAULT_NUM_INFERENCE_STEPS = 30
DEFAULT_CFG_SCALE = 3.0
DEFAULT_STG_SCALE = 1.0
DEFAULT_RESCALE_SCALE = 0.7
DEFAULT_MODALITY_SCALE = 3.0
DEFAULT_STG_BLOCKS = (28,)
DEFAULT_SKIP_STEP = 0
DEFAULT_LORA_STRENGTH = 1.0  # `--lora PATH` without a strength, as the reference CLI
# ltx-pipelines' LTX-2.3 audio guider.
DEFAULT_AUDIO_GUIDANCE = {
    "audio_cfg_guidance_scale": 7.0,
    "audio_stg_guidance_scale": 1.0,
    "audio_rescale_scale": 0.7,
    "v2a_guidance_scale": 3.0,
    "audio_skip_step": 0,
    "audio_stg_blocks": [28],
}
DEFAULT_IMAGE_CRF = 33
OFFLOAD_MODES = ("none", "model", "sequential", "group")
QUANTIZATION_POLICIES = ("fp8-cast", "fp8-scaled-mm")
DTYPES = ("bfloat16", "float16", "float32")
VIDEO_GUIDANCE_FLAGS = {  # attribute -> MultiModalGuidance field
    "video_cfg_guidance_scale": "cfg_scale",
    "video_stg_guidance_scale": "stg_scale",
    "video_rescale_scale": "rescale_scale",
    "a2v_guidance_scale": "modality_scale",
    "video_stg_blocks": "stg_blocks",
    "video_skip_step": "skip_step",
}
AUDIO_GUIDANCE_FLAGS = {
    "audio_cfg_guidance_scale": "cfg_scale",
    "audio_stg_guidance_scale": "stg_scale",
    "audio_rescale_scale": "rescale_scale",
    "v2a_guidance_scale": "modality_scale",
    "audio_stg_blocks": "stg_blocks",
    "audio_skip_step": "skip_step",
}


# ---------------------------------------------------------------------------------------------------- values
def _parse(action, kind, text, name, what):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentError(action, f"{name} must be {what}, got {text!r}") from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    """`--seed`: an integer in [0, MAX_SEED]."""
    value = _non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63 - 1 = {MAX_SEED}], got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _frame_count(text: str) -> int:
    """An `8k + 1` frame count."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 8k + 1 (9, 17, ..., 121), got {text!r}") from None
    if value < 1 or (value - 1) % 8:
        raise argparse.ArgumentTypeError(f"must be 8k + 1 (9, 17, ..., 121), got {value}")
    return value


def _sigmas(text: str) -> tuple:
    """`1,0.9,0.7,0` -> a falling sigma table of finite numbers in [0, 1] ending in 0."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated sigmas such as 1,0.725,0.42,0, got {text!r}")
    values = tuple(_finite(part) for part in parts)
    if len(values) < 2 or values[-1] != 0.0:
        raise argparse.ArgumentTypeError(f"expected at least two sigmas ending in 0, got {text!r}")
    if any(not 0.0 <= v <= 1.0 for v in values) or any(a <= b for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"sigmas must fall strictly from at most 1 to 0, got {text!r}")
    return values


class _ImageAction(argparse.Action):
    """`--image PATH FRAME STRENGTH [CRF]`, repeatable; appends `(path, frame, strength, crf)`."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (3, 4):
            raise argparse.ArgumentError(self, f"expects PATH FRAME STRENGTH [CRF], got {len(values)} values")
        path, frame, strength = values[:3]
        frame = _parse(self, int, frame, "FRAME", "an integer")
        strength = _parse(self, float, strength, "STRENGTH", "a number")
        crf = _parse(self, int, values[3], "CRF", "an integer") if len(values) == 4 else DEFAULT_IMAGE_CRF
        if frame < 0:
            raise argparse.ArgumentError(self, f"FRAME must be >= 0, got {frame}")
        if not 0.0 <= strength <= 1.0:
            raise argparse.ArgumentError(self, f"STRENGTH must be in [0, 1], got {strength}")
        if not 0 <= crf <= 51:
            raise argparse.ArgumentError(self, f"CRF must be in [0, 51] (0 = no H.264 round trip), got {crf}")
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((path, frame, strength, crf))
        setattr(namespace, self.dest, items)


class _LoraAction(argparse.Action):
    """`--distilled-lora PATH [STRENGTH]` (stores `(path, strength)`) and `--lora PATH [STRENGTH]` (repeatable:
    appends)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .validation import check_lora_strength

        if len(values) not in (1, 2):
            raise argparse.ArgumentError(self, f"expects PATH [STRENGTH], got {len(values)} values")
        strength = _parse(self, float, values[1], "STRENGTH", "a number") if len(values) == 2 else None
        if strength is not None:
            try:
                check_lora_strength("STRENGTH", strength)
            except ValueError as error:
                raise argparse.ArgumentError(self, str(error)) from None
        if self.dest == "lora":
            items = list(getattr(namespace, self.dest, None) or [])
            items.append((values[0], DEFAULT_LORA_STRENGTH if strength is None else strength))
            setattr(namespace, self.dest, items)
        else:
            setattr(namespace, self.dest, (values[0], DEFAULT_DISTILLED_LORA_SCALE if strength is None else strength))


class _QuantizationAction(argparse.Action):
    """`--quantization POLICY [AMAX_PATH]` (as the reference): stores the policy; the amax calibration file of
    `fp8-scaled-mm` goes to `quantization_amax_path`."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (1, 2):
            raise argparse.ArgumentError(self, f"expects POLICY [AMAX_PATH], got {len(values)} values")
        if values[0] not in QUANTIZATION_POLICIES:
            raise argparse.ArgumentError(
                self, f"invalid choice: {values[0]!r} (choose from {', '.join(QUANTIZATION_POLICIES)})"
            )
        if len(values) == 2 and values[0] != "fp8-scaled-mm":
            raise argparse.ArgumentError(self, f"{values[0]} takes no AMAX_PATH")
        setattr(namespace, self.dest, values[0])
        setattr(namespace, "quantization_amax_path", values[1] if len(values) == 2 else None)
