"""Garbage is refused before compute, naming the argument or file (issue 9, points 3 and 4): non-finite audio
files, LoRA tensors and adapter weights, guidance scales and sizes outside the documented bounds of
`ltx2_diffusers.validation`, and high-bit-depth condition images read at their true range."""

import struct
import zlib

import factories
import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file
from test_pipeline_parity import contexts

from ltx2_diffusers import LTX2AudioToVideoPipeline, MultiModalGuidance
from ltx2_diffusers.audio.io import load_audio
from ltx2_diffusers.loaders.lora import LTX2AVLoraLoaderMixin
from ltx2_diffusers.models.transformer_ltx2_av import LTX2AudioVideoTransformer
from ltx2_diffusers.pipelines import pipeline_ltx2_audio_to_video as pipeline_module
from ltx2_diffusers.pipelines.image_conditions import prepare_condition_image
from ltx2_diffusers.validation import (
    MAX_NUM_FRAMES,
    check_adapter_weights,
    check_frame_rate,
    check_guidance_scale,
    check_lora_strength,
    check_video_size,
)


# ---------------------------------------------------------------------------------------------------- audio files
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_non_finite_samples_in_a_decoded_file(tmp_path, bad, subtype):
    samples = np.zeros((2, 16000), np.float64)
    samples[1, 8000] = bad
    path = tmp_path / "poisoned.wav"
    sf.write(path, samples.T, 16000, subtype=subtype)
    with pytest.raises(ValueError, match=r"poisoned\.wav.* 1 NaN or infinite samples \(the first at 0\.500 s\)"):
        load_audio(path)
    with open(path, "rb") as handle:  # a file object is named too, and its position restored
        handle.seek(7)
        with pytest.raises(ValueError, match="NaN or infinite"):
            load_audio(handle)
        assert handle.tell() == 7
    # Outside the selected window the bad sample is never used: the window decodes.
    waveform, rate = load_audio(path, max_duration=0.25)
    assert rate == 16000 and waveform.shape == (2, 4000) and torch.isfinite(waveform).all()


# ---------------------------------------------------------------------------------------------------- LoRA files
class _Pipe(LTX2AVLoraLoaderMixin, DiffusionPipeline):
    def __init__(self, transformer):
        super().__init__()
        self.register_modules(transformer=transformer)


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=21, components=("transformer", "connectors"))
    lora = factories.cached_checkpoint("lora", checkpoint_path=checkpoint, seed=22, dtype=torch.float32)
    pipe = _Pipe(LTX2AudioVideoTransformer.from_single_file(checkpoint, torch_dtype=torch.float32))
    return pipe, load_file(lora), tmp_path_factory.mktemp("loras")


def _poisoned(tensors, change):
    tensors = dict(tensors)
    key = sorted(k for k in tensors if k.endswith("lora_B.weight"))[3]
    tensors[key] = change(tensors[key].clone())
    return tensors, key


@pytest.mark.parametrize(
    ("name", "change", "error", "match"),
    [
        ("nan", lambda t: t.index_fill_(0, torch.tensor([0]), float("nan")), ValueError, "NaN or infinite"),
        ("inf", lambda t: t.index_fill_(1, torch.tensor([1]), float("inf")), ValueError, "NaN or infinite"),
        ("int16", lambda t: (t * 1000).to(torch.int16), TypeError, "torch.int16; LoRA weights must be floating"),
        ("int32", lambda t: t.to(torch.int32), TypeError, "torch.int32"),
        ("bool", lambda t: t > 0, TypeError, "torch.bool"),
    ],
)
def test_bad_lora_tensors_refused_at_load(lora_setup, name, change, error, match):
    pipe, tensors, folder = lora_setup
    bad, key = _poisoned(tensors, change)
    path = folder / f"{name}.safetensors"
    save_file(bad, path)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    for source, label in ((str(path), f"{name}.safetensors"), (bad, "the LoRA state dict")):
        with pytest.raises(error, match=match) as info:
            pipe.load_lora_weights(source, adapter_name="user")
        assert label in str(info.value) and key in str(info.value)
        assert not getattr(pipe.transformer, "peft_config", None)  # nothing was attached
    after = pipe.transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_adapter_weights_bounded(lora_setup):
    pipe, tensors, _ = lora_setup
    pipe.load_lora_weights(tensors, adapter_name="style")
    try:
        for weights in ([float("nan")], [float("inf")], [1e30], [-11.0], {"transformer": float("nan")}, [[2.0, 1e9]]):
            with pytest.raises(ValueError, match="adapter_weights"):
                pipe.set_adapters(["style"], weights)
        with pytest.raises(TypeError, match="adapter_weights"):
            pipe.set_adapters(["style"], ["0.5"])
        with pytest.raises(ValueError, match="lora_scale"):
            pipe.fuse_lora(lora_scale=float("nan"))
        pipe.set_adapters(["style"], [10.0])  # the bound itself is allowed
        pipe.set_adapters(["style"], [-0.5])
        pipe.set_adapters(["style"], None)
    finally:
        pipe.unload_lora_weights()


