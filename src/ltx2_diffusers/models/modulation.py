"""AdaLN-single timestep embeddings and named modulation rows of the LTX-2 blocks."""

from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers.models.embeddings import PixArtAlphaCombinedTimestepSizeEmbeddings


class AdaLayerNormSingle(torch.nn.Module):
    """`linear(silu(emb(t)))` with `num_mod_params * dim` outputs, plus the embedding itself.

    The sinusoidal projection is float32 ([cos, sin], 256 channels) and is cast to `hidden_dtype` before the MLP.
    """

    def __init__(self, embedding_dim: int, num_mod_params: int = 6):
        super().__init__()
        self.num_mod_params = num_mod_params
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(embedding_dim, size_emb_dim=embedding_dim // 3)
        self.silu = torch.nn.SiLU()
        self.linear = torch.nn.Linear(embedding_dim, num_mod_params * embedding_dim, bias=True)

    def forward(
        self, timestep: torch.Tensor, batch_size: int, hidden_dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`timestep` of any shape with `batch_size` leading elements -> `(B, N, k*D)` and `(B, N, D)`."""
        embedded = self.emb(timestep.flatten(), None, None, None, hidden_dtype=hidden_dtype)
        modulation = self.linear(self.silu(embedded))
        return modulation.view(batch_size, -1, modulation.shape[-1]), embedded.view(batch_size, -1, embedded.shape[-1])


def modulation_rows(table: torch.Tensor, temb: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, ...]:
    """Rows `start:stop` of `table + temb` where `temb` is `(B, N, rows*D)`; each returned row is `(B, N, D)`."""
    batch, tokens = temb.shape[:2]
    rows = temb.view(batch, tokens, table.shape[0], -1)[:, :, start:stop]
    return (table[start:stop][None, None].to(device=temb.device, dtype=temb.dtype) + rows).unbind(dim=2)


class BlockModulation(NamedTuple):
    shift_msa: torch.Tensor
    scale_msa: torch.Tensor
    gate_msa: torch.Tensor
    shift_mlp: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor


class TextCrossAttentionModulation(NamedTuple):
    """LTX-2.3 text cross-attention modulation: query shift/scale, output gate and context shift/scale."""

    shift_q: torch.Tensor
    scale_q: torch.Tensor
    gate: torch.Tensor
    shift_kv: torch.Tensor
    scale_kv: torch.Tensor


class CrossModalModulation(NamedTuple):
    """Audio<->video cross-attention modulation of one modality (rows 0-1 a2v, 2-3 v2a, 4 gate)."""

    scale_a2v: torch.Tensor
    shift_a2v: torch.Tensor
    scale_v2a: torch.Tensor
    shift_v2a: torch.Tensor
    gate: torch.Tensor


def block_modulation(table: torch.Tensor, temb: torch.Tensor) -> BlockModulation:
    return BlockModulation(*modulation_rows(table, temb, 0, 6))


def text_cross_attention_modulation(
    table: torch.Tensor, temb: torch.Tensor, prompt_table: torch.Tensor, temb_prompt: torch.Tensor | None
) -> TextCrossAttentionModulation:
    shift_q, scale_q, gate = modulation_rows(table, temb, 6, 9)
    if temb_prompt is None:  # timestep-independent context modulation (no prompt AdaLN)
        shift_kv, scale_kv = prompt_table[None, None].to(device=temb.device, dtype=temb.dtype).unbind(dim=2)
    else:
        shift_kv, scale_kv = modulation_rows(prompt_table, temb_prompt, 0, 2)
    return TextCrossAttentionModulation(shift_q, scale_q, gate, shift_kv, scale_kv)


def cross_modal_modulation(
    table: torch.Tensor, temb_scale_shift: torch.Tensor, temb_gate: torch.Tensor
) -> CrossModalModulation:
    scale_shift = modulation_rows(table[:4], temb_scale_shift, 0, 4)
    (gate,) = modulation_rows(table[4:], temb_gate, 0, 1)
    return CrossModalModulation(*scale_shift, gate)
