"""Prompt enhancement with the Gemma text encoder vs ltx-pipelines' generate_enhanced_prompt (ltx-core's
GemmaTextEncoder.enhance_t2v / enhance_i2v) on a tiny random Gemma 3, same seed -> same text."""

import pathlib
from unittest import mock

import ltx_core.text_encoders.gemma.encoders.base_encoder as base_encoder
import numpy as np
import PIL.Image
import pytest
import torch
from ltx_core.text_encoders.gemma.encoders.base_encoder import GemmaTextEncoder
from ltx_pipelines.utils.helpers import generate_enhanced_prompt
from transformers import Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor, GemmaTokenizer

from ltx2_diffusers.pipelines import prompt_enhancement
from ltx2_diffusers.pipelines.prompt_enhancement import enhance_prompt, system_prompt
from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3


# Gemma 3's chat layout: the system text opens the first user turn; an image item becomes <start_of_image>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
PROMPT = "a woman sings on the beach at night"
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    root = build_tiny_gemma3(tmp_path_factory.mktemp("gemma"), seed=7)
    model = Gemma3ForConditionalGeneration.from_pretrained(root / "text_encoder").eval()
    tokenizer = GemmaTokenizer.from_pretrained(
        root / "tokenizer",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    size = model.config.vision_config.image_size
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        image_seq_length=model.config.mm_tokens_per_image,
    )
    image = tmp_path_factory.mktemp("img") / "image.png"
    PIL.Image.fromarray(np.random.default_rng(3).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(image)
    return model, tokenizer, processor, image


def reference_enhance(gemma, seed, image_path=None, max_new_tokens=NEW_TOKENS):
    model, _, processor, _ = gemma
    encoder = GemmaTextEncoder(model=model, processor=processor, dtype=torch.float32)
    for name in ("enhance_t2v", "enhance_i2v"):  # generate_enhanced_prompt does not pass max_new_tokens on

        def limited(self, *args, _fn=getattr(GemmaTextEncoder, name), **kwargs):
            return _fn(self, *args, max_new_tokens=max_new_tokens, **kwargs)

        setattr(encoder, name, limited.__get__(encoder))
    fork_rng = torch.random.fork_rng

    def cpu_fork_rng(devices=(), **kwargs):  # the reference forks the CUDA RNG of a CPU device: CPU-only torch fails
        return fork_rng(devices=[d for d in devices if torch.device(d).type != "cpu"], **kwargs)

    with mock.patch.object(torch.random, "fork_rng", cpu_fork_rng):
        return generate_enhanced_prompt(encoder, PROMPT, str(image_path) if image_path else None, seed=seed)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_system_prompts_equal_the_reference_text(kind):
    name = {"text": "gemma_t2v_system_prompt.txt", "image": "gemma_i2v_system_prompt.txt"}[kind]
    reference = (pathlib.Path(base_encoder.__file__).parent / "prompts" / name).read_text(encoding="utf-8")
    assert system_prompt(kind) == reference
    assert len(reference) > 1000


@pytest.mark.parametrize("seed", [42, 7])
def test_text_enhancement_matches_reference(gemma, seed):
    model, tokenizer, _, _ = gemma
    ours = enhance_prompt(model, tokenizer, PROMPT, seed=seed, max_new_tokens=NEW_TOKENS)
    assert ours == reference_enhance(gemma, seed)
    assert ours  # the tiny model writes something


def test_image_enhancement_matches_reference(gemma):
    model, tokenizer, processor, image = gemma
    ours = enhance_prompt(
        model, tokenizer, PROMPT, PIL.Image.open(image), processor=processor, seed=42, max_new_tokens=NEW_TOKENS
    )
    assert ours == reference_enhance(gemma, 42, image)
    assert ours != enhance_prompt(model, tokenizer, PROMPT, seed=42, max_new_tokens=NEW_TOKENS)


def test_seed_controls_sampling_and_global_rng_is_untouched(gemma):
    model, tokenizer, _, _ = gemma
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = enhance_prompt(model, tokenizer, PROMPT, seed=1, max_new_tokens=NEW_TOKENS)
    assert torch.equal(torch.rand(3), expected_next)
    assert a == enhance_prompt(model, tokenizer, PROMPT, seed=1, max_new_tokens=NEW_TOKENS)
    assert a != enhance_prompt(model, tokenizer, PROMPT, seed=2, max_new_tokens=NEW_TOKENS)


def test_uses_the_system_prompt_of_the_variant(gemma, monkeypatch):
    model, tokenizer, processor, image = gemma
    seen = []
    original = type(tokenizer).apply_chat_template

    def spy(self, messages, *args, **kwargs):
        seen.append(messages)
        return original(self, messages, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "apply_chat_template", spy)
    enhance_prompt(model, tokenizer, PROMPT, seed=0, max_new_tokens=2)
    enhance_prompt(model, tokenizer, PROMPT, np.zeros((8, 8, 3), np.uint8), processor=processor, max_new_tokens=2)
    assert seen[0][0] == {"role": "system", "content": system_prompt("text")}
    assert seen[0][1]["content"] == f"user prompt: {PROMPT}"
    assert seen[1][0] == {"role": "system", "content": system_prompt("image")}
    assert seen[1][1]["content"][0] == {"type": "image"}


def test_clean_response_matches_reference():
    from ltx_pipelines.utils.helpers import clean_response as reference_clean

    for text in ("\u201cHi\u201d \u2014 there", "  12. A\u00a0cat\u2019s", "...", "", "\u2212\u2013x"):
        assert prompt_enhancement.clean_response(text) == reference_clean(text)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompt=""), ValueError, "prompt"),
        (dict(prompt=3), ValueError, "prompt"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
        (dict(image=np.zeros((4, 4, 3), np.uint8)), ValueError, "processor"),
    ],
)
def test_bad_arguments_are_refused(gemma, kwargs, error, match):
    model, tokenizer, _, _ = gemma
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(error, match=match):
        enhance_prompt(model, tokenizer, **kwargs)


def test_tokenizer_without_chat_template_is_refused(gemma):
    model, tokenizer, _, _ = gemma
    bare = GemmaTokenizer.from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        enhance_prompt(model, bare, PROMPT)
