"""LTX-2 attention: weights in `LTX2AVAttention`, computation in `LTX2AVAttnProcessor` via `dispatch_attention_fn`."""

from __future__ import annotations

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn

from .rope import apply_rotary_emb


class LTX2AVAttnProcessor:
    """q/k RMSNorm over the full inner dim, RoPE on q and k, attention, optional per-head gate, output projection.

    `keep` (shape `(B, 1, 1)`, 1 = attend, 0 = perturbed) blends the attention output with the value projection
    per batch item (`out * keep + v * (1 - keep)`); `value_only=True` skips q/k and attention entirely (every item
    perturbed). Both are the reference's skip-self-attention perturbation.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "LTX2AVAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        query_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        keep: torch.Tensor | None = None,
        value_only: bool = False,
    ) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        value = attn.to_v(context)
        if value_only:
            out = value
        else:
            query = attn.norm_q(attn.to_q(hidden_states))
            key = attn.norm_k(attn.to_k(context))
            if query_rotary_emb is not None:
                query = apply_rotary_emb(query, query_rotary_emb, attn.rope_type)
                key_emb = query_rotary_emb if key_rotary_emb is None else key_rotary_emb
                key = apply_rotary_emb(key, key_emb, attn.rope_type)
            out = dispatch_attention_fn(
                query.unflatten(2, (attn.heads, -1)),
                key.unflatten(2, (attn.heads, -1)),
                value.unflatten(2, (attn.heads, -1)),
                attn_mask=attention_mask,
                dropout_p=0.0,
                is_causal=False,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
            out = out.flatten(2, 3).to(value.dtype)
            if keep is not None:
                out = out * keep + value * (1 - keep)
        if attn.to_gate_logits is not None:
            gates = 2.0 * torch.sigmoid(attn.to_gate_logits(hidden_states))  # (B, T, heads)
            out = (out.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))


class LTX2AVAttention(torch.nn.Module, AttentionModuleMixin):
    """Attention weights with diffusers' `LTX2Attention` parameter names (`to_q/k/v`, `norm_q/k`, `to_out.0`,
    optional `to_gate_logits`)."""

    _default_processor_cls = LTX2AVAttnProcessor
    _available_processors = [LTX2AVAttnProcessor]

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        bias: bool = True,
        out_bias: bool = True,
        norm_eps: float = 1e-6,
        norm_elementwise_affine: bool = True,
        rope_type: str = "interleaved",
        apply_gated_attention: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.heads = heads
        self.head_dim = dim_head
        self.inner_dim = inner_dim
        self.query_dim = query_dim
        self.cross_attention_dim = context_dim
        self.rope_type = rope_type
        self.norm_q = torch.nn.RMSNorm(inner_dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.norm_k = torch.nn.RMSNorm(inner_dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.to_q = torch.nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = torch.nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = torch.nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = torch.nn.ModuleList(
            [torch.nn.Linear(inner_dim, query_dim, bias=out_bias), torch.nn.Dropout(0.0)]
        )
        self.to_gate_logits = torch.nn.Linear(query_dim, heads, bias=True) if apply_gated_attention else None
        self.set_processor(self._default_processor_cls())

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        query_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        keep: torch.Tensor | None = None,
        value_only: bool = False,
    ) -> torch.Tensor:
        return self.processor(
            self,
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            query_rotary_emb,
            key_rotary_emb,
            keep=keep,
            value_only=value_only,
        )
