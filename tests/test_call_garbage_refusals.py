"""Garbage found by the third input audit, refused before compute with a TypeError / ValueError naming the argument:
bools where a count or flag is meant, `conditions` that are not a list, an audio window too short for the audio VAE's
STFT (refused before the text is encoded), and audio of more than 8 channels (a PyAV IndexError before)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from converted_folder import converted_folder
from family_call import FAMILY_MODELS, family_call, family_pipes, tiny_call_args

from ltx2_diffusers import MultiModalGuidance, load_audio
from ltx2_diffusers.audio.io import _downmix


GUIDANCE = MultiModalGuidance(stg_blocks=[1])
AUDIO = (0.3 * np.sin(np.linspace(0.0, 400.0, 16000))).astype(np.float32)[None]  # 1 s at 16 kHz
IMAGE = np.full((64, 64, 3), 128, dtype=np.uint8)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    return family_pipes(converted_folder(tmp_path_factory.mktemp("garbage3"), 71))


def forbidden(*args, **kwargs):
    raise AssertionError("a model or the text encoding ran before the input was refused")


@pytest.fixture
def no_compute(pipes, monkeypatch):
    """Every model of the pipelines (they share them), the audio encoding and the text contexts raise if they run."""
    for name in FAMILY_MODELS:
        monkeypatch.setattr(getattr(pipes["av"], name), "forward", forbidden)
    monkeypatch.setattr(pipes["av"].audio_vae, "encode_waveform", forbidden)
    for pipe in pipes.values():
        monkeypatch.setattr(pipe, "prepare_contexts", forbidden)


def call(pipe, **kwargs):
    return family_call(pipe, GUIDANCE, AUDIO, IMAGE, **kwargs)


CASES = [
    # num_frames=True ran as 1 frame, guidance_batch_size=True as 1 pass per forward
    ("num_frames", True, ValueError, "num_frames"),
    ("guidance_batch_size", True, ValueError, "guidance_batch_size"),
    # stage_2="yes" ran two stages, stage_2=None one; return_dict=None returned a tuple
    ("stage_2", "yes", TypeError, "stage_2 must be a bool"),
    ("stage_2", None, TypeError, "stage_2 must be a bool"),
    ("stage_2", 1, TypeError, "stage_2 must be a bool"),
    ("return_dict", None, TypeError, "return_dict must be a bool"),
    ("return_dict", "yes", TypeError, "return_dict must be a bool"),
    # conditions=5: "'int' object is not iterable"; "abc" / a dict: "conditions[0] ... got str" (its characters/keys)
    ("conditions", 5, TypeError, "conditions must be None, an LTX2ImageCondition"),
    ("conditions", "abc", TypeError, "conditions must be None, an LTX2ImageCondition"),
    ("conditions", {"image": IMAGE}, TypeError, "conditions must be None, an LTX2ImageCondition"),
]


@pytest.mark.parametrize("kind", ["av", "a2v", "i2av"])
@pytest.mark.parametrize(
    "name, value, error, match", CASES, ids=[f"{c[0]}={type(c[1]).__name__}:{str(c[1])[:8]}" for c in CASES]
)
def test_refused_before_compute(pipes, no_compute, kind, name, value, error, match):
    with pytest.raises(error, match=match):
        call(pipes[kind], **{name: value})


def test_wrong_length_condition_tuple_is_named_not_dumped(pipes, no_compute):
    """The message named the tuple by its repr: the whole image array (thousands of characters)."""
    with pytest.raises(
        ValueError, match=r"conditions\[0\] must be \(image, frame_index, strength\[, crf\]\), got a tuple of 5"
    ) as info:
        call(pipes["av"], conditions=[(IMAGE, 0, 1.0, 33, 1)])
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("samples, num_frames", [(300, 1), (300, None), (100, None)])
def test_audio_too_short_for_the_stft_is_refused_before_the_text(pipes, no_compute, samples, num_frames):
    """300 samples at 16 kHz under one 24 fps frame: refused by the mel STFT inside encode_waveform, after the text
    contexts were prepared (the text encoder had run)."""
    audio = np.full((1, samples), 0.1, dtype=np.float32)
    with pytest.raises(ValueError, match=r"audio is too short to encode: .*n_fft // 2 = 512"):
        call(pipes["a2v"], audio=audio, num_frames=num_frames, stage_2=False)


def test_audio_just_long_enough_for_the_stft_still_runs(pipes):
    """513 samples (n_fft // 2 + 1) under one frame: accepted and encoded."""
    out = call(pipes["a2v"], audio=np.full((1, 1000), 0.1, np.float32)[:, :513], num_frames=1, stage_2=False)
    assert torch.isfinite(out.frames).all() and out.audio.shape == (1, 513)


def nine_channels():
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((9, 4000))).astype(np.float32)


def even_odd_average(samples):
    """The documented downmix of a layout FFmpeg has no matrix for: even channels left, odd channels right."""
    return np.stack([samples[0::2].mean(axis=0), samples[1::2].mean(axis=0)])