# ---------------------------------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("field", ["cfg_scale", "stg_scale", "modality_scale"])
def test_guidance_scale_bounds(field):
    for value in (100.0, -100.0, 0.0, 7.0):
        assert getattr(MultiModalGuidance(**{field: value}), field) == value
    for value in (100.5, -101, 1e30, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=field):
            MultiModalGuidance(**{field: value})


def test_rescale_bounds():
    for value in (0.0, 0.45, 1.0, 2.0):
        assert MultiModalGuidance(rescale_scale=value).rescale_scale == value
    for value in (-0.1, 2.01, 1e30, float("nan")):
        with pytest.raises(ValueError, match=r"rescale_scale must be .*\[0, 2\]|rescale_scale must be finite"):
            MultiModalGuidance(rescale_scale=value)


def test_bound_functions():
    assert check_guidance_scale("x", 3) == 3.0 and check_lora_strength("s", 0.8) == 0.8
    assert check_frame_rate(24) == 24.0 and check_frame_rate(240) == 240.0
    for value in (0, -1, 241, 1e6, float("nan")):
        with pytest.raises(ValueError, match="frame_rate"):
            check_frame_rate(value)
    check_adapter_weights({"a": [1.0, None], "b": {"transformer": 0.5}})
    with pytest.raises(ValueError, match=r"adapter_weights\['b'\]\['transformer'\]"):
        check_adapter_weights({"a": 1.0, "b": {"transformer": float("inf")}})
    check_video_size(MAX_NUM_FRAMES, 64, 64)
    with pytest.raises(ValueError, match="max_num_frames"):
        check_video_size(MAX_NUM_FRAMES + 8, 64, 64)
    check_video_size(MAX_NUM_FRAMES + 8, 64, 64, max_num_frames=2000)  # the override
    with pytest.raises(ValueError, match="262144"):
        check_video_size(521, 2048, 2048)  # 66 x 64 x 64 latent tokens
    check_video_size(521, 2048, 2048, max_video_tokens=270336)
    with pytest.raises(ValueError, match="max_num_frames must be a positive integer"):
        check_video_size(9, 64, 64, max_num_frames=0)


# ---------------------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    checkpoint = factories.build_checkpoint(root / "tiny.safetensors", "2.3", seed=4)
    upsampler = factories.build_upsampler(root / "up.safetensors", seed=5)
    lora = factories.build_lora(root / "lora.safetensors", checkpoint, seed=6, dtype=torch.float32)
    return LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, 0.6), torch_dtype=torch.float32
    )


