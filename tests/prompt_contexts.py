"""Random post-connector prompt contexts for the tiny checkpoints (`factories.checkpoint_config`), shared by the
parity tests and benchmarks/pipeline_parity.py."""

import torch
from factories import checkpoint_config


def contexts(seed, version, tokens=32):
    """Post-connector contexts of `tokens` tokens: LTX-2.3 (4096/2048-like) or LTX-2 (caption_channels, projected
    inside)."""
    g = torch.Generator().manual_seed(seed)
    section = checkpoint_config(version)["transformer"]
    video_dim = section["num_attention_heads"] * section["attention_head_dim"]
    audio_dim = section["audio_num_attention_heads"] * section["audio_attention_head_dim"]
    if version == "2.0":
        video_dim = audio_dim = section["caption_channels"]
    return torch.randn(1, tokens, video_dim, generator=g), torch.randn(1, tokens, audio_dim, generator=g)
