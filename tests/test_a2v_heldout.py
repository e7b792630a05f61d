"""Held-out audio-to-video cases: LTX2AudioToVideoPipeline against ltx-pipelines 1.0's A2VidPipelineTwoStage (fp32
CPU) on inputs no other parity test uses, found by a randomised sweep (frames in [0, 1] within 1e-4, the returned
audio sample for sample).

What the sweep found: audio that ends a little before the video (the reference takes it whenever the audio VAE's
latent still covers the video's audio latent frames: a 5.0 s clip under the default 121 frames at 24 fps, 5.042 s)
was refused; float audio beyond full scale was clipped (the reference reads it as it is); a start time on an exact
sample tie started one sample before the reference's window. The held-out combinations at the end pass as they
were drawn."""

import contextlib
from unittest import mock

import ltx_pipelines.a2vid_two_stage as a2vid
import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch
from factories import build_checkpoint, build_lora, build_upsampler, checkpoint_config, vocoder_config
from heldout_cases import heldout_contexts
from ltx_core.components.guiders import MultiModalGuiderParams
from ltx_core.model.audio_vae.audio_vae import encode_audio
from ltx_core.types import Audio
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.helpers import simple_denoising_func
from prompt_contexts import contexts
from reference_pipeline import run_reference_a2vid
from tiny_a2v import single_file_pipe

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2ImageCondition, MultiModalGuidance
from ltx2_diffusers.validation import audio_latent_frames


TOL = 1e-4  # the project's pipeline bound: frames in [0, 1], fp32 CPU


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("a2v_heldout")
    checkpoint = build_checkpoint(root / "ltx-2.3.safetensors", "2.3", seed=41)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=42)
    lora = build_lora(root / "lora.safetensors", checkpoint, seed=43, dtype=torch.float32)
    return dict(root=root, checkpoint=checkpoint, upsampler=upsampler, lora=lora)


def _stereo(path, seconds_or_samples, rate, seed):
    n = seconds_or_samples if isinstance(seconds_or_samples, int) else round(seconds_or_samples * rate)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    data = np.stack([0.4 * np.sin(2 * np.pi * 330 * t), 0.1 * rng.standard_normal(n)], 1).astype(np.float32)
    sf.write(path, data, rate, subtype="FLOAT")
    return path


def _reference_latent_frames(checkpoint, path):
    """Latent frames ltx-core's audio encoder yields for the whole file (the reference's own front end)."""
    ledger = a2vid.ModelLedger(
        dtype=torch.float32, device=torch.device("cpu"), checkpoint_path=str(checkpoint), gemma_root_path=None,
        spatial_upsampler_path=None, loras=[],
    )  # fmt: skip
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    waveform = torch.from_numpy(data.T.copy()).unsqueeze(0)
    return encode_audio(Audio(waveform=waveform, sampling_rate=rate), ledger.audio_encoder()).shape[2]


def _ours_and_reference(files, audio, prompts, size, guidance, *, seed, steps, strength, what, **audio_window):
    """Ours and `A2VidPipelineTwoStage` on the same files and audio: `(our output, reference frames, reference
    waveform, its rate)`, after asserting the frames agree within `TOL` (and are not blank)."""
    positive, negative = prompts
    frames, _, waveform, rate = run_reference_a2vid(
        checkpoint=files["checkpoint"], upsampler=files["upsampler"], distilled_lora=files["lora"],
        distilled_strength=strength, audio_path=audio, positive=positive, negative=negative, seed=seed,
        num_inference_steps=steps, guider_params=MultiModalGuiderParams(**guidance), **audio_window, **size,
    )  # fmt: skip
    pipe = single_file_pipe(files["checkpoint"], files["upsampler"], files["lora"], strength)
    out = pipe(
        audio=audio, prompt_contexts=positive, negative_prompt_contexts=negative, num_inference_steps=steps,
        video_guidance=MultiModalGuidance(**guidance), generator=torch.Generator().manual_seed(seed), output_type="pt",
        **audio_window, **size,
    )  # fmt: skip
    _assert_frames_match(out, frames, what)
    return out, frames, waveform, rate