@pytest.fixture
def no_compute(pipe, monkeypatch):
    """Fails if the transformer or an audio encoder runs; records how much audio was decoded."""
    decoded = []

    def forbidden(*args, **kwargs):
        raise AssertionError("compute ran before the input was refused")

    def recording_load_audio(source, start_time=0.0, max_duration=None, sample_rate=None, **kwargs):
        decoded.append(max_duration)
        return load_audio(source, start_time=start_time, max_duration=max_duration, sample_rate=sample_rate, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", forbidden)
    monkeypatch.setattr(pipe, "encode_audio_tokens", forbidden)
    monkeypatch.setattr(pipeline_module, "load_audio", recording_load_audio)
    return decoded


def _call(pipe, audio, **kwargs):
    args = dict(
        audio=audio,
        audio_sample_rate=16000,
        prompt_contexts=contexts(0, "2.3"),
        negative_prompt_contexts=contexts(1, "2.3"),
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=2,
        video_guidance=MultiModalGuidance(stg_blocks=[1]),
        output_type="np",
    )
    args.update(kwargs)
    return pipe(**args)


TEN_MINUTES = np.zeros(16000 * 600, np.float32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_frames=1009), "num_frames=1009 is above the bound of 1001"),
        (dict(num_frames=129, height=4096, width=4096), "278528 video latent tokens, above the bound of 262144"),
        (dict(frame_rate=1e6), "frame_rate must be in"),
        (dict(frame_rate=float("inf")), "frame_rate must be finite"),
        (dict(distilled_lora_scale=float("nan")), "distilled_lora_scale must be finite"),
        (dict(distilled_lora_scale=1e30), "distilled_lora_scale must be within"),
        (dict(num_frames=None), "num_frames=None: the audio covers more than 1001 frames at 24.0 fps"),
        (dict(num_frames=None, frame_rate=240.0, audio_max_duration=30.0), "more than 1001 frames at 240.0 fps"),
        (dict(num_frames=None, max_num_frames=100), "more than 100 frames"),
        (dict(max_num_frames=-1), "max_num_frames must be a positive integer"),
    ],
)
def test_pipeline_refuses_before_compute(pipe, no_compute, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(pipe, TEN_MINUTES, **kwargs)
    # A frame count derived from the audio reads only the bound's worth of audio (plus 8 frames) to find out.
    frame_rate = kwargs.get("frame_rate", 24.0)
    limit = kwargs.get("max_num_frames", MAX_NUM_FRAMES)
    assert all(d is not None and d <= (limit + 8) / frame_rate + 1e-9 for d in no_compute)


def test_pipeline_refuses_a_poisoned_audio_file(pipe, no_compute, tmp_path):
    samples = np.zeros(16000, np.float32)
    samples[100] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav.*NaN or infinite samples"):
        _call(pipe, str(tmp_path / "nan.wav"), audio_sample_rate=None)


def test_the_frame_bound_override_admits_long_audio(pipe, monkeypatch):
    """`max_num_frames` raises the bound: the derived count then passes the checks (stopped at the encoder)."""
    seen = {}

    def stop(waveform, sample_rate, num_frames, frame_rate, dtype):
        seen["num_frames"] = num_frames
        raise KeyboardInterrupt

    monkeypatch.setattr(pipe, "encode_audio_tokens", stop)
    with pytest.raises(KeyboardInterrupt):
        _call(pipe, TEN_MINUTES[: 16000 * 50], num_frames=None, max_num_frames=1201, stage_2=False)
    assert seen["num_frames"] == 1193  # 50 s at 24 fps = 1200 -> 8k + 1


# ---------------------------------------------------------------------------------------------------- images
def _png16(path, pixels):
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB): gray (H, W) or RGB (H, W, 3) uint16."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, width * channels).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


STEP = 2 / 255  # one 8-bit quantisation step in the [-1, 1] tensors


def _twins(tmp_path, channels):
    rng = np.random.default_rng(channels)
    shape = (48, 40) if channels == 1 else (48, 40, 3)
    pixels16 = rng.integers(0, 65536, shape).astype(np.uint16)
    pixels8 = np.rint(pixels16 / 257).astype(np.uint8)
    path8 = tmp_path / f"twin{channels}_8.png"
    PIL.Image.fromarray(pixels8).save(path8)
    return _png16(tmp_path / f"twin{channels}_16.png", pixels16), path8, pixels16


# With crf > 0 the picture goes through H.264 as 8 bits, which amplifies any one-step difference on noise: there the
# gray 16-bit image (rounded to 8 bits exactly as its twin) must come out identical.
@pytest.mark.parametrize(("channels", "crf"), [(1, 0), (3, 0), (1, 33)])
def test_16_bit_png_matches_its_8_bit_twin(tmp_path, channels, crf):
    path16, path8, _ = _twins(tmp_path, channels)
    expected_mode = "I;16" if channels == 1 else "RGB"  # PIL reads 16-bit RGB as 8-bit RGB (high byte)
    assert PIL.Image.open(path16).mode == expected_mode
    loaded16 = prepare_condition_image(str(path16), 64, 64, crf=crf)
    loaded8 = prepare_condition_image(str(path8), 64, 64, crf=crf)
    delta = (loaded16 - loaded8).abs().max().item()
    assert delta <= (STEP + 1e-6 if crf == 0 else 0.0), delta / STEP
    assert abs(loaded16.mean().item() - loaded8.mean().item()) < STEP / 4
    assert (loaded16 > 0.99).float().mean() < 0.05  # not the 99.6 % white the issue found


