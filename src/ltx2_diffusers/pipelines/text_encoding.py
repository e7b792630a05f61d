"""Prompt encoding for LTX-2: Gemma 3 hidden states (diffusers' `LTX2Pipeline` convention) and the text connectors.

`encode_prompt_features` gives the features BEFORE the connectors, `(B, T, hidden * num_hidden_states)` with every
hidden state stacked on a last axis and flattened, plus the tokenizer's attention mask (left padding to
`max_sequence_length`); `connect_prompt` turns them into the video / audio contexts the transformer attends to.
"""

from __future__ import annotations

import inspect

import torch
from diffusers.utils import logging


logger = logging.get_logger(__name__)


def _as_prompt_list(prompt) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        if not prompt:
            raise ValueError("prompt must not be an empty list")
        return list(prompt)
    raise TypeError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")


@torch.no_grad()
def encode_prompt_features(
    tokenizer,
    text_encoder,
    prompt: str | list[str],
    *,
    max_sequence_length: int = 1024,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(prompt_embeds, attention_mask)` for `prompt`: `(B, T, hidden * num_hidden_states)` and `(B, T)` int64.

    Prompts are stripped and tokenized with BOS, left padding (pad = eos if the tokenizer has no pad token; it is
    set on the tokenizer, as diffusers and ltx-core do) and truncation to `max_sequence_length` tokens.
    `text_encoder` runs with `output_hidden_states=True` (and `logits_to_keep=1` where supported); all hidden states
    (embedding output first) are stacked on a last axis and flattened, i.e. feature index `d * L + l`. Same values
    as diffusers' `LTX2Pipeline._get_gemma_prompt_embeds` and ltx-core's Gemma encoder. `device` defaults to the
    text encoder's device, `dtype` to its dtype. Runs without autograd.
    """
    prompts = [p.strip() for p in _as_prompt_list(prompt)]
    if not isinstance(max_sequence_length, int) or isinstance(max_sequence_length, bool) or max_sequence_length < 1:
        raise ValueError(f"max_sequence_length must be a positive int, got {max_sequence_length!r}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
    if not isinstance(text_encoder, torch.nn.Module):
        raise TypeError(f"text_encoder must be a torch module, got {type(text_encoder).__name__}")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a callable tokenizer, got {type(tokenizer).__name__}")
    first = next(text_encoder.parameters(), None)
    device = torch.device(device) if device is not None else getattr(text_encoder, "device", None) or first.device
    dtype = dtype or getattr(text_encoder, "dtype", None) or first.dtype

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        padding_side="left",
        return_tensors="pt",
    )
    input_ids = inputs.input_ids.to(device)
    attention_mask = inputs.attention_mask.to(device)

    # Call the top-level module so that offload hooks attached to it run; the hidden states do not depend on the
    # LM head, so ask for the logits of one position only (a full row is vocab x T per prompt).
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "output_hidden_states": True}
    parameters = inspect.signature(text_encoder.forward).parameters
    if "logits_to_keep" in parameters:
        kwargs["logits_to_keep"] = 1
    if "use_cache" in parameters:
        kwargs["use_cache"] = False
    outputs = text_encoder(**kwargs)
    hidden_states = outputs.hidden_states
    if not hidden_states:
        raise ValueError(f"{type(text_encoder).__name__} returned no hidden states")
    prompt_embeds = torch.stack(hidden_states, dim=-1).flatten(2, 3).to(dtype=dtype)
    return prompt_embeds, attention_mask


def connect_prompt(
    connectors, prompt_embeds: torch.Tensor, attention_mask: torch.Tensor, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(video_context, audio_context)`: the `LTX2TextConnectors` outputs the transformer attends to.

    `prompt_embeds` `(B, T, hidden * num_hidden_states)` (or `(B, T, hidden, num_hidden_states)`) and the
    left-padded `(B, T)` mask from :func:`encode_prompt_features`; features are cast to the connectors' dtype and
    moved to `device` (default: where `prompt_embeds` are).
    The connectors move valid tokens to the front and fill the rest with learned registers, so the contexts need no
    text mask downstream (the reference passes none).
    """
    if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim not in (3, 4):
        raise ValueError(
            "prompt_embeds must be a (batch, tokens, features) or (batch, tokens, hidden, states) tensor, got "
            f"{tuple(prompt_embeds.shape) if isinstance(prompt_embeds, torch.Tensor) else type(prompt_embeds).__name__}"
        )
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(prompt_embeds.shape[:2]):
        raise ValueError(
            f"attention_mask must be a (batch, tokens) = {tuple(prompt_embeds.shape[:2])} tensor, got "
            f"{tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__}"
        )
    config = connectors.config
    expected = config.caption_channels * config.text_proj_in_factor
    features = prompt_embeds.shape[2] * (prompt_embeds.shape[3] if prompt_embeds.ndim == 4 else 1)
    if features != expected:
        raise ValueError(
            f"prompt_embeds has {features} features per token but the connectors expect {expected} "
            f"(caption_channels {config.caption_channels} x text_proj_in_factor {config.text_proj_in_factor})"
        )
    if ((attention_mask != 0) & (attention_mask != 1)).any() or (attention_mask[:, 1:] < attention_mask[:, :-1]).any():
        raise ValueError("attention_mask must be a binary left-padding mask (zeros, then ones, in every row)")
    # `device` is where the connectors compute (the pipeline's execution device); under offloading their weights
    # live elsewhere and `connectors.device` may even be `meta`.
    device = prompt_embeds.device if device is None else torch.device(device)
    prompt_embeds = prompt_embeds.to(device=device, dtype=connectors.dtype)
    attention_mask = attention_mask.to(device=device)
    video_context, audio_context, _ = connectors(prompt_embeds, attention_mask, padding_side="left")
    return video_context, audio_context