def _assert_frames_match(out, frames, what: str) -> None:
    """Our `"pt"` frames `(B, F, C, H, W)` against the reference's `(B, C, F, H, W)`: within `TOL`, not blank."""
    ours = out.frames.permute(0, 2, 1, 3, 4)
    diff = (ours - frames).abs().max().item()
    print(f"{what}: frames max|d| = {diff:.3g}")
    assert ours.shape == frames.shape and ours.std() > 0.01
    assert diff <= TOL


@pytest.mark.parametrize("window", ["short_file", "audio_max_duration"])
def test_audio_ending_within_a_latent_frame_of_the_video_matches_the_reference(files, window):
    """9 frames at 23.976 fps span 0.3754 s (9 audio latent frames); the clip (or the window read from a longer
    one) is 0.362 s at 22.05 kHz: 284 samples short, yet its latent has 10 frames, so the reference renders it and
    returns the clip as it is."""
    seconds, max_duration = (0.362, None) if window == "short_file" else (1.0, 0.362)
    audio = _stereo(files["root"] / f"{window}.wav", seconds, 22050, seed=0)
    positive, negative = contexts(20, "2.3"), contexts(21, "2.3")
    size = dict(height=192, width=128, num_frames=9, frame_rate=23.976)
    guidance = dict(cfg_scale=2.5, stg_scale=0.7, rescale_scale=0.5, modality_scale=2.0, stg_blocks=[1])
    out, frames, waveform, rate = _ours_and_reference(
        files, audio, (positive, negative), size, guidance, seed=7, steps=3, strength=0.6,
        audio_max_duration=max_duration, what="short audio",
    )  # fmt: skip
    assert out.audio_sample_rate == rate == 22050
    assert torch.equal(out.audio, waveform.float().reshape(out.audio.shape))  # the whole clip, as the reference
    assert out.audio.shape[-1] == round(0.362 * 22050) < round(9 / 23.976 * 22050)


@pytest.mark.parametrize(
    "rate, num_frames, frame_rate",
    [(16000, 121, 24.0), (44100, 17, 25.0), (22050, 9, 30.0), (176400, 209, 50.0)],  # the last: a float32 corner
)
def test_the_shortest_audio_taken_is_the_reference_s(files, rate, num_frames, frame_rate):
    """At the shortest clip whose reference latent covers the video the pipeline accepts; one sample less it
    refuses, before any model runs, naming the audio (the reference fails there: latent shape mismatch)."""
    pipe = single_file_pipe(files["checkpoint"], files["upsampler"], files["lora"], 0.6)
    needed = audio_latent_frames(num_frames / frame_rate)
    shortest = next(
        n for n in range(round(num_frames / frame_rate * rate), 0, -1)
        if pipe.encoded_audio_frames(n - 1, rate) < needed
    )  # fmt: skip
    accepted = _stereo(files["root"] / f"ok{rate}.wav", shortest, rate, seed=1)
    refused = _stereo(files["root"] / f"no{rate}.wav", shortest - 1, rate, seed=1)
    assert _reference_latent_frames(files["checkpoint"], accepted) >= needed
    assert _reference_latent_frames(files["checkpoint"], refused) < needed
    args = (None, 0.0, None, num_frames, frame_rate)
    _, waveform, _, frames = pipe.prepare_audio(accepted, *args)
    assert frames == num_frames and waveform.shape[-1] == shortest
    pipe.transformer.forward = pipe.vae.forward = pipe.audio_vae.forward = None  # no model may run
    with pytest.raises(ValueError, match="the audio covers .* but the video needs"):
        pipe(audio=refused, prompt_contexts=contexts(0, "2.3"), negative_prompt_contexts=contexts(1, "2.3"),
             height=64, width=64, num_frames=num_frames, frame_rate=frame_rate, output_type="latent",
             video_guidance=MultiModalGuidance(stg_blocks=[0]))  # fmt: skip