def test_other_high_bit_depth_modes(tmp_path):
    _, path8, pixels16 = _twins(tmp_path, 1)
    expected = prepare_condition_image(str(path8), 64, 64, crf=0)
    gray16 = PIL.Image.fromarray(pixels16)
    images = {
        "I (32-bit integer)": gray16.convert("I"),
        "F (float TIFF)": None,
        "I;16 TIFF": None,
        "uint16 array": pixels16,
        "float array": pixels16.astype(np.float32) / 65535,
    }
    PIL.Image.fromarray(pixels16.astype(np.float32) / 65535).save(tmp_path / "float.tif")
    images["F (float TIFF)"] = str(tmp_path / "float.tif")
    gray16.save(tmp_path / "gray16.tif")
    images["I;16 TIFF"] = str(tmp_path / "gray16.tif")
    assert PIL.Image.open(images["F (float TIFF)"]).mode == "F"
    for name, image in images.items():
        delta = (prepare_condition_image(image, 64, 64, crf=0) - expected).abs().max().item()
        assert delta <= STEP / 2 + 1e-6, (name, delta / STEP)


def test_high_bit_depth_garbage_refused(tmp_path):
    nan = np.full((8, 8), 0.5, np.float32)
    nan[2, 2] = np.nan
    PIL.Image.fromarray(nan).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match=r"nan\.tif.*NaN or infinite"):
        prepare_condition_image(str(tmp_path / "nan.tif"), 32, 32)
    negative = PIL.Image.fromarray(np.full((8, 8), -5, np.int32))
    with pytest.raises(ValueError, match="16-bit"):
        prepare_condition_image(negative, 32, 32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_condition_image(np.full((8, 8, 3), 2.0, np.float32), 32, 32)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\njunk")
    with pytest.raises(ValueError, match=r"junk\.png.*cannot be read"):
        prepare_condition_image(str(tmp_path / "junk.png"), 32, 32)


def test_pipeline_reads_condition_images_before_any_audio(pipe, no_compute, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ValueError, match=r"conditions\[0\]: condition image .*broken\.png.* cannot be read"):
        _call(pipe, TEN_MINUTES[:16000], conditions=[(str(tmp_path / "broken.png"), 0, 1.0)])
    with pytest.raises(ValueError, match=r"conditions\[0\]\.crf must be an integer in \[0, 51\]"):
        _call(pipe, TEN_MINUTES[:16000], conditions=[(np.zeros((8, 8, 3), np.uint8), 0, 1.0, 99)])
    assert no_compute == []  # refused before the audio was even decoded


def _nan_contexts(index):
    video, audio = contexts(index, "2.3")
    video = video.clone()
    video[0, 0, 0] = float("nan")
    return video, audio


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(prompt_contexts=_nan_contexts(0)), ValueError, "prompt_contexts holds NaN or infinite values"),
        (dict(negative_prompt_contexts=_nan_contexts(1)), ValueError, "negative_prompt_contexts holds NaN"),
        (
            dict(
                prompt_contexts=None,
                prompt_embeds=torch.full((1, 4, 8), float("inf")),
                prompt_attention_mask=torch.ones(1, 4, dtype=torch.long),
            ),
            ValueError,
            "^prompt_embeds holds NaN",
        ),
        (
            dict(prompt_contexts=tuple(c.to(torch.int64) for c in contexts(0, "2.3"))),
            TypeError,
            "prompt_contexts must be floating point",
        ),
        (dict(prompt_contexts=("a", "b")), ValueError, r"prompt_contexts must be \(video_context, audio_context\)"),
    ],
)
def test_non_finite_or_wrong_text_conditioning_refused_before_compute(pipe, no_compute, kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(pipe, np.zeros(16000, np.float32), **kwargs)


_EMBEDS = torch.zeros(1, 4, 8)
_MASK = torch.ones(1, 4, dtype=torch.long)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(prompt="a cat"), "pass prompt or prompt_contexts, not both"),
        (
            dict(prompt_contexts=None, prompt="a cat", prompt_embeds=_EMBEDS, prompt_attention_mask=_MASK),
            "pass prompt or prompt_embeds, not both",
        ),
        (dict(prompt_embeds=_EMBEDS, prompt_attention_mask=_MASK), "pass prompt_embeds or prompt_contexts, not both"),
        (dict(negative_prompt="blurry"), "pass negative_prompt or negative_prompt_contexts, not both"),
        (
            dict(
                negative_prompt_contexts=None,
                negative_prompt="blurry",
                negative_prompt_embeds=_EMBEDS,
                negative_prompt_attention_mask=_MASK,
            ),
            "pass negative_prompt or negative_prompt_embeds, not both",
        ),
        (dict(prompt_contexts=None, prompt_embeds=_EMBEDS), "prompt_embeds needs its prompt_attention_mask"),
        (
            dict(negative_prompt_contexts=None, negative_prompt_embeds=_EMBEDS),
            "negative_prompt_embeds needs its negative_prompt_attention_mask",
        ),
        (dict(prompt_attention_mask=_MASK), "prompt_attention_mask is the mask of prompt_embeds"),
    ],
)
@pytest.mark.parametrize("family", ["A2V", "AV", "I2AV"])
def test_one_source_per_text_and_embeds_with_their_mask(pipe, no_compute, family, kwargs, match):
    """diffusers' `LTX2Pipeline.check_inputs`: the text, its features or its contexts (one of them), and
    features only with their attention mask; refused before compute by every pipeline of the family."""
    from ltx2_diffusers import LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline

    args = dict(
        prompt_contexts=contexts(0, "2.3"), negative_prompt_contexts=contexts(1, "2.3"), height=64, width=64,
        num_frames=9, num_inference_steps=2, video_guidance=MultiModalGuidance(stg_blocks=[1]), output_type="np",
    )  # fmt: skip
    if family == "A2V":
        target = pipe
        args.update(audio=np.zeros(16000, np.float32), audio_sample_rate=16000)
    elif family == "AV":
        target = LTX2AudioVideoPipeline.from_pipe(pipe)
    else:
        target = LTX2ImageToAudioVideoPipeline.from_pipe(pipe)
        args["image"] = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=match):
        target(**{**args, **kwargs})
    assert no_compute == []


