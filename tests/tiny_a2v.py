"""Small builders the audio-to-video pipeline tests share: a tone WAV and a single-file fp32 pipeline."""

import numpy as np
import soundfile as sf
import torch

from ltx2_diffusers import LTX2AudioToVideoPipeline


def write_tone(path, hz: float = 200.0, seconds: float = 0.6, rate: int = 16000, amplitude: float = 0.4):
    """A mono float32 sine of `hz` at `rate` written to `path`; returns `path`."""
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    return path


def single_file_pipe(checkpoint, upsampler, lora, scale: float) -> LTX2AudioToVideoPipeline:
    """`LTX2AudioToVideoPipeline.from_single_file` in float32 with the upsampler and the distilled LoRA at `scale`."""
    return LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, scale), torch_dtype=torch.float32
    )
