"""Inputs of the text/image-to-audio-video pipeline refused in `check_inputs`, before any model runs: noise
`latents` (dtype, finite, bounded), `num_inference_steps` and `sigmas` lengths (`MAX_INFERENCE_STEPS`), text lengths
(`max_sequence_length`, `prompt_embeds` tokens vs the connectors' registers), context widths and token counts,
`frame_rate` and the audio span; error messages show a user's values cut short."""

import pytest
import torch
from converted_folder import converted_folder
from family_call import tiny_call_args
from prompt_contexts import contexts

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2AudioVideoPipeline, MultiModalGuidance
from ltx2_diffusers.validation import (
    MAX_INFERENCE_STEPS,
    MAX_LATENT_ABS,
    MAX_SEQUENCE_LENGTH,
    audio_latent_frames,
    check_video_size,
    shown,
)


GUIDANCE = MultiModalGuidance(stg_blocks=[1])
LATENT = (1, 128, 2, 1, 1)  # 9 frames at 64 x 64 with stage 2: half size 32 x 32


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = LTX2AudioVideoPipeline.from_pretrained(converted_folder(tmp_path_factory.mktemp("bounds"), 41))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def no_compute(pipe, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model ran before the input was refused")

    for name in ("transformer", "connectors", "vae", "audio_vae", "latent_upsampler"):
        monkeypatch.setattr(getattr(pipe, name), "forward", forbidden)


def call(pipe, **kwargs):
    args = tiny_call_args(pipe, GUIDANCE)
    args.update(kwargs)
    return pipe(**args)


VIDEO, AUDIO = contexts(0, "2.3", tokens=16)


def ones(tokens):
    """The attention mask of `tokens` text-encoder features, every token attended."""
    return torch.ones(1, tokens, dtype=torch.long)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # noise latents
        (dict(latents=torch.full(LATENT, float("nan"))), ValueError, "^latents holds NaN or infinite values"),
        (dict(latents=torch.full(LATENT, float("inf"))), ValueError, "^latents holds NaN or infinite values"),
        (dict(latents=torch.full(LATENT, 1e38)), ValueError, "^latents holds values of magnitude 1e"),
        (dict(latents=torch.zeros(LATENT, dtype=torch.int64)), TypeError, "^latents must be a floating-point tensor"),
        (dict(latents=torch.zeros(LATENT, dtype=torch.complex64)), TypeError, "^latents must be a floating-point"),
        (dict(latents=[0.0] * 8), TypeError, "^latents must be a torch.Tensor"),
        (
            dict(latents=torch.zeros(1, 128, 2, 2, 2)),
            ValueError,
            r"^latents must have shape \(1, 128, 2, 1, 1\) for this size and frame count, got \(1, 128, 2, 2, 2\)",
        ),
        # steps
        (dict(num_inference_steps=100_000), ValueError, r"num_inference_steps must be an integer in \[2, 1000\]"),
        (dict(num_inference_steps=10**6), ValueError, r"num_inference_steps must be an integer in \[2, 1000\]"),
        (dict(num_inference_steps=True), ValueError, "num_inference_steps must be an integer"),
        (
            dict(num_inference_steps=None, sigmas=[1.0 - i * 1e-7 for i in range(5000)]),
            ValueError,
            "sigmas holds 5000 values, above the bound of 1000 steps",
        ),
        (
            dict(num_inference_steps=None, sigmas=[1.0 - i / 1002 for i in range(1001)]),  # 1001 steps, no final 0
            ValueError,
            "^sigmas gives 1001 steps, above the bound of 1000",
        ),
        (
            dict(num_inference_steps=None, sigmas=[0.5] * 1000),
            ValueError,
            r"sigmas must decrease strictly, got \[0\.5",
        ),
        # text lengths
        (dict(max_sequence_length=200), ValueError, "max_sequence_length must be a positive multiple of 128"),
        (dict(max_sequence_length=2_000_000), ValueError, "max_sequence_length must be .* up to 4096, got 2000000"),
        (dict(max_sequence_length=0), ValueError, "max_sequence_length must be a positive multiple"),
        (dict(max_sequence_length="abc"), ValueError, "max_sequence_length must be a positive multiple"),
        (
            dict(prompt_contexts=None, prompt_embeds=torch.randn(1, 10, 48), prompt_attention_mask=ones(10)),
            ValueError,
            "^prompt_embeds has 10 tokens; the connectors need a positive multiple of 128",
        ),
        (
            dict(prompt_contexts=None, prompt_embeds=torch.randn(1, 0, 48), prompt_attention_mask=ones(0)),
            ValueError,
            "^prompt_embeds has 0 tokens",
        ),
        (
            dict(
                negative_prompt_contexts=None,
                negative_prompt_embeds=torch.randn(1, 130, 48),
                negative_prompt_attention_mask=ones(130),
            ),
            ValueError,
            "^negative_prompt_embeds has 130 tokens",
        ),
        # contexts
        (dict(prompt_contexts=(VIDEO[:, :0], AUDIO[:, :0])), ValueError, r"prompt_contexts\[0\] .* has 0 tokens"),
        (
            dict(prompt_contexts=(VIDEO[..., :7], AUDIO)),
            ValueError,
            r"prompt_contexts\[0\] \(the video context\) has width 7, the transformer takes 64",
        ),
        (
            dict(prompt_contexts=(AUDIO, VIDEO)),
            ValueError,
            r"prompt_contexts\[0\] \(the video context\) has width 32, the transformer takes 64; pass \(video_context",
        ),
        (
            dict(negative_prompt_contexts=(VIDEO, AUDIO[..., :5])),
            ValueError,
            r"negative_prompt_contexts\[1\] \(the audio context\) has width 5, the transformer takes 32",
        ),
        # frame rate, audio span
        (dict(frame_rate=1e-6), ValueError, r"frame_rate must be in \[1, 240\] fps"),
        (dict(frame_rate=0.5), ValueError, r"frame_rate must be in \[1, 240\] fps"),
        (dict(num_frames=1, frame_rate=60.0), ValueError, "num_frames=1 at frame_rate=60.0 .* 0 audio latent frames"),
        # user lists in messages
        (dict(prompt=["a"] * 10**6, prompt_contexts=None), ValueError, "prompt must be one string"),
    ],
)
def test_refused_before_any_model_with_a_short_message(pipe, no_compute, kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        call(pipe, **kwargs)
    assert len(str(caught.value)) < 600, len(str(caught.value))


def test_the_bounds_admit_their_edges(pipe):
    """The documented edges pass: 1 fps with 1 frame (25 audio latent frames per second: 1 s -> 25), 1 frame at
    40 fps (0.025 s -> 1 audio frame), a finite latent at the magnitude bound, prompt embeddings of 128 tokens."""
    assert audio_latent_frames(1 / 40.0) == 1 and audio_latent_frames(1 / 50.0) == 0  # 0.5 rounds to 0
    check_video_size(1, 64, 64, frame_rate=40.0)
    out = call(pipe, num_frames=1, frame_rate=1.0, stage_2=False, num_inference_steps=2)
    assert out.audio.shape[1] == 25
    latents = torch.full(LATENT, -MAX_LATENT_ABS)
    assert torch.isfinite(call(pipe, latents=latents).frames).all()
    embeds = torch.randn(
        1, 128, 4 * pipe.connectors.config.caption_channels, generator=torch.Generator().manual_seed(1)
    )
    out = call(pipe, prompt_contexts=None, prompt_embeds=embeds, prompt_attention_mask=ones(128), stage_2=False)
    assert torch.isfinite(out.frames).all()
    assert MAX_INFERENCE_STEPS == 1000 and MAX_SEQUENCE_LENGTH == 4096


def test_shown_cuts_long_values():
    assert len(shown(list(range(10**6)))) < 200
    assert len(shown("x" * 10**6)) <= 200
    assert shown([1, 2]) == "[1, 2]"


def test_a_derived_frame_count_needs_an_audio_latent_frame(pipe, no_compute):
    """Audio-to-video with `num_frames=None`: 0.1 s of audio at 60 fps gives 1 frame, 0 audio latent frames."""
    a2v = LTX2AudioToVideoPipeline.from_pipe(pipe)
    audio = torch.zeros(2, 1600).numpy()
    with pytest.raises(ValueError, match="num_frames=1 at frame_rate=60.0 .* 0 audio latent frames"):
        call(a2v, audio=audio, audio_sample_rate=16000, num_frames=None, frame_rate=60.0)
