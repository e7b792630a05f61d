"""The transformer, audio VAE and vocoder refuse a config outside the single-file bounds (`check_config_bounds`) or
with a size the model divides by / builds with that is not > 0: a ValueError naming the key, and the file
(`from_pretrained` of a converted folder's component, or of the whole pipeline) or the class (`__init__`), instead
of NaN outputs, a ZeroDivisionError or a torch error."""

import json
import math
import shutil

import pytest
import torch
from converted_folder import converted_folder

from ltx2_diffusers import AutoencoderAudioMel, LTX2AudioToVideoPipeline, LTX2AudioVideoTransformer, LTX2HiFiGANVocoder


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return converted_folder(tmp_path_factory.mktemp("config_checks"), 81)


CASES = [
    ("transformer", LTX2AudioVideoTransformer, "norm_eps", math.nan),
    ("transformer", LTX2AudioVideoTransformer, "norm_eps", -1e-6),
    ("transformer", LTX2AudioVideoTransformer, "num_attention_heads", 0),
    ("transformer", LTX2AudioVideoTransformer, "attention_head_dim", -32),
    ("transformer", LTX2AudioVideoTransformer, "audio_num_attention_heads", 0),
    ("transformer", LTX2AudioVideoTransformer, "in_channels", "128"),
    ("transformer", LTX2AudioVideoTransformer, "rope_theta", math.inf),
    ("transformer", LTX2AudioVideoTransformer, "num_layers", 10**9),
    ("transformer", LTX2AudioVideoTransformer, "vae_scale_factors", [8, 0, 32]),
    ("audio_vae", AutoencoderAudioMel, "mel_bins", 0),
    ("audio_vae", AutoencoderAudioMel, "sample_rate", math.nan),
    ("audio_vae", AutoencoderAudioMel, "base_channels", -1),
    ("audio_vae", AutoencoderAudioMel, "ch_mult", [1, 0, 4]),
    ("vocoder", LTX2HiFiGANVocoder, "hop_length", 0),
    ("vocoder", LTX2HiFiGANVocoder, "upsample_factors", [5, -2]),
    ("vocoder", LTX2HiFiGANVocoder, "input_sampling_rate", math.inf),
    ("vocoder", LTX2HiFiGANVocoder, "hidden_channels", 1.5),
]


def broken_copy(converted, tmp_path, component, key, value):
    folder = tmp_path / "conv"
    shutil.copytree(converted, folder)
    path = folder / component / "config.json"
    config = json.loads(path.read_text())
    assert key in config
    config[key] = value
    path.write_text(json.dumps(config))  # NaN / Infinity as Python's json writes them
    return folder, path


@pytest.mark.parametrize("component, cls, key, value", CASES, ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_a_bad_config_is_refused_naming_the_key_and_the_file(converted, tmp_path, component, cls, key, value):
    folder, path = broken_copy(converted, tmp_path, component, key, value)
    with pytest.raises(ValueError, match=rf"config value {key}") as error:
        cls.from_pretrained(folder / component)
    assert str(path) in str(error.value)
    with pytest.raises(ValueError, match=rf"config value {key}") as error:
        LTX2AudioToVideoPipeline.from_pretrained(folder)
    assert str(path) in str(error.value)
    config = cls.load_config(converted / component)
    init = {k: v for k, v in config.items() if not k.startswith("_")}
    with pytest.raises(ValueError, match=rf"'{cls.__name__}': config value {key}"):
        cls(**{**init, key: value})


@pytest.mark.parametrize("component, cls", [("transformer", LTX2AudioVideoTransformer),
                                            ("audio_vae", AutoencoderAudioMel), ("vocoder", LTX2HiFiGANVocoder)])  # fmt: skip
def test_the_converted_configs_and_the_defaults_pass(converted, component, cls):
    cls.from_pretrained(converted / component)
    cls.from_config(cls.load_config(converted / component))
    with torch.device("meta"):
        cls()  # the released checkpoint's defaults
