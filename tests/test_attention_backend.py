"""Attention goes through diffusers' dispatcher: `attention_backend(...)` and `set_attention_backend` apply."""

import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend
from test_transformer_diffusers_interop import forward_kwargs, randomize_, tiny_diffusers_config

from ltx2_diffusers import LTX2AudioVideoTransformer


def test_attention_backends_give_same_output():
    model = randomize_(LTX2AudioVideoTransformer(**tiny_diffusers_config("2.3"))).eval()
    kwargs = forward_kwargs(model)
    active = _AttentionBackendRegistry.get_active_backend()
    with torch.no_grad():
        expected = model(**kwargs)
        with attention_backend("_native_math"):
            in_context = model(**kwargs)
        try:
            model.set_attention_backend("_native_math")
            assert model.transformer_blocks[0].attn1.processor._attention_backend.value == "_native_math"
            configured = model(**kwargs)
        finally:  # diffusers also sets the process-wide active backend: restore it for the other tests
            model.reset_attention_backend()
            _AttentionBackendRegistry.set_active_backend(active[0] if isinstance(active, tuple) else active)
    for out in (in_context, configured):
        for a, b in zip(out, expected):
            assert (a - b).abs().max().item() <= 1e-5