# ------------------------------------------------------------------------------ audio rate and condition images
@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 10**9, 1, True])
def test_pipeline_refuses_absurd_audio_sample_rates(pipe, no_compute, rate):
    with pytest.raises(ValueError, match=r"`audio_sample_rate`.*(whole number of Hz|\[100, 384000\] Hz)"):
        _call(pipe, np.zeros(16000, np.float32), audio_sample_rate=rate)


def test_pipeline_takes_bf16_audio(pipe, no_compute):
    """A bf16 waveform is read (as float32) and reaches the audio encoder (the stop set by `no_compute`)."""
    with pytest.raises(AssertionError, match="compute ran"):
        _call(pipe, torch.zeros(2, 16000, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((2, 20000, 3), np.uint8), r"conditions\[0\]: .*20000x2 pixels; each side must be at most 16384"),
        (np.zeros((2, 2000, 3), np.uint8), r"conditions\[0\]: .*2000x2 pixels, an aspect ratio above 16:1"),
        (np.zeros((400, 20, 3), np.uint8), r"conditions\[0\]: .*20x400 pixels, an aspect ratio above 16:1"),
        (PIL.Image.new("RGB", (17, 1)), r"conditions\[0\]: .*at least 2x2"),
        (PIL.Image.new("L", (20000, 4)), r"conditions\[0\]: .*each side must be at most 16384"),
    ],
)
def test_absurd_condition_images_refused_before_any_audio(pipe, no_compute, image, match):
    for crf in (0, 33):
        with pytest.raises(ValueError, match=match):
            _call(pipe, np.zeros(16000, np.float32), conditions=[(image, 0, 1.0, crf)])
    assert no_compute == []


