"""Transformer and converted-folder parity where each side builds its OWN positions from the same latent sizes.

The reference gets positions from ltx-core's latent tools (patchifier + causal fix + fps); ours from our pipeline's
latent-state helpers, or from the model itself (sizes only). Sizes and fps vary so that every axis matters.
"""

import pytest
import torch
from factories import build_checkpoint, cached_checkpoint, load_reference, read_config
from own_coords import Sizes, max_abs_diff, reference_inputs, run_ours, run_reference

from ltx2_diffusers import LTX2AudioVideoTransformer
from ltx2_diffusers.convert import convert_checkpoint


TOL = 1e-5
SIZES = [Sizes(), Sizes(frames=4, height=3, width=2, audio_frames=9, fps=25.0, sigma=0.4)]
CONFIGS = [("2.0", "interleaved", False), ("2.3", "split", True)]


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
def single_file(request, tmp_path_factory):
    version, rope_type, double = request.param
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    build_checkpoint(
        path, version, seed=7, components=("transformer",), rope_type=rope_type, double_precision=double, num_layers=2
    )
    ours = LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32).eval()
    return read_config(path), ours, load_reference(path, "transformer")


@pytest.fixture(scope="module", params=["2.0", "2.3"])
def converted(request, tmp_path_factory):
    checkpoint = cached_checkpoint("checkpoint", request.param, seed=11)
    out = tmp_path_factory.mktemp("conv") / "folder"
    convert_checkpoint(checkpoint, out, dtype="float32")
    ours = LTX2AudioVideoTransformer.from_pretrained(out, subfolder="transformer").eval()
    return read_config(checkpoint), ours, load_reference(checkpoint, "transformer")


@pytest.mark.parametrize("coords", ["pipeline", "model"])
@pytest.mark.parametrize("sizes", SIZES, ids=["3x2x3@24", "4x3x2@25"])
def test_single_file_transformer_own_positions(single_file, sizes, coords):
    config, ours, reference = single_file
    video, audio = reference_inputs(config, sizes)
    delta = max_abs_diff(run_ours(ours, video, audio, sizes, coords), run_reference(reference, video, audio))
    assert delta <= TOL, f"{coords} coordinates, {sizes}: max|ours - ltx-core| = {delta:.3g}"


@pytest.mark.parametrize("coords", ["pipeline", "model"])
@pytest.mark.parametrize("sizes", SIZES, ids=["3x2x3@24", "4x3x2@25"])
def test_converted_transformer_own_positions(converted, sizes, coords):
    config, ours, reference = converted
    video, audio = reference_inputs(config, sizes)
    delta = max_abs_diff(run_ours(ours, video, audio, sizes, coords), run_reference(reference, video, audio))
    assert delta <= TOL, f"{coords} coordinates, {sizes}: max|ours - ltx-core| = {delta:.3g}"
