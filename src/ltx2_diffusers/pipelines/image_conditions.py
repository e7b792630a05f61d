"""Image conditions pinned to video frames, prepared as the reference pipelines prepare them."""

from __future__ import annotations

import io
import math
import numbers
import os
from dataclasses import dataclass, replace
from typing import Any

import av
import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging

from ..validation import check_holds_values


logger = logging.get_logger(__name__)

DEFAULT_IMAGE_CRF = 33
# Bounds on a condition image, checked when the conditions are validated (before any encoding): each side at most
# MAX_CONDITION_IMAGE_SIDE pixels (libx264's limit for the crf round trip; 16384 x 12288 is 200 MP), and the long side
# at most MAX_CONDITION_IMAGE_ASPECT times the short one (panoramas pass; a 2 x 20000 strip would be upscaled to cover
# the frame, a 64 x 640000 intermediate for a 64 x 64 video).
MAX_CONDITION_IMAGE_SIDE = 16384
MAX_CONDITION_IMAGE_ASPECT = 16


@dataclass(frozen=True)
class LTX2ImageCondition:
    """`image` (path, PIL image, or `(H, W)` / `(H, W, 3|4)` numpy array or torch tensor, channels last: uint8,
    uint16 or float in [0, 1]; channels-first `(3, H, W)` tensors are refused) pinned to pixel frame `frame_index`.

    `strength` 1.0 keeps the frame's latent clean, 0.0 leaves it free. Frame 0 replaces the first latent frame;
    other frames are appended as keyframe tokens. `crf`: the image is first passed through one H.264 frame at this
    quality (as the reference does, so it looks like a video frame); 0 disables that. The image is at least 2x2,
    each side at most `MAX_CONDITION_IMAGE_SIDE` (16384) pixels, aspect ratio at most `MAX_CONDITION_IMAGE_ASPECT`
    (16:1 either way).
    """

    image: Any
    frame_index: int = 0
    strength: float = 1.0
    crf: int = DEFAULT_IMAGE_CRF


def condition_list(conditions) -> list:
    """`conditions` as a list: None is none, one condition (an `LTX2ImageCondition` or a tuple) is one."""
    if conditions is None:
        return []
    if isinstance(conditions, (LTX2ImageCondition, tuple)):
        return [conditions]
    if not isinstance(conditions, list):
        raise TypeError(
            "conditions must be None, an LTX2ImageCondition, an (image, frame_index, strength[, crf]) tuple or a "
            f"list of them, got {type(conditions).__name__}"
        )
    return list(conditions)


def normalize_conditions(conditions, num_frames: int | None, check_images: bool = True) -> list[LTX2ImageCondition]:
    """Validate `conditions` (objects or `(image, frame_index, strength[, crf])` tuples); `ValueError`s name them.
    `check_images` also reads each image (cheap) so that an unreadable one is refused before any encoding."""
    result = []
    for i, condition in enumerate(condition_list(conditions)):
        if isinstance(condition, tuple):
            if not 2 <= len(condition) <= 4:
                raise ValueError(
                    f"conditions[{i}] must be (image, frame_index, strength[, crf]), got a tuple of {len(condition)}"
                )
            condition = LTX2ImageCondition(*condition)
        if not isinstance(condition, LTX2ImageCondition):
            raise TypeError(
                f"conditions[{i}] must be an LTX2ImageCondition or a tuple, got {type(condition).__name__}"
            )
        for field in ("frame_index", "strength", "crf"):
            if isinstance(getattr(condition, field), bool):
                raise TypeError(
                    f"conditions[{i}].{field} must be a number, not a bool ({getattr(condition, field)!r})"
                )
        # numpy / other integral and real scalars are read as the Python numbers they hold
        condition = replace(
            condition,
            frame_index=_as_python_number(condition.frame_index, numbers.Integral, int),
            strength=_as_python_number(condition.strength, numbers.Real, float),
            crf=_as_python_number(condition.crf, numbers.Integral, int),
        )
        if not isinstance(condition.frame_index, int) or condition.frame_index < 0:
            raise ValueError(
                f"conditions[{i}].frame_index must be a non-negative integer, got {condition.frame_index!r}"
            )
        if num_frames is not None and condition.frame_index >= num_frames:
            raise ValueError(
                f"conditions[{i}].frame_index {condition.frame_index} is out of range for {num_frames} frames"
            )
        if not isinstance(condition.strength, (int, float)) or not 0.0 <= condition.strength <= 1.0:
            raise ValueError(f"conditions[{i}].strength must be in [0, 1], got {condition.strength!r}")
        if isinstance(condition.crf, bool) or not isinstance(condition.crf, int) or not 0 <= condition.crf <= 51:
            raise ValueError(f"conditions[{i}].crf must be an integer in [0, 51] (0 = none), got {condition.crf!r}")
        if check_images:
            try:  # readable, at least 2x2, a supported dtype / range: found before any audio or text encoding
                _as_rgb(condition.image)
            except (TypeError, ValueError) as error:
                raise type(error)(f"conditions[{i}]: {error}") from None
        result.append(condition)
    return result


