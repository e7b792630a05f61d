"""Every attention of the transformer goes through diffusers' dispatcher: a backend registered in diffusers'
registry (a recorder standing in for `_native_math`) sees every call, under `attention_backend(...)` and under
`set_attention_backend`, and what it returns is what the model uses."""

import pytest
import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, attention_backend
from test_transformer_diffusers_interop import forward_kwargs, randomize_, tiny_diffusers_config

from ltx2_diffusers import LTX2AudioVideoTransformer


NAME = AttentionBackendName._NATIVE_MATH


@pytest.fixture
def recorder(monkeypatch):
    """Registers a recording backend under `_native_math` (diffusers' registry), restored after the test, and
    restores the process-wide active backend (which `set_attention_backend` also sets)."""
    original = _AttentionBackendRegistry._backends[NAME]
    active = _AttentionBackendRegistry._active_backend
    calls = []
    state = {"scale": 1.0}

    def recording_backend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        calls.append((tuple(query.shape), tuple(key.shape), tuple(value.shape)))
        out = original(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs
        )
        return out * state["scale"]

    monkeypatch.setitem(_AttentionBackendRegistry._backends, NAME, recording_backend)
    try:
        yield calls, state
    finally:
        _AttentionBackendRegistry.set_active_backend(active)


@pytest.fixture(scope="module")
def model():
    return randomize_(LTX2AudioVideoTransformer(**tiny_diffusers_config("2.3"))).eval()


def _attention_modules(model):
    return [m for m in model.modules() if isinstance(m, AttentionModuleMixin)]


def test_attention_backend_context_routes_every_attention(model, recorder):
    calls, state = recorder
    kwargs = forward_kwargs(model)
    with torch.no_grad():
        default = model(**kwargs)
        assert calls == []  # the default backend is not the recorder
        with attention_backend(NAME.value):
            routed = model(**kwargs)
        n = len(calls)
        # one call per attention module (self, text cross, audio self, audio text cross, a2v, v2a per block)
        modules = len(_attention_modules(model))
        assert n == modules == 6 * model.config.num_layers, f"{n} dispatched calls for {modules} attention modules"
        heads = {model.config.num_attention_heads, model.config.audio_num_attention_heads}
        assert all(q[2] in heads and q[0] == 2 for q, _, _ in calls)  # (B, T, heads, head_dim) as dispatched
        for a, b in zip(routed, default):
            assert (a - b).abs().max().item() <= 1e-5
        # What the backend returns is what the model uses: a backend with other numerics changes the output.
        state["scale"] = 0.5
        with attention_backend(NAME.value):
            changed = model(**kwargs)
        assert len(calls) == 2 * n
        assert max((a - b).abs().max().item() for a, b in zip(changed, default)) > 1e-3


def test_set_attention_backend_routes_every_attention(model, recorder):
    calls, _ = recorder
    kwargs = forward_kwargs(model)
    active = _AttentionBackendRegistry._active_backend
    try:
        model.set_attention_backend(NAME.value)
        assert all(m.processor._attention_backend == NAME for m in _attention_modules(model))
        with torch.no_grad():
            model(**kwargs)
    finally:  # diffusers also makes the backend process-wide: reset both
        model.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(active)
    modules = len(_attention_modules(model))
    assert len(calls) == modules == 6 * model.config.num_layers, f"{len(calls)} dispatched calls, {modules} modules"
    calls.clear()
    with torch.no_grad():
        model(**kwargs)
    assert calls == []  # reset: back to the default backend
