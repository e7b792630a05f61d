"""Prompt features from a tiny Gemma 3 (diffusers' convention = ltx-core's encoder) and the text connectors."""

import copy
import os
from types import SimpleNamespace

import pytest
import torch
from diffusers.pipelines.ltx2.pipeline_ltx2 import LTX2Pipeline
from factories import TEXT_HIDDEN_SIZE, TEXT_NUM_HIDDEN_STATES, TEXT_SEQ_LEN, cached_checkpoint, load_reference
from ltx_core.text_encoders.gemma.encoders.base_encoder import GemmaTextEncoder
from ltx_core.text_encoders.gemma.tokenizer import LTXVGemmaTokenizer
from transformers import AutoTokenizer, Gemma3ForConditionalGeneration, GemmaTokenizer

from ltx2_diffusers.loaders.single_file_connectors import load_connectors_from_single_file
from ltx2_diffusers.pipelines.text_encoding import connect_prompt, encode_prompt_features
from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3, build_tiny_gemma_tokenizer, tiny_gemma3_dims


PROMPTS = ["  A man sings with a guitar on the street at night.  ", "dog", "Ünïcode & 42 words!"]
HIDDEN = TEXT_HIDDEN_SIZE * TEXT_NUM_HIDDEN_STATES


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    # The factories' tiny text width: 48 x 4 hidden states (embedding output + 3 layers).
    return build_tiny_gemma3(tmp_path_factory.mktemp("gemma"), hidden_size=TEXT_HIDDEN_SIZE, num_hidden_layers=3)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    text_encoder = Gemma3ForConditionalGeneration.from_pretrained(tiny_dir / "text_encoder").eval()
    return tokenizer, text_encoder


def _ltx_core_encoder(tiny_dir, text_encoder, max_length):
    return GemmaTextEncoder(model=text_encoder, tokenizer=LTXVGemmaTokenizer(str(tiny_dir / "tokenizer"), max_length))