def check_first_frame_image(image, image_strength) -> None:
    """The image-to-audio-video pipeline's `image` and `image_strength` (its frame-0 condition), checked as
    `normalize_conditions` checks a condition, the messages naming those two arguments."""
    if isinstance(image_strength, bool):
        raise TypeError(f"image_strength must be a number, not a bool ({image_strength!r})")
    strength = _as_python_number(image_strength, numbers.Real, float)
    if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"image_strength must be in [0, 1], got {image_strength!r}")
    if isinstance(image, (list, tuple)):
        raise TypeError(
            f"image must be one image (the first frame), got a {type(image).__name__}; pin images to other frames "
            "with conditions"
        )
    try:
        _as_rgb(image)
    except (TypeError, ValueError) as error:
        raise type(error)(f"image: {error}") from None


def _as_python_number(value, kind, cast):
    return cast(value) if isinstance(value, kind) and not isinstance(value, (bool, int, float)) else value


# PIL modes holding more than 8 bits per sample, and the full-scale value of each (read at their true range).
_HIGH_BIT_DEPTH_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def _open_image(path) -> PIL.Image.Image:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"condition image {path!r} does not exist")
    try:
        image = PIL.Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"condition image {path!r} cannot be read as an image: {error}") from None
    return image


def _high_bit_depth(image: PIL.Image.Image, name: str) -> np.ndarray | None:
    """`(H, W)` float32 in [0, 255] (8-bit units) for 16-bit / 32-bit integer and float PIL modes, else None.

    `I;16*` are 16-bit (0..65535). `I` (32-bit integer, what 16-bit grayscale files become through some readers)
    is read as 16-bit too and refused outside 0..65535. `F` (float TIFF) is read as [0, 1]: NaN / inf refused,
    values outside clipped with a warning."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image).astype(np.float64)
        full = _HIGH_BIT_DEPTH_MODES[image.mode]
        if values.size and (values.min() < 0 or values.max() > full):
            raise ValueError(
                f"{name}: mode {image.mode!r} values span [{values.min():g}, {values.max():g}]; expected 16-bit "
                f"samples in [0, {full:g}]"
            )
        return (values * (255.0 / full)).astype(np.float32)
    if image.mode == "F":
        values = np.asarray(image).astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: the float image holds NaN or infinite pixels")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            logger.warning(f"{name}: float pixels span [{values.min():g}, {values.max():g}]; clipping to [0, 1]")
        return np.clip(values, 0.0, 1.0) * 255.0
    return None


def _check_size(height: int, width: int, name: str) -> None:
    """At least 2x2, each side at most `MAX_CONDITION_IMAGE_SIDE`, aspect ratio at most `MAX_CONDITION_IMAGE_ASPECT`."""
    if height < 2 or width < 2:
        raise ValueError(f"{name} must be at least 2x2 pixels, got {width}x{height}")
    if max(height, width) > MAX_CONDITION_IMAGE_SIDE:
        raise ValueError(
            f"{name} is {width}x{height} pixels; each side must be at most {MAX_CONDITION_IMAGE_SIDE} (downscale it)"
        )
    if max(height, width) > MAX_CONDITION_IMAGE_ASPECT * min(height, width):
        raise ValueError(
            f"{name} is {width}x{height} pixels, an aspect ratio above {MAX_CONDITION_IMAGE_ASPECT}:1; crop it "
            "closer to the video's shape first"
        )


def _as_rgb(image) -> np.ndarray:
    """`(H, W, 3)` RGB at its true range: uint8 for 8-bit sources, float32 in [0, 255] for higher bit depths.

    `image`: a path, a PIL image (any mode: 16-bit `I;16` / `I` and float `F` grayscale are read at full
    precision, palette / CMYK / LA / ... go through `convert("RGB")`), or an `(H, W)` / `(H, W, 3|4)` numpy array
    or torch tensor, channels last: uint8, uint16 (0..65535) or float in [0, 1] (channels-first tensors refused)."""
    name, gray = "a condition image", None
    if isinstance(image, (str, os.PathLike)):
        name = f"condition image {os.fspath(image)!r}"
        image = _open_image(image)
    if isinstance(image, PIL.Image.Image):
        _check_size(image.height, image.width, name)  # before any conversion
        gray = _high_bit_depth(image, name)  # float32 in 8-bit units, or None
        image = np.array(image.convert("RGB")) if gray is None else gray  # palette, CMYK, LA, ... -> RGB
    if isinstance(image, torch.Tensor):
        check_holds_values(name, image)
        image = image.detach()
        if image.is_floating_point() and image.dtype not in (torch.float16, torch.float32, torch.float64):
            image = image.float()  # bfloat16 / float8: exact in float32, which numpy can hold
        image = image.cpu().numpy()
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise TypeError(
            "a condition image must be a path, a PIL image, or an (H, W) / (H, W, 3|4) numpy array or torch tensor "
            f"(channels last), got {type(image).__name__ if not isinstance(image, np.ndarray) else image.shape}"
        )
    if image.ndim == 3 and image.shape[-1] not in (3, 4):
        raise TypeError(
            f"a condition image array or tensor must be (H, W, 3) or (H, W, 4) (channels last), got shape "
            f"{tuple(image.shape)}; a channels-first (3, H, W) tensor is not read: pass image.permute(1, 2, 0)"
        )
    _check_size(image.shape[0], image.shape[1], name)  # before any conversion
    if image.dtype == np.uint16:
        image = image.astype(np.float32) * (255.0 / 65535.0)
    elif image.dtype in (np.float16, np.float64) or (image.dtype == np.float32 and gray is None):
        if not np.isfinite(image).all():
            raise ValueError(f"{name}: the float array holds NaN or infinite values")
        if image.size and (image.min() < 0.0 or image.max() > 1.0):
            raise ValueError(f"{name}: a float array must lie in [0, 1], got [{image.min():g}, {image.max():g}]")
        image = image.astype(np.float32) * 255.0
    elif image.dtype not in (np.uint8, np.float32):
        raise TypeError(f"a condition image array must be uint8, uint16 or float in [0, 1], got {image.dtype}")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _through_h264(image: np.ndarray, crf: int) -> np.ndarray:
    """One-frame H.264 round trip (libx264, `crf`, preset veryfast, yuv420p, cropped to even size)."""
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width = height, width
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
        container.mux(stream.encode(frame.reformat(format="yuv420p")))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def prepare_condition_image(image, height: int, width: int, crf: int = DEFAULT_IMAGE_CRF) -> torch.Tensor:
    """`(1, 3, 1, height, width)` float32 in [-1, 1]: aspect-preserving bilinear resize to cover, centre crop.

    8-bit images give exactly the reference's values; 16-bit and float images are read at their true range
    (a 16-bit PNG and its 8-bit twin differ by at most one 8-bit step)."""
    pixels = _as_rgb(image)
    if crf:  # H.264 carries 8 bits: higher bit depths are rounded to them first
        if pixels.dtype != np.uint8:
            pixels = np.rint(np.clip(pixels, 0.0, 255.0)).astype(np.uint8)
        pixels = _through_h264(pixels, crf)
    tensor = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]
    src_h, src_w = tensor.shape[-2:]
    scale = max(height / src_h, width / src_w)
    new_h, new_w = math.ceil(src_h * scale), math.ceil(src_w * scale)
    tensor = torch.nn.functional.interpolate(tensor, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    tensor = tensor[:, :, top : top + height, left : left + width]
    return (tensor / 127.5 - 1.0).unsqueeze(2)