def test_float_audio_beyond_full_scale_is_read_as_the_reference_reads_it(files):
    """A float WAV peaking at 1.6 (a mix rendered hot): the reference encodes and returns the samples as they are;
    the pipeline clipped them to [-1, 1] (frames off by ~0.07, returned audio by ~0.6)."""
    rate = 48000
    t = np.arange(round(0.5 * rate)) / rate
    hot = np.stack([1.6 * np.sin(2 * np.pi * 110 * t), 1.2 * np.sign(np.sin(2 * np.pi * 3 * t))], 1)
    audio = files["root"] / "hot.wav"
    sf.write(audio, hot.astype(np.float32), rate, subtype="FLOAT")
    positive, negative = contexts(22, "2.3"), contexts(23, "2.3")
    size = dict(height=128, width=192, num_frames=9, frame_rate=25.0)
    guidance = dict(cfg_scale=3.0, stg_scale=0.0, rescale_scale=0.0, modality_scale=3.0, stg_blocks=[0])
    out, frames, waveform, _ = _ours_and_reference(
        files, audio, (positive, negative), size, guidance, seed=8, steps=2, strength=0.9, what="hot audio"
    )
    assert waveform.abs().max() > 1.5  # the reference keeps the overs
    assert torch.equal(out.audio, waveform.float().reshape(2, -1)[:, : out.audio.shape[-1]])
    assert out.audio.shape[-1] == round(9 / 25 * rate)


def test_a_start_time_on_a_sample_tie_matches_the_reference(files):
    """audio_start_time=0.185 s at 44.1 kHz is sample 8158.5: the reference keeps from 8159 (its seek and float
    arithmetic), the pipeline kept from 8158; one sample shifted the audio latent (frames off by ~0.009)."""
    rate = 44100
    audio = _stereo(files["root"] / "tie.wav", 1.5, rate, seed=2)
    positive, negative = contexts(24, "2.3"), contexts(25, "2.3")
    size = dict(height=64, width=192, num_frames=17, frame_rate=29.97)
    guidance = dict(cfg_scale=4.0, stg_scale=1.2, rescale_scale=0.8, modality_scale=2.5, stg_blocks=[0, 1])
    out, frames, waveform, _ = _ours_and_reference(
        files, audio, (positive, negative), size, guidance, seed=9, steps=2, strength=0.4,
        audio_start_time=0.185, what="tie start",
    )  # fmt: skip
    assert torch.equal(out.audio, waveform.float().reshape(2, -1)[:, : out.audio.shape[-1]])
    source, _ = sf.read(audio, dtype="float32", always_2d=True)
    assert torch.equal(out.audio[:, :4], torch.from_numpy(source[8159:8163].T.copy()))