def test_tiny_gemma_round_trip(tiny_dir, tiny):
    tokenizer, text_encoder = tiny
    assert isinstance(tokenizer, GemmaTokenizer) and isinstance(text_encoder, Gemma3ForConditionalGeneration)
    size = sum(f.stat().st_size for f in tiny_dir.rglob("*") if f.is_file())
    assert size < 5 * 2**20, size
    ids = tokenizer("a man sings").input_ids
    assert ids[0] == tokenizer.bos_token_id == text_encoder.config.text_config.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:]) == ["a", "▁man", "▁sings"]
    assert tokenizer.decode(tokenizer(PROMPTS[2]).input_ids, skip_special_tokens=True) == PROMPTS[2]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert len(tokenizer) == text_encoder.config.text_config.vocab_size
    assert text_encoder.config.text_config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    # Same seed, same weights; another seed, others.
    again = build_tiny_gemma3(tiny_dir.parent / "again", hidden_size=TEXT_HIDDEN_SIZE, num_hidden_layers=3)
    reloaded = Gemma3ForConditionalGeneration.from_pretrained(again / "text_encoder")
    for (name, a), b in zip(text_encoder.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_tiny_gemma_dims_follow_the_connectors(tmp_path):
    dims = tiny_gemma3_dims({"caption_channels": 32, "text_proj_in_factor": 3})
    assert dims == {"hidden_size": 32, "num_hidden_layers": 2}
    path = build_tiny_gemma3(tmp_path, **dims, seed=1)
    text_encoder = Gemma3ForConditionalGeneration.from_pretrained(path / "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    embeds, _ = encode_prompt_features(tokenizer, text_encoder, "cat", max_sequence_length=8)
    assert embeds.shape == (1, 8, 32 * 3)
    with pytest.raises(ValueError, match="text_proj_in_factor"):
        tiny_gemma3_dims({"caption_channels": 32})
    with pytest.raises(ValueError, match="hidden_size"):
        build_tiny_gemma3(tmp_path / "x", hidden_size=0)
    with pytest.raises(ValueError, match="num_attention_heads"):
        build_tiny_gemma3(tmp_path / "x", hidden_size=33)
    with pytest.raises(ValueError, match="vocab_words"):
        build_tiny_gemma_tokenizer(["two words"])


def test_features_shape_padding_and_mask(tiny):
    tokenizer, text_encoder = tiny
    embeds, mask = encode_prompt_features(tokenizer, text_encoder, PROMPTS, max_sequence_length=32)
    assert embeds.shape == (3, 32, HIDDEN) and embeds.dtype == torch.float32
    assert mask.shape == (3, 32) and mask.dtype == torch.int64
    for row, prompt in enumerate(PROMPTS):
        n = len(tokenizer(prompt.strip()).input_ids)
        assert mask[row].tolist() == [0] * (32 - n) + [1] * n  # left padding
    # Feature index d * L + l holds hidden state l of width d (unpadded run: attention sums differ by ~1e-6).
    hidden_states = text_encoder.model(**tokenizer(PROMPTS[1], return_tensors="pt"), output_hidden_states=True)
    last = hidden_states.hidden_states
    for layer in range(TEXT_NUM_HIDDEN_STATES):
        torch.testing.assert_close(embeds[1, -2:, layer::TEXT_NUM_HIDDEN_STATES], last[layer][0], rtol=0, atol=1e-5)
    # Stripped prompts, single strings and dtype / device arguments.
    single, single_mask = encode_prompt_features(
        tokenizer, text_encoder, PROMPTS[0].strip(), max_sequence_length=32, device="cpu", dtype=torch.bfloat16
    )
    assert single.dtype == torch.bfloat16 and torch.equal(single_mask, mask[:1])
    torch.testing.assert_close(single.float(), embeds[:1].bfloat16().float(), rtol=0, atol=0)
    # Truncation keeps the first max_sequence_length tokens.
    long_embeds, long_mask = encode_prompt_features(tokenizer, text_encoder, PROMPTS[0], max_sequence_length=4)
    assert long_embeds.shape == (1, 4, HIDDEN) and long_mask.all()
    assert not long_embeds.requires_grad


def test_pad_token_defaults_to_eos(tiny):
    tokenizer, text_encoder = tiny
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    assert no_pad.pad_token is None
    embeds, mask = encode_prompt_features(no_pad, text_encoder, "dog", max_sequence_length=8)
    assert no_pad.pad_token == no_pad.eos_token
    assert mask[0].tolist() == [0] * 6 + [1] * 2


def test_equals_diffusers_get_gemma_prompt_embeds(tiny):
    tokenizer, text_encoder = tiny
    pipe = SimpleNamespace(tokenizer=tokenizer, text_encoder=text_encoder, _execution_device=torch.device("cpu"))
    with torch.no_grad():
        expected, expected_mask = LTX2Pipeline._get_gemma_prompt_embeds(pipe, PROMPTS, max_sequence_length=64)
    embeds, mask = encode_prompt_features(tokenizer, text_encoder, PROMPTS, max_sequence_length=64)
    assert torch.equal(mask, expected_mask)
    assert torch.equal(embeds, expected)


def test_runs_the_top_level_module_without_full_logits(tiny):
    """Offload hooks live on the top-level text encoder; the LM head only computes one position."""
    tokenizer, text_encoder = tiny
    calls, logits_shapes = [], []
    pre = text_encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    post = text_encoder.lm_head.register_forward_hook(lambda module, args, out: logits_shapes.append(out.shape))
    try:
        encode_prompt_features(tokenizer, text_encoder, PROMPTS[:2], max_sequence_length=16)
    finally:
        pre.remove()
        post.remove()
    assert calls == [1]
    assert logits_shapes == [(2, 1, len(tokenizer))]


def test_equals_ltx_core_gemma_encoder(tiny_dir, tiny):
    """ltx-core tokenizes one prompt at a time (LTXVGemmaTokenizer) and runs the base model."""
    tokenizer, text_encoder = tiny
    encoder = _ltx_core_encoder(tiny_dir, text_encoder, 64)
    embeds, mask = encode_prompt_features(tokenizer, text_encoder, PROMPTS, max_sequence_length=64)
    for row, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            hidden_states, ref_mask = encoder.encode(prompt)
        assert torch.equal(mask[row : row + 1], ref_mask)
        reference = torch.stack(hidden_states, dim=-1).flatten(2)
        torch.testing.assert_close(embeds[row : row + 1], reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_prompt_to_contexts_equals_ltx_core(version, tiny_dir, tiny):
    """Gemma -> features -> connectors against ltx-core's encoder + EmbeddingsProcessor (fp32)."""
    tokenizer, text_encoder = tiny
    path = cached_checkpoint("checkpoint", version=version, components=("connectors",), dtype=torch.float32)
    connectors = load_connectors_from_single_file(path)
    reference = load_reference(path, "embeddings_processor")
    encoder = _ltx_core_encoder(tiny_dir, text_encoder, TEXT_SEQ_LEN)

    embeds, mask = encode_prompt_features(tokenizer, text_encoder, PROMPTS[:2], max_sequence_length=TEXT_SEQ_LEN)
    video, audio = connect_prompt(connectors, embeds, mask)
    width = 64 if version == "2.3" else TEXT_HIDDEN_SIZE
    assert video.shape == (2, TEXT_SEQ_LEN, width) and video.dtype == torch.float32
    for row, prompt in enumerate(PROMPTS[:2]):
        with torch.no_grad():
            out = reference.process_hidden_states(*encoder.encode(prompt))
        assert (video[row : row + 1] - out.video_encoding).abs().max() <= 1e-5
        assert (audio[row : row + 1] - out.audio_encoding).abs().max() <= 1e-5


def test_connect_prompt_casts_and_accepts_unflattened(tiny):
    path = cached_checkpoint("checkpoint", version="2.3", components=("connectors",))
    connectors = load_connectors_from_single_file(path)  # bf16
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, TEXT_SEQ_LEN, HIDDEN, generator=gen)
    mask = torch.zeros(1, TEXT_SEQ_LEN, dtype=torch.long)
    mask[:, -9:] = 1
    video, audio = connect_prompt(connectors, embeds, mask)
    assert video.dtype == audio.dtype == torch.bfloat16 and audio.shape == (1, TEXT_SEQ_LEN, 32)
    unflat_video, _ = connect_prompt(connectors, embeds.unflatten(2, (TEXT_HIDDEN_SIZE, -1)), mask)
    assert torch.equal(unflat_video, video)


def test_bad_inputs(tiny):
    tokenizer, text_encoder = tiny
    with pytest.raises(TypeError, match="prompt"):
        encode_prompt_features(tokenizer, text_encoder, 3)
    with pytest.raises(TypeError, match="prompt"):
        encode_prompt_features(tokenizer, text_encoder, ["ok", None])
    with pytest.raises(ValueError, match="prompt"):
        encode_prompt_features(tokenizer, text_encoder, [])
    with pytest.raises(ValueError, match="max_sequence_length"):
        encode_prompt_features(tokenizer, text_encoder, "x", max_sequence_length=0)
    with pytest.raises(TypeError, match="dtype"):
        encode_prompt_features(tokenizer, text_encoder, "x", dtype="bf16")
    with pytest.raises(TypeError, match="text_encoder"):
        encode_prompt_features(tokenizer, object(), "x")

    connectors = load_connectors_from_single_file(
        cached_checkpoint("checkpoint", version="2.0", components=("connectors",))
    )
    embeds = torch.zeros(1, TEXT_SEQ_LEN, HIDDEN)
    mask = torch.ones(1, TEXT_SEQ_LEN, dtype=torch.long)
    with pytest.raises(ValueError, match="prompt_embeds"):
        connect_prompt(connectors, embeds[0], mask)
    with pytest.raises(ValueError, match="connectors expect 192"):
        connect_prompt(connectors, embeds[..., :-1], mask)
    with pytest.raises(ValueError, match="attention_mask"):
        connect_prompt(connectors, embeds, mask[:, :-1])
    right_padded = mask.clone()
    right_padded[:, -3:] = 0
    with pytest.raises(ValueError, match="left-padding"):
        connect_prompt(connectors, embeds, right_padded)
    with pytest.raises(ValueError, match="divisible"):  # diffusers' own check: registers tile the sequence
        connect_prompt(connectors, embeds[:, :100], mask[:, :100])


def test_no_hub_access_needed():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