def test_nine_channel_array_is_downmixed():
    """An IndexError from inside PyAV before."""
    samples = nine_channels()
    waveform, rate = load_audio(samples, sample_rate=16000)
    assert rate == 16000
    np.testing.assert_allclose(waveform.numpy(), even_odd_average(samples), atol=1e-6)


def test_nine_channel_wav_is_downmixed(tmp_path):
    samples = nine_channels()
    path = tmp_path / "nine.wav"
    sf.write(path, samples.T, 16000, subtype="FLOAT")
    waveform, rate = load_audio(path)
    assert rate == 16000
    np.testing.assert_allclose(waveform.numpy(), even_odd_average(samples), atol=1e-6)


META = torch.device("meta")


def meta_contexts(pipe):
    return tuple(c.to(META) for c in tiny_call_args(pipe, GUIDANCE)["prompt_contexts"])


@pytest.mark.parametrize(
    "kind, kwargs, match",
    [
        ("av", lambda p: dict(prompt_contexts=meta_contexts(p)), "prompt_contexts"),
        ("a2v", lambda p: dict(negative_prompt_contexts=meta_contexts(p)), "negative_prompt_contexts"),
        ("av", lambda p: dict(conditions=[(torch.zeros(64, 64, 3, device=META), 0, 1.0)]), r"conditions\[0\]"),
        ("i2av", lambda p: dict(image=torch.zeros(64, 64, 3, device=META)), "image"),
        ("a2v", lambda p: dict(audio=torch.zeros(1, 16000, device=META)), "audio"),
    ],
    ids=["prompt_contexts", "negative_prompt_contexts", "condition_image", "image", "audio"],
)
def test_meta_tensors_are_refused_naming_the_argument(pipes, no_compute, kind, kwargs, match):
    """A NotImplementedError from torch ('Cannot copy out of meta tensor') before."""
    with pytest.raises(ValueError, match=rf"{match}.*on the meta device, which holds no values"):
        call(pipes[kind], **kwargs(pipes[kind]))


@pytest.mark.parametrize("sigmas", [[1.0], [1.0, 0.0], torch.tensor([0.5])])
def test_a_one_step_sigma_table_is_refused_naming_sigmas(pipes, no_compute, sigmas):
    """The message named num_inference_steps ('... in [2, 1000], got 1'), which the caller had not passed."""
    with pytest.raises(ValueError, match=r"^sigmas gives 1 step .*at least 2"):
        call(pipes["av"], sigmas=sigmas, num_inference_steps=None)


def test_a_text_mode_audio_file_object_is_refused(tmp_path):
    """A UnicodeDecodeError from the codecs module before."""
    path = tmp_path / "tone.wav"
    sf.write(path, AUDIO.T, 16000)
    with open(path) as text, pytest.raises(TypeError, match=r"`source` is a text file object: .*binary mode"):
        load_audio(text)


@pytest.mark.parametrize("scalar", [np.float32(0.1), np.int16(3)])
def test_a_numpy_scalar_audio_is_refused_by_its_shape(scalar):
    """It was taken for a file: "`sample_rate` is only for array `source`"."""
    with pytest.raises(
        ValueError, match=r"`source` array must be \[samples\] or \[channels \(1\.\.64\), samples\], got shape \(\)"
    ):
        load_audio(scalar, sample_rate=16000)


@pytest.mark.parametrize("layout", ["7.1", "7.1.4"])
def test_a_named_layout_of_eight_channels_or_more_is_downmixed_by_its_matrix(layout):
    """Only the centre channel: FFmpeg's matrix puts it in both sides (-3 dB), every time; PyAV's planar frame failed
    at 8 channels (7.1: always the even/odd fallback, dialogue hard left) and read past its 8 plane pointers above."""
    import av

    names = [c.name for c in av.AudioLayout(layout).channels]
    samples = np.zeros((len(names), 1600), np.float32)
    samples[names.index("FC")] = 0.5
    for _ in range(4):
        stereo = _downmix(samples, layout, 16000)
        np.testing.assert_allclose(stereo[:, 0], [0.5 / np.sqrt(2)] * 2, rtol=1e-6)


def test_five_one_downmixes_as_before():
    """Below 8 channels the packed frame gives the planar frame's stereo exactly (FFmpeg's 5.1 matrix)."""
    import av

    rng = np.random.default_rng(1)
    samples = (0.2 * rng.standard_normal((6, 1600))).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="5.1")
    frame.sample_rate = 16000
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=16000)
    planar = np.concatenate([f.to_ndarray() for f in resampler.resample(frame) + resampler.resample(None)], axis=1)
    np.testing.assert_array_equal(_downmix(samples, "5.1", 16000), planar)


def test_a_numpy_string_is_a_path(tmp_path):
    """`np.str_` (a path from a pandas column) was taken for an array of samples."""
    path = tmp_path / "tone.wav"
    sf.write(path, AUDIO[0], 16000)
    waveform, rate = load_audio(np.array([str(path)])[0])
    assert rate == 16000 and waveform.shape == (1, 16000)
