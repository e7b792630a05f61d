"""The user's folder the CLI file-safety tests run in: a song and a converted-model folder (its index only)."""

import numpy as np
import soundfile as sf

from ltx2_diffusers import a2vid, av_cli


CLIS = {"a2v": (a2vid, "ltx2-a2v"), "av": (av_cli, "ltx2-av")}


def song_and_model(folder) -> None:
    """`song.wav` (3 s, 220 Hz, 16 kHz) and `model/model_index.json` (a dev model) in `folder`."""
    t = np.arange(16000 * 3) / 16000
    sf.write(folder / "song.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    (folder / "model").mkdir()
    (folder / "model" / "model_index.json").write_text('{"model_variant": "dev"}')