@pytest.mark.parametrize("field", [1, 2, 3])
def test_bool_condition_fields_refused(pipe, no_compute, field):
    condition = [np.zeros((8, 8, 3), np.uint8), 0, 1.0, 33]
    condition[field] = True
    name = ["image", "frame_index", "strength", "crf"][field]
    with pytest.raises(TypeError, match=rf"conditions\[0\]\.{name} must be a number, not a bool"):
        _call(pipe, np.zeros(16000, np.float32), conditions=[tuple(condition)])
    assert no_compute == []


def test_condition_image_bounds_and_low_precision_tensors():
    # 16:1 is the bound: accepted, and a panorama covers the frame as before.
    assert prepare_condition_image(np.full((4, 64, 3), 200, np.uint8), 32, 32, crf=0).shape == (1, 3, 1, 32, 32)
    with pytest.raises(ValueError, match="aspect ratio above 16:1"):
        prepare_condition_image(np.zeros((4, 65, 3), np.uint8), 32, 32, crf=0)
    # A bf16 / float16 tensor in [0, 1] is read like its float32 value (exact widening).
    pixels = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.bfloat16, torch.float16):
        low = pixels.to(dtype)
        for crf in (0, 33):
            ours = prepare_condition_image(low, 32, 32, crf=crf)
            assert torch.equal(ours, prepare_condition_image(low.float(), 32, 32, crf=crf))
    nan = pixels.bfloat16()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prepare_condition_image(nan, 32, 32)


def test_numpy_scalar_condition_fields_are_read_as_numbers():
    from ltx2_diffusers.pipelines.image_conditions import LTX2ImageCondition, normalize_conditions

    image = np.zeros((8, 8, 3), np.uint8)
    (condition,) = normalize_conditions([(image, np.int64(8), np.float32(0.5), np.int32(10))], num_frames=9)
    assert (condition.frame_index, condition.strength, condition.crf) == (8, 0.5, 10)
    assert (type(condition.frame_index), type(condition.strength), type(condition.crf)) == (int, float, int)
    assert normalize_conditions([LTX2ImageCondition(image, 0, 1.0)], 9)[0] == LTX2ImageCondition(image, 0, 1.0)
    with pytest.raises(ValueError, match=r"conditions\[0\]\.strength must be in \[0, 1\]"):
        normalize_conditions([(image, 0, np.float32(1.5))], 9)
    with pytest.raises(ValueError, match=r"conditions\[0\]\.frame_index must be a non-negative integer"):
        normalize_conditions([(image, np.float64(1.5), 1.0)], 9)


def test_a_list_of_audio_files_is_refused_naming_audio(pipe, no_compute, tmp_path):
    """One audio per call: a list (of files or arrays) is refused before anything runs, naming `audio` (before:
    load_audio's internal `source`)."""
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    for audio in ([str(path), str(path)], (np.zeros(16000, np.float32),)):
        with pytest.raises(TypeError, match=r"^audio must be one path, file object or numpy/torch array") as info:
            _call(pipe, audio)
        assert "source" not in str(info.value)
    assert no_compute == []


def test_audio_messages_name_the_pipelines_arguments(pipe, no_compute, tmp_path):
    """The pipeline's `audio` / `audio_sample_rate`, not load_audio's internal `source` / `sample_rate`; refused
    before any model (`no_compute`)."""
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    samples = np.zeros(16000, np.float32)
    cases = [
        (None, dict(audio_sample_rate=None), TypeError, r"^`audio` must be a path, .*got NoneType"),
        (path.read_bytes(), dict(audio_sample_rate=None), TypeError, r"^`audio` must be a path, .*got bytes"),
        (samples, dict(audio_sample_rate=None), ValueError, r"^`audio_sample_rate` is required when `audio` is an"),
        (str(path), {}, ValueError, r"^`audio_sample_rate` is only for array `audio`"),
        (np.zeros((2, 3, 4), np.float32), {}, ValueError, r"^`audio` array must be \[samples\]"),
    ]
    for audio, kwargs, error, match in cases:
        with pytest.raises(error, match=match) as info:
            _call(pipe, audio, **kwargs)
        assert "source" not in str(info.value) and "`sample_rate`" not in str(info.value)


