"""A tiny random Gemma 3 text encoder + a locally built Gemma tokenizer, for demos and tests (no downloads).

Same classes as the real LTX-2 text stack (`Gemma3ForConditionalGeneration`, `GemmaTokenizer`), so everything
that loads the real `text_encoder/` and `tokenizer/` folders with `from_pretrained` loads these too.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GemmaTokenizer,
    SiglipVisionConfig,
)


__all__ = ["DEFAULT_VOCAB_WORDS", "build_tiny_gemma3", "build_tiny_gemma_tokenizer", "tiny_gemma3_dims"]

#: Words that get a token of their own (with and without a leading space); anything else is split into characters
#: (a-z, A-Z, 0-9, punctuation) or UTF-8 byte tokens, as Gemma does with its byte fallback.
DEFAULT_VOCAB_WORDS = (
    "a", "an", "the", "and", "of", "in", "on", "with", "at", "to", "is", "are",
    "man", "woman", "person", "dog", "cat", "bird", "car", "street", "city", "room", "forest", "beach", "sea",
    "sings", "talks", "speaks", "plays", "walks", "runs", "dances", "guitar", "piano", "music", "song", "voice",
    "camera", "slowly", "close", "up", "shot", "light", "night", "day", "red", "blue", "green", "bright", "dark",
)  # fmt: skip

_SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
_CHARACTERS = (
    "▁" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "0123456789" + ".,;:!?'\"-()/&%+*=_#@"
)


def _bpe(piece: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    tokens = list(piece)
    while len(tokens) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(tokens, tokens[1:])) if p in ranks]
        if not pairs:
            break
        _, i = min(pairs)
        tokens[i : i + 2] = [tokens[i] + tokens[i + 1]]
    return tokens


def build_tiny_gemma_tokenizer(vocab_words: Sequence[str] = DEFAULT_VOCAB_WORDS) -> GemmaTokenizer:
    """A byte-fallback BPE `GemmaTokenizer` (Gemma special-token ids, BOS added) with a small local vocabulary."""
    if isinstance(vocab_words, str) or not all(isinstance(w, str) and w and " " not in w for w in vocab_words):
        raise ValueError("vocab_words must be a sequence of non-empty strings without spaces")
    vocab: dict[str, int] = {}
    for token in (*_SPECIAL_TOKENS, *(f"<0x{i:02X}>" for i in range(256)), *_CHARACTERS):
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in vocab_words:
        for piece in (word, "▁" + word):
            for char in piece:
                vocab.setdefault(char, len(vocab))
            # Add merges until BPE (lowest-rank pair first) turns the piece into one token.
            while len(tokens := _bpe(piece, ranks)) > 1:
                pair = (tokens[0], tokens[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def tiny_gemma3_dims(connectors_config: Mapping | object) -> dict[str, int]:
    """`{"hidden_size", "num_hidden_layers"}` that feed an `LTX2TextConnectors` config (dict or config object):
    hidden size = `caption_channels`, layers = `text_proj_in_factor - 1` (the embedding output is a hidden state)."""
    get = connectors_config.get if isinstance(connectors_config, Mapping) else connectors_config.__getattribute__
    try:
        hidden, states = int(get("caption_channels")), int(get("text_proj_in_factor"))
    except (AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"connectors_config needs caption_channels and text_proj_in_factor ({e})") from None
    if states < 2:
        raise ValueError(f"connectors_config text_proj_in_factor must be >= 2, got {states}")
    return {"hidden_size": hidden, "num_hidden_layers": states - 1}


def build_tiny_gemma3(
    path: str | os.PathLike,
    *,
    hidden_size: int = 48,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    head_dim: int = 16,
    intermediate_size: int = 64,
    sliding_window: int = 16,
    vocab_words: Sequence[str] = DEFAULT_VOCAB_WORDS,
    seed: int = 0,
    torch_dtype: torch.dtype = torch.float32,
) -> pathlib.Path:
    """Write a random `Gemma3ForConditionalGeneration` to `path/text_encoder` and its tokenizer to `path/tokenizer`.

    Produces `num_hidden_layers + 1` hidden states of width `hidden_size` (match them to the connectors with
    :func:`tiny_gemma3_dims`). Layers alternate sliding-window / global attention with Gemma 3's RoPE settings
    (local theta 1e4, global 1e6 with linear factor 8); a one-layer SigLIP tower keeps the class complete.
    Weights are drawn from a forked RNG seeded with `seed` (the global RNG is untouched). Returns `path`.
    """
    for name, value in (
        ("hidden_size", hidden_size),
        ("num_hidden_layers", num_hidden_layers),
        ("num_attention_heads", num_attention_heads),
        ("num_key_value_heads", num_key_value_heads),
        ("head_dim", head_dim),
        ("intermediate_size", intermediate_size),
        ("sliding_window", sliding_window),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads or head_dim % 2:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads}), which "
            f"must be divisible by num_key_value_heads ({num_key_value_heads}); head_dim ({head_dim}) must be even"
        )
    if not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"torch_dtype must be a torch.dtype, got {torch_dtype!r}")

    tokenizer = build_tiny_gemma_tokenizer(vocab_words)
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL_TOKENS}
    text_config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=4096,
        sliding_window=sliding_window,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_hidden_layers)],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        },
        pad_token_id=special["<pad>"],
        eos_token_id=special["<eos>"],
        bos_token_id=special["<bos>"],
    )
    vision_config = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=4,
        boi_token_index=special["<start_of_image>"],
        eoi_token_index=special["<end_of_image>"],
        image_token_index=special["<image_soft_token>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3ForConditionalGeneration(config)
    model = model.to(torch_dtype).eval()

    root = pathlib.Path(path)
    model.save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    return root
