"""No float32 copy of the whole video on the host unless asked for (issue 12): `output_type="pil"` and the CLIs'
mp4 writer turn the frames into uint8 on the device first, with exactly the values the float path gives after
its own uint8 conversion; `"np"` keeps diffusers' float frames, `"pt"` stays on the device."""

import numpy as np
import pytest
import torch
from factories import build_checkpoint
from test_pipeline_parity import contexts
from tiny_a2v import write_tone

from ltx2_diffusers import LTX2AudioToVideoPipeline, MultiModalGuidance, video_io
from ltx2_diffusers.video_io import frames_to_uint8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("host_copy")
    checkpoint = build_checkpoint(root / "ltx-2.3-tiny.safetensors", "2.3", seed=51)
    write_tone(root / "a.wav", hz=260)
    pipe = LTX2AudioToVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32)
    return pipe, root / "a.wav"


def frames(setup, output_type):
    pipe, audio = setup
    return pipe(
        audio=audio,
        prompt_contexts=contexts(0, "2.3"),
        negative_prompt_contexts=contexts(1, "2.3"),
        height=64,
        width=96,
        num_frames=9,
        num_inference_steps=2,
        stage_2=False,
        video_guidance=MultiModalGuidance(stg_blocks=[1]),
        generator=torch.Generator().manual_seed(3),
        output_type=output_type,
    ).frames


def test_pil_frames_are_the_float_frames_rounded(setup, monkeypatch):
    floats = frames(setup, "np")  # (1, F, H, W, 3) float32, unchanged
    assert floats.dtype == np.float32 and floats.shape == (1, 9, 64, 96, 3)
    copied = []
    cpu = torch.Tensor.cpu

    def recording_cpu(self, *args, **kwargs):
        copied.append((self.dtype, self.numel()))
        return cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", recording_cpu)
    pil = frames(setup, "pil")
    monkeypatch.undo()
    video = [(dtype, n) for dtype, n in copied if n == floats.size]
    assert video == [(torch.uint8, floats.size)]  # the only whole-video host copy is uint8
    pixels = np.stack([np.asarray(image) for image in pil[0]])
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, (floats[0] * 255).round().astype(np.uint8))  # the former PIL conversion
    assert len(np.unique(pixels)) > 50  # a real image, not a constant


def test_the_cli_writer_path_equals_the_float_path(setup):
    on_device = frames(setup, "pt")  # what the CLIs ask for now: (1, F, 3, H, W) on the execution device
    assert isinstance(on_device, torch.Tensor) and on_device.shape == (1, 9, 3, 64, 96)
    floats = frames(setup, "np")  # what they asked for before
    written = frames_to_uint8(on_device[0])
    assert written.dtype == np.uint8 and written.shape == (9, 64, 96, 3)
    assert np.array_equal(written, frames_to_uint8(floats[0]))


def _rounding_cases() -> torch.Tensor:
    """Frames holding exact half-way values (k + 0.5) / 255 in float32, values just around them, out-of-range
    values (clipped) and random ones."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 6, 10, 3, generator=g)
    halves = (torch.arange(256, dtype=torch.float32) + 0.5) / 255
    flat = x.view(-1)
    flat[:256] = halves
    flat[256:512] = torch.nextafter(halves, torch.tensor(2.0))
    flat[512:600] = torch.linspace(-0.5, 1.5, 88)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "batched"])
def test_tensor_frames_convert_on_their_device_as_numpy_does(dtype, layout, monkeypatch):
    x = _rounding_cases().to(dtype)
    if layout == "channels_first":
        x = x.permute(0, 3, 1, 2)
    elif layout == "batched":
        x = x.permute(0, 3, 1, 2)[None]
    reference = video_io._to_numpy(x, "frames")  # the former path: float on the host, then numpy's rounding
    expected = frames_to_uint8(reference)

    to_numpy = video_io._to_numpy

    def no_float_host_copy(value, name):
        assert not isinstance(value, torch.Tensor), "a float tensor went through the host float path"
        return to_numpy(value, name)

    monkeypatch.setattr(video_io, "_to_numpy", no_float_host_copy)
    for chunk in (2**24, 6 * 10 * 3, 1):  # whole, one frame at a time, one element (at least a frame) at a time
        got = video_io._tensor_to_uint8(x, "frames", chunk_elements=chunk)
        assert np.array_equal(frames_to_uint8(got), expected)
    assert np.array_equal(frames_to_uint8(x), expected)


def test_tensor_frames_refusals_and_warning(caplog):
    with pytest.raises(ValueError, match="`frames` contains NaN or infinite values"):
        frames_to_uint8(torch.full((2, 4, 4, 3), float("nan")))
    bad = torch.zeros(3, 4, 4, 3)
    bad[2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="`video` contains NaN or infinite values"):
        video_io._tensor_to_uint8(bad, "video", chunk_elements=1)
    with pytest.raises(ValueError, match=r"must be shaped \(frames, height, width, 3\)"):
        frames_to_uint8(torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="must have 3 \\(RGB\\) channels"):
        frames_to_uint8(torch.zeros(2, 4, 4, 5))
    with pytest.raises(ValueError, match="is empty"):
        frames_to_uint8(torch.zeros(0, 4, 4, 3))
    negative = torch.full((2, 4, 4, 3), -0.2)
    with caplog.at_level("WARNING", logger=video_io.logger.name):
        assert frames_to_uint8(negative).max() == 0
    assert "has negative values (min -0.200)" in caplog.text
