"""Prompt enhancement: the Gemma text encoder rewrites a short prompt into a detailed one (ltx-pipelines'
``generate_enhanced_prompt`` / ltx-core's ``GemmaTextEncoder.enhance_t2v`` and ``enhance_i2v``).

The system prompts are this package's copies of the reference's text (``prompts/*.txt``). Sampling is seeded and
leaves the global RNG as it was: ``do_sample=True``, temperature 0.7, the model's other generation defaults.
"""

from __future__ import annotations

import functools
import math
import numbers
import pathlib

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging


logger = logging.get_logger(__name__)

_PROMPTS = pathlib.Path(__file__).parent / "prompts"
SYSTEM_PROMPT_FILES = {"text": "text_to_video_system_prompt.txt", "image": "image_to_video_system_prompt.txt"}
IMAGE_LONG_SIDE = 896  # the reference resizes the image to this long side before the processor
TEMPERATURE = 0.7
_ALIGNMENT = 8  # the reference right-pads the chat to a multiple of 8 tokens (attention mask 0 there)
_QUOTES = str.maketrans("\u2018\u2019\u201c\u201d\u2014\u2013\u00a0\u2032\u2212", "''\"\"-- '-")


@functools.lru_cache(maxsize=2)
def system_prompt(kind: str) -> str:
    """The system prompt for ``kind`` "text" (text-to-video) or "image" (image-to-video)."""
    if kind not in SYSTEM_PROMPT_FILES:
        raise ValueError(f"kind must be one of {tuple(SYSTEM_PROMPT_FILES)}, got {kind!r}")
    return (_PROMPTS / SYSTEM_PROMPT_FILES[kind]).read_text(encoding="utf-8")


def chat_messages(prompt: str, with_image: bool) -> list[dict]:
    """The chat the reference sends: the system prompt, then the user's prompt (after an image slot)."""
    if not with_image:
        return [
            {"role": "system", "content": system_prompt("text")},
            {"role": "user", "content": f"user prompt: {prompt}"},
        ]
    return [
        {"role": "system", "content": system_prompt("image")},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": f"User Raw Input Prompt: {prompt}."}],
        },
    ]


def clean_response(text: str) -> str:
    """Straight quotes and dashes for typographic ones; drop what precedes the first letter."""
    text = text.translate(_QUOTES)
    for i, char in enumerate(text):
        if char.isalpha():
            return text[i:]
    return text


def _image_tensor(image) -> torch.Tensor:
    """``image`` (PIL image, HWC uint8 array or tensor) as an RGB ``(H, W, 3)`` uint8 tensor."""
    if isinstance(image, PIL.Image.Image):
        array = np.array(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        array = image
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
    else:
        raise TypeError(f"image must be a PIL image, a numpy array or a tensor, got {type(image).__name__}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] < 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"image must be (H, W, 3) uint8, got {array.dtype} {tuple(array.shape)}")
    return torch.from_numpy(np.ascontiguousarray(array[..., :3]))


def resize_long_side(image: torch.Tensor, long_side: int = IMAGE_LONG_SIDE) -> torch.Tensor:
    """``(H, W, 3)`` uint8 resized (bilinear, on the uint8 values) so its long side is ``long_side``, aspect kept
    up to a centre crop of the ceil-rounded size, as the reference prepares the enhancer's image."""
    height, width = image.shape[:2]
    scale = long_side / float(max(height, width))
    target_h, target_w = int(height * scale), int(width * scale)
    fill = max(target_h / height, target_w / width)
    new_h, new_w = math.ceil(height * fill), math.ceil(width * fill)
    chw = image.permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(chw, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    return resized[0, :, top : top + target_h, left : left + target_w].permute(1, 2, 0).to(torch.uint8)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def _pad_to_alignment(inputs: dict, pad_token_id: int) -> dict:
    length = inputs["input_ids"].shape[1]
    extra = -length % _ALIGNMENT
    if extra:
        for key, value in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if inputs.get(key) is not None:
                pad = torch.full((1, extra), value, dtype=inputs[key].dtype, device=inputs[key].device)
                inputs[key] = torch.cat([inputs[key], pad], dim=1)
    return inputs


@torch.no_grad()
def enhance_prompt(
    text_encoder,
    tokenizer,
    prompt: str,
    image=None,
    *,
    processor=None,
    seed: int = 42,
    max_new_tokens: int = 512,
) -> str:
    """Rewrite ``prompt`` with the Gemma text encoder (a ``Gemma3ForConditionalGeneration``) and the reference's
    system prompt; returns the cleaned text.

    Args:
        text_encoder: the pipeline's Gemma 3 model (with its language-model head).
        tokenizer: its tokenizer; must carry Gemma's chat template.
        prompt: the user's prompt (non-empty).
        image: optional conditioning image (PIL image or ``(H, W, 3)`` uint8 array/tensor): the image-to-video
            system prompt is used and the image, resized to a long side of 896, goes to the model.
        processor: a ``Gemma3Processor`` (tokenizer + image processor of the Gemma folder); needed with ``image``.
            Without an image the tokenizer alone prepares the chat, as the processor does for text.
        seed: sampling seed (the reference's default for pipelines is 42); the global RNG is restored afterwards.
        max_new_tokens: the most tokens generated (the reference's 512).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    seed = _check_int("seed", seed, 0)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
    if not hasattr(text_encoder, "generate"):
        raise TypeError(f"text_encoder must be a generative Gemma model, got {type(text_encoder).__name__}")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("tokenizer has no chat template; prompt enhancement needs the Gemma tokenizer's template")
    if image is not None and processor is None:
        raise ValueError("enhancing with an image needs processor= (the Gemma folder's Gemma3Processor)")
    pixels = None if image is None else resize_long_side(_image_tensor(image))

    messages = chat_messages(prompt, with_image=pixels is not None)
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    device = text_encoder.device
    if pixels is None:
        encoded = tokenizer(chat, return_tensors="pt")
        inputs = {key: encoded[key].to(device) for key in ("input_ids", "attention_mask")}
        inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])  # no image tokens
    else:
        encoded = processor(text=chat, images=pixels, return_tensors="pt").to(device)
        inputs = dict(encoded)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inputs = _pad_to_alignment(inputs, pad_token_id)
    prompt_length = inputs["input_ids"].shape[1]

    with torch.random.fork_rng(devices=[device] if device.type != "cpu" else []):
        torch.manual_seed(seed)
        output = text_encoder.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=TEMPERATURE
        )
    text = tokenizer.decode(output[0][prompt_length:], skip_special_tokens=True)
    enhanced = clean_response(text)
    logger.info("Enhanced prompt: %s", enhanced)
    return enhanced