# ------------------------------------------------------------------------------------------ held-out combinations
# Drawn by the sweep (other transformer depths/heads, non-square sizes, non-integer frame rates, keyframes at the
# first/middle/last frame with strength < 1), each a combination no other audio-to-video parity test runs:
#   mono_pcm16_8k:  LTX-2.0 dev, a MONO 16-bit WAV at 8 kHz (the reference takes stereo only: it gets the mono
#                   duplicated, which is what the pipeline does), 23.976 fps, LoRA strength 0, STG on every block.
#   array_sigmas:   LTX-2.3 dev, the audio as a [channels, samples] numpy array with audio_sample_rate (32 kHz), a
#                   custom `sigmas=` table, one guidance pass per forward, 33 frames at 30 fps, keyframe on the last.
#   distilled_window: LTX-2.3 distilled checkpoint, audio_start_time 0.37 s and audio_max_duration 1.5x the video
#                   (the reference encodes the longer window), 29.97 fps, 48 kHz float WAV, last-frame keyframe.
HELDOUT = {
    "mono_pcm16_8k": dict(
        version="2.0", variant="dev", layers=3, video_heads=(4, 16), audio_heads=(4, 8), height=256, width=64,
        num_frames=17, frame_rate=23.976, steps=3, sigmas=None, lora_strength=0.0,
        guidance=dict(cfg_scale=4.2, stg_scale=0.9, rescale_scale=0.45, modality_scale=2.2, stg_blocks=[0, 1, 2],
                      skip_step=1),
        conditions=[(0, 0.55, 23), (8, 0.8, 0), (16, 0.35, 33)], rate=8000, channels=1, subtype="PCM_16",
        seconds=1.1, start=0.05, max_duration=None, audio_input="path", guidance_batch_size=None,
    ),
    "array_sigmas": dict(
        version="2.3", variant="dev", layers=4, video_heads=(2, 48), audio_heads=(1, 32), height=128, width=192,
        num_frames=33, frame_rate=30.0, steps=None, sigmas=[1.0, 0.93, 0.61, 0.2, 0.0], lora_strength=1.2,
        guidance=dict(cfg_scale=2.0, stg_scale=0.0, rescale_scale=0.0, modality_scale=3.4, stg_blocks=[3]),
        conditions=[(32, 0.9, 33)], rate=32000, channels=2, subtype="PCM_16", seconds=1.4, start=0.0,
        max_duration=None, audio_input="array", guidance_batch_size=1,
    ),
    "distilled_window": dict(
        version="2.3", variant="distilled", layers=3, video_heads=(3, 32), audio_heads=(3, 16), height=64,
        width=256, num_frames=25, frame_rate=29.97, steps=None, sigmas=None, lora_strength=None, guidance=None,
        conditions=[(12, 0.6, 23), (24, 1.0, 33)], rate=48000, channels=2, subtype="FLOAT", seconds=2.2,
        start=0.37, max_duration=1.251, audio_input="path", guidance_batch_size=None,
    ),
}  # fmt: skip


class _Sigmas:
    table: tuple = ()

    def execute(self, steps, **kwargs):
        return torch.tensor(self.table)


def _unguided(video_guider, audio_guider, v_context, a_context, transformer):
    return simple_denoising_func(video_context=v_context, audio_context=a_context, transformer=transformer)


def _heldout_files(root, case, seed):
    config = checkpoint_config(
        case["version"], num_layers=case["layers"], num_attention_heads=case["video_heads"][0],
        attention_head_dim=case["video_heads"][1], audio_num_attention_heads=case["audio_heads"][0],
        audio_attention_head_dim=case["audio_heads"][1],
    )  # fmt: skip
    config["vocoder"] = vocoder_config(case["version"], initial_channel=64, bwe_initial_channel=32)
    checkpoint = build_checkpoint(root / "ltx.safetensors", case["version"], seed=seed, config=config)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=seed + 1)
    rng = np.random.default_rng(seed)
    rate, n = case["rate"], round(case["rate"] * case["seconds"])
    t = np.arange(n) / rate
    data = np.stack(
        [0.4 * np.sin(2 * np.pi * rng.uniform(80, 900) * t) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 6) * t))
         + 0.05 * rng.standard_normal(n) for _ in range(case["channels"])], 1,
    ).astype(np.float32)  # fmt: skip
    audio = root / "audio.wav"
    sf.write(audio, data, rate, subtype=case["subtype"])
    reference_audio = audio
    if case["channels"] == 1:  # the reference takes stereo only: the same samples, duplicated, exactly (float)
        reference_audio = root / "audio_stereo.wav"
        sf.write(reference_audio, np.repeat(sf.read(audio, dtype="float32", always_2d=True)[0], 2, 1), rate, "FLOAT")
    images = []
    for i, (frame, strength, crf) in enumerate(case["conditions"]):
        path = root / f"image{i}.png"
        h, w = int(rng.integers(40, 260)), int(rng.integers(40, 260))
        PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        images.append((str(path), frame, strength, crf))
    return config, checkpoint, upsampler, audio, reference_audio, images


