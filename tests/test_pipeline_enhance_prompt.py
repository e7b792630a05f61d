"""`enhance_prompt=True` on the pipelines: the pipeline's Gemma rewrites the prompt as ltx-pipelines'
`generate_enhanced_prompt` does (same text for the same seed: the two-stage text->audio+video pipeline seeds it
with its seed, audio-to-video with 42), and the rewritten text is what gets encoded; tiny Gemma, CPU."""

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import build_checkpoint
from test_prompt_enhancement import PROMPT, reference_enhance
from test_prompt_enhancement import gemma as tiny_gemma  # noqa: F401  (module fixture reused)

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2AudioVideoPipeline, MultiModalGuidance
from ltx2_diffusers.pipelines import text_encoding


SEED = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("enhance") / "ltx-2.3.safetensors", "2.3", seed=41)


def with_gemma(pipe, gemma):
    model, tokenizer, _, _ = gemma
    pipe.text_encoder, pipe.tokenizer = model, tokenizer
    return pipe


@pytest.fixture
def encoded_texts(monkeypatch):
    seen = []
    original = text_encoding.encode_prompt_features

    def spy(tokenizer, text_encoder, text, **kwargs):
        seen.append(text)
        return original(tokenizer, text_encoder, text, **kwargs)

    monkeypatch.setattr(text_encoding, "encode_prompt_features", spy)
    return seen


def test_text_to_audio_video_enhances_with_its_seed(checkpoint, tiny_gemma, encoded_texts):  # noqa: F811
    pipe = with_gemma(LTX2AudioVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32), tiny_gemma)
    kwargs = dict(
        prompt=PROMPT, negative_prompt="static", height=64, width=64, num_frames=1, num_inference_steps=2,
        video_guidance=MultiModalGuidance(stg_blocks=[1]), audio_guidance=MultiModalGuidance(stg_blocks=[1]),
        stage_2=False, output_type="latent", max_sequence_length=128,
    )  # fmt: skip
    out = pipe(**kwargs, enhance_prompt=True, generator=torch.Generator().manual_seed(SEED))
    expected = reference_enhance(tiny_gemma, SEED, max_new_tokens=512)
    assert expected != PROMPT and encoded_texts == [expected, "static"]
    plain = pipe(**kwargs, generator=torch.Generator().manual_seed(SEED))
    assert encoded_texts[2:] == [PROMPT, "static"] and not torch.equal(out.frames, plain.frames)


def test_audio_to_video_enhances_with_seed_42(checkpoint, tiny_gemma, encoded_texts, tmp_path):  # noqa: F811
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(np.arange(8000) / 7.0)).astype(np.float32), 16000)
    pipe = with_gemma(LTX2AudioToVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32), tiny_gemma)
    pipe(
        prompt=PROMPT, audio=tmp_path / "a.wav", negative_prompt="static", height=64, width=64, num_frames=1,
        num_inference_steps=2, video_guidance=MultiModalGuidance(stg_blocks=[1]), stage_2=False,
        output_type="latent", max_sequence_length=128, enhance_prompt=True,
        generator=torch.Generator().manual_seed(SEED),
    )  # fmt: skip
    assert encoded_texts[0] == reference_enhance(tiny_gemma, 42, max_new_tokens=512)


def test_enhance_prompt_refusals(checkpoint, tiny_gemma):  # noqa: F811
    pipe = LTX2AudioVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32)
    guidance = MultiModalGuidance(stg_blocks=[1])
    base = dict(
        prompt=PROMPT, height=64, width=64, num_frames=1, stage_2=False, video_guidance=guidance,
        audio_guidance=guidance,
    )  # fmt: skip
    with pytest.raises(ValueError, match="enhance_prompt=True needs a text prompt and the pipeline's text_encoder"):
        pipe(**base, enhance_prompt=True)
    pipe = with_gemma(pipe, tiny_gemma)
    with pytest.raises(ValueError, match="image conditions"):
        pipe(**base, enhance_prompt=True, conditions=[(np.zeros((8, 8, 3), np.uint8), 0, 1.0)])
    with pytest.raises(TypeError, match="enhance_prompt must be a bool"):
        pipe(**base, enhance_prompt="yes")