@pytest.mark.parametrize(
    ("image", "strength", "error", "match"),
    [
        ([PIL.Image.new("RGB", (8, 8))], 1.0, TypeError, r"^image must be one image \(the first frame\), got a list"),
        (np.zeros((8, 8, 3), np.uint8), 2, ValueError, r"^image_strength must be in \[0, 1\], got 2"),
        (np.zeros((8, 8, 3), np.uint8), float("nan"), ValueError, r"^image_strength must be in \[0, 1\]"),
        (np.zeros((8, 8, 3), np.uint8), True, TypeError, r"^image_strength must be a number, not a bool"),
        (np.zeros((2, 2000, 3), np.uint8), 1.0, ValueError, r"^image: .*an aspect ratio above 16:1"),
    ],
)
def test_image_to_audio_video_messages_name_image_and_image_strength(pipe, no_compute, image, strength, error, match):
    """The image-to-audio-video pipeline's `image` / `image_strength`, not its internal `conditions[0]`."""
    from ltx2_diffusers import LTX2ImageToAudioVideoPipeline

    i2av = LTX2ImageToAudioVideoPipeline.from_pipe(pipe)
    with pytest.raises(error, match=match) as info:
        i2av(
            image, image_strength=strength, prompt_contexts=contexts(0, "2.3"),
            negative_prompt_contexts=contexts(1, "2.3"), height=64, width=64, num_frames=9, num_inference_steps=2,
        )  # fmt: skip
    assert "conditions" not in str(info.value).split(";")[0]


def test_meta_latents_are_refused_before_the_audio_is_decoded(pipe, no_compute):
    latents = torch.empty(1, pipe.transformer.config.in_channels, 2, 1, 1, device="meta")
    with pytest.raises(ValueError, match=r"^latents is on the meta device, which holds no values"):
        _call(pipe, np.zeros(16000, np.float32), latents=latents)
    assert no_compute == []  # before the audio was decoded


def test_condition_tensors_are_read_channels_last_and_channels_first_is_refused():
    """What the image-to-AV docstring says: an (H, W, 3) tensor is read as its array; a (3, H, W) one is refused
    with a TypeError saying how to pass it."""
    pixels = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        prepare_condition_image(pixels, 32, 32, crf=0), prepare_condition_image(pixels.numpy(), 32, 32, crf=0)
    )
    with pytest.raises(TypeError, match=r"channels last.*\(3, 40, 56\).*permute\(1, 2, 0\)"):
        prepare_condition_image(pixels.permute(2, 0, 1), 32, 32)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        prepare_condition_image([[0.5]], 32, 32)


@pytest.mark.parametrize("single", ["tuple", "object"])
def test_image_to_audio_video_takes_one_further_condition_as_the_others_do(pipe, no_compute, single):
    """`conditions=` one condition (a tuple or an `LTX2ImageCondition`), as `normalize_conditions` takes it: it is
    the second condition (it was unpacked into its fields, or not iterable)."""
    from ltx2_diffusers import LTX2ImageCondition, LTX2ImageToAudioVideoPipeline

    image = np.zeros((8, 8, 3), np.uint8)
    further = (image, 99, 1.0) if single == "tuple" else LTX2ImageCondition(image, 99, 1.0)
    i2av = LTX2ImageToAudioVideoPipeline.from_pipe(pipe)
    with pytest.raises(ValueError, match=r"^conditions\[1\]\.frame_index 99 is out of range for 9 frames"):
        i2av(
            image, conditions=further, prompt_contexts=contexts(0, "2.3"), negative_prompt_contexts=contexts(1, "2.3"),
            height=64, width=64, num_frames=9, num_inference_steps=2,
        )  # fmt: skip
    assert no_compute == []


def test_audio_window_messages_name_the_pipelines_arguments(pipe, no_compute, tmp_path):
    """A start past the end of the audio names `audio_start_time`, not load_audio's internal `start_time`."""
    import scipy.io.wavfile

    path = tmp_path / "half.wav"
    scipy.io.wavfile.write(path, 16000, np.zeros(8000, np.int16))
    for audio in (path, np.zeros(8000, np.float32)):
        extra = {"audio_sample_rate": None} if isinstance(audio, type(path)) else {}  # a file has its own rate
        with pytest.raises(ValueError, match=r": audio_start_time=5\.0 s is at or past the end of the audio"):
            _call(pipe, audio, audio_start_time=5.0, **extra)
    assert len(no_compute) == 2  # refused while reading the audio; no model ran (the fixture)