@pytest.mark.parametrize("name", list(HELDOUT))
def test_heldout_combination_matches_the_reference(name, tmp_path):
    case, seed = HELDOUT[name], 100 + list(HELDOUT).index(name)
    config, checkpoint, upsampler, audio, reference_audio, images = _heldout_files(tmp_path, case, seed)
    positive = heldout_contexts(seed + 2, config, case["version"], 16)
    negative = heldout_contexts(seed + 3, config, case["version"], 23)
    size = dict(
        height=case["height"], width=case["width"], num_frames=case["num_frames"], frame_rate=case["frame_rate"]
    )
    window = dict(audio_start_time=case["start"], audio_max_duration=case["max_duration"])
    common = dict(positive=positive, seed=seed + 4, audio_path=reference_audio, images=images, **window, **size)
    if case["variant"] == "distilled":
        with (
            mock.patch.object(a2vid, "LTX2Scheduler", type("S", (_Sigmas,), {"table": DISTILLED_SIGMA_VALUES})),
            mock.patch.object(a2vid, "multi_modal_guider_denoising_func", _unguided),
        ):
            frames, _, waveform, rate = run_reference_a2vid(
                checkpoint=checkpoint, upsampler=upsampler, distilled_lora=None, distilled_strength=None,
                negative=positive, num_inference_steps=len(DISTILLED_SIGMA_VALUES) - 1, guider_params=None, **common,
            )  # fmt: skip
        pipe = LTX2AudioToVideoPipeline.from_single_file(
            checkpoint, spatial_upsampler_path=upsampler, model_variant="distilled", torch_dtype=torch.float32
        )
        kwargs = dict(prompt_contexts=positive)
    else:
        lora = build_lora(tmp_path / "lora.safetensors", checkpoint, seed=seed + 5, dtype=torch.float32)
        steps = case["steps"] if case["sigmas"] is None else len(case["sigmas"]) - 1
        schedule = type("S", (_Sigmas,), {"table": case["sigmas"]})
        with mock.patch.object(a2vid, "LTX2Scheduler", schedule) if case["sigmas"] else contextlib.nullcontext():
            frames, _, waveform, rate = run_reference_a2vid(
                checkpoint=checkpoint, upsampler=upsampler, distilled_lora=lora,
                distilled_strength=case["lora_strength"], negative=negative, num_inference_steps=steps,
                guider_params=MultiModalGuiderParams(**case["guidance"]), **common,
            )  # fmt: skip
        pipe = single_file_pipe(checkpoint, upsampler, lora, case["lora_strength"])
        kwargs = dict(
            prompt_contexts=positive, negative_prompt_contexts=negative,
            video_guidance=MultiModalGuidance(**case["guidance"]), guidance_batch_size=case["guidance_batch_size"],
        )  # fmt: skip
        kwargs.update(sigmas=case["sigmas"]) if case["sigmas"] else kwargs.update(num_inference_steps=steps)
    source, source_rate = sf.read(audio, dtype="float32", always_2d=True)
    if case["audio_input"] == "array":
        kwargs.update(audio=source.T.copy(), audio_sample_rate=source_rate)
    else:
        kwargs.update(audio=audio)
    out = pipe(
        conditions=[LTX2ImageCondition(*image) for image in images], generator=torch.Generator().manual_seed(seed + 4),
        output_type="pt", **window, **size, **kwargs,
    )  # fmt: skip
    _assert_frames_match(out, frames, name)
    # the original samples over the video (the reference returns the whole window it read; mono stays mono)
    assert out.audio_sample_rate == rate == case["rate"]
    span = round(case["num_frames"] / case["frame_rate"] * rate)
    assert out.audio.shape == (case["channels"], span)
    assert torch.equal(out.audio, waveform.float().reshape(2, -1)[: case["channels"], :span])
