"""One dual-stream LTX-2 block: video and audio self-attention, text cross-attention, audio<->video
cross-attention and feed-forward, with diffusers' `LTX2VideoTransformerBlock` parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward

from .attention import LTX2AVAttention
from .modulation import block_modulation, cross_modal_modulation, text_cross_attention_modulation
from .perturbations import NO_PERTURBATION, BlockPerturbation, add_to_items, take_items


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class LTX2AVTransformerBlock(torch.nn.Module):
    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        cross_attention_dim: int,
        audio_dim: int,
        audio_num_attention_heads: int,
        audio_attention_head_dim: int,
        audio_cross_attention_dim: int,
        video_gated_attn: bool = False,
        video_cross_attn_adaln: bool = False,
        audio_gated_attn: bool = False,
        audio_cross_attn_adaln: bool = False,
        activation_fn: str = "gelu-approximate",
        attention_bias: bool = True,
        attention_out_bias: bool = True,
        eps: float = 1e-6,
        rope_type: str = "interleaved",
        ff_bias: bool = True,
        audio_ff_bias: bool = True,
    ):
        super().__init__()
        self.eps = eps
        self.video_cross_attn_adaln = video_cross_attn_adaln
        self.audio_cross_attn_adaln = audio_cross_attn_adaln

        def attention(query_dim, heads, head_dim, context_dim, gated):
            return LTX2AVAttention(
                query_dim,
                heads,
                head_dim,
                cross_attention_dim=context_dim,
                bias=attention_bias,
                out_bias=attention_out_bias,
                norm_eps=eps,
                rope_type=rope_type,
                apply_gated_attention=gated,
            )

        self.attn1 = attention(dim, num_attention_heads, attention_head_dim, None, video_gated_attn)
        self.audio_attn1 = attention(
            audio_dim, audio_num_attention_heads, audio_attention_head_dim, None, audio_gated_attn
        )
        self.attn2 = attention(dim, num_attention_heads, attention_head_dim, cross_attention_dim, video_gated_attn)
        self.audio_attn2 = attention(
            audio_dim, audio_num_attention_heads, audio_attention_head_dim, audio_cross_attention_dim, audio_gated_attn
        )
        # Both cross-modal attentions use the audio head geometry.
        self.audio_to_video_attn = attention(
            dim, audio_num_attention_heads, audio_attention_head_dim, audio_dim, video_gated_attn
        )
        self.video_to_audio_attn = attention(
            audio_dim, audio_num_attention_heads, audio_attention_head_dim, dim, audio_gated_attn
        )
        self.ff = FeedForward(dim, activation_fn=activation_fn, bias=ff_bias)
        self.audio_ff = FeedForward(audio_dim, activation_fn=activation_fn, bias=audio_ff_bias)

        self.scale_shift_table = torch.nn.Parameter(torch.randn(9 if video_cross_attn_adaln else 6, dim) / dim**0.5)
        self.audio_scale_shift_table = torch.nn.Parameter(
            torch.randn(9 if audio_cross_attn_adaln else 6, audio_dim) / audio_dim**0.5
        )
        if video_cross_attn_adaln or audio_cross_attn_adaln:
            self.prompt_scale_shift_table = torch.nn.Parameter(torch.randn(2, dim))
            self.audio_prompt_scale_shift_table = torch.nn.Parameter(torch.randn(2, audio_dim))
        self.video_a2v_cross_attn_scale_shift_table = torch.nn.Parameter(torch.randn(5, dim))
        self.audio_a2v_cross_attn_scale_shift_table = torch.nn.Parameter(torch.randn(5, audio_dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps)

    def _self_attention(self, attn, x, table_mod, rotary_emb, mask, perturbation: BlockPerturbation):
        out = attn(
            _modulate(self._norm(x), table_mod.scale_msa, table_mod.shift_msa),
            attention_mask=mask,
            query_rotary_emb=rotary_emb,
            keep=perturbation.keep,
            value_only=perturbation.skip_all,
        )
        return x + out * table_mod.gate_msa

    def _text_attention(self, attn, x, context, context_mask, adaln, table, temb, prompt_table, temb_prompt):
        if not adaln:
            return x + attn(self._norm(x), context, attention_mask=context_mask)
        mod = text_cross_attention_modulation(table, temb, prompt_table, temb_prompt)
        query = _modulate(self._norm(x), mod.scale_q, mod.shift_q)
        context = _modulate(context, mod.scale_kv, mod.shift_kv)
        return x + attn(query, context, attention_mask=context_mask) * mod.gate

    def _cross_modal(self, attn, x, query, key, query_rotary_emb, key_rotary_emb, perturbation: BlockPerturbation):
        """`x` plus the gated audio<->video cross-attention update (`query`: normed x, scale, shift, gate; `key`:
        the other modality's normed states, scale, shift); for the items `perturbation` keeps only, where known."""
        items, batch = perturbation.kept, x.shape[0]
        (q_norm, q_scale, q_shift, gate), (k_norm, k_scale, k_shift) = take_items((query, key), items, batch)
        update = attn(
            _modulate(q_norm, q_scale, q_shift),
            _modulate(k_norm, k_scale, k_shift),
            query_rotary_emb=take_items(query_rotary_emb, items, batch),
            key_rotary_emb=take_items(key_rotary_emb, items, batch),
        )
        update = update * gate
        if items is not None:  # the other items' keep is 0: they get no update
            return add_to_items(x, update, items)
        return x + (update if perturbation.keep is None else update * perturbation.keep)

    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        audio_encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        temb_audio: torch.Tensor,
        temb_ca_scale_shift: torch.Tensor,
        temb_ca_audio_scale_shift: torch.Tensor,
        temb_ca_gate: torch.Tensor,
        temb_ca_audio_gate: torch.Tensor,
        temb_prompt: torch.Tensor | None = None,
        temb_prompt_audio: torch.Tensor | None = None,
        video_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        audio_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ca_video_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ca_audio_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        audio_encoder_attention_mask: torch.Tensor | None = None,
        self_attention_mask: torch.Tensor | None = None,
        video_self_perturbation: BlockPerturbation = NO_PERTURBATION,
        audio_self_perturbation: BlockPerturbation = NO_PERTURBATION,
        a2v_perturbation: BlockPerturbation = NO_PERTURBATION,
        v2a_perturbation: BlockPerturbation = NO_PERTURBATION,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vx, ax = hidden_states, audio_hidden_states
        video_mod = block_modulation(self.scale_shift_table, temb)
        audio_mod = block_modulation(self.audio_scale_shift_table, temb_audio)

        # 1-2. Self-attention and text cross-attention, video then audio.
        vx = self._self_attention(
            self.attn1, vx, video_mod, video_rotary_emb, self_attention_mask, video_self_perturbation
        )
        vx = self._text_attention(
            self.attn2,
            vx,
            encoder_hidden_states,
            encoder_attention_mask,
            self.video_cross_attn_adaln,
            self.scale_shift_table,
            temb,
            getattr(self, "prompt_scale_shift_table", None),
            temb_prompt,
        )
        ax = self._self_attention(self.audio_attn1, ax, audio_mod, audio_rotary_emb, None, audio_self_perturbation)
        ax = self._text_attention(
            self.audio_attn2,
            ax,
            audio_encoder_hidden_states,
            audio_encoder_attention_mask,
            self.audio_cross_attn_adaln,
            self.audio_scale_shift_table,
            temb_audio,
            getattr(self, "audio_prompt_scale_shift_table", None),
            temb_prompt_audio,
        )

        # 3. Audio<->video cross-attention; both directions read the norms taken before either update. Where a
        # direction is skipped for some items only (the isolated-modality item of a batched guidance step), it is
        # computed for the other items only.
        run_a2v, run_v2a = not a2v_perturbation.skip_all, not v2a_perturbation.skip_all
        if run_a2v or run_v2a:
            vn, an = self._norm(vx), self._norm(ax)
            video_ca = cross_modal_modulation(
                self.video_a2v_cross_attn_scale_shift_table, temb_ca_scale_shift, temb_ca_gate
            )
            audio_ca = cross_modal_modulation(
                self.audio_a2v_cross_attn_scale_shift_table, temb_ca_audio_scale_shift, temb_ca_audio_gate
            )
            if run_a2v:
                vx = self._cross_modal(
                    self.audio_to_video_attn, vx, (vn, video_ca.scale_a2v, video_ca.shift_a2v, video_ca.gate),
                    (an, audio_ca.scale_a2v, audio_ca.shift_a2v), ca_video_rotary_emb, ca_audio_rotary_emb,
                    a2v_perturbation,
                )  # fmt: skip
            if run_v2a:
                ax = self._cross_modal(
                    self.video_to_audio_attn, ax, (an, audio_ca.scale_v2a, audio_ca.shift_v2a, audio_ca.gate),
                    (vn, video_ca.scale_v2a, video_ca.shift_v2a), ca_audio_rotary_emb, ca_video_rotary_emb,
                    v2a_perturbation,
                )  # fmt: skip

        # 4. Feed-forward.
        vx = vx + self.ff(_modulate(self._norm(vx), video_mod.scale_mlp, video_mod.shift_mlp)) * video_mod.gate_mlp
        ax = (
            ax
            + self.audio_ff(_modulate(self._norm(ax), audio_mod.scale_mlp, audio_mod.shift_mlp)) * audio_mod.gate_mlp
        )
        return vx, ax
