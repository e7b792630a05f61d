"""`enable_fp8_scaled_mm`: float8 matmuls of the block linears through `torch._scaled_mm`. The GPU path is measured by
benchmarks/a2v_end_to_end.py (`ours-fp8*` sides); here: refusal off the GPU with weights untouched, and the
quantised linears' arithmetic (CPU `_scaled_mm`, through the same patching the GPU path uses) against the float32
model."""

from __future__ import annotations

import hashlib

import pytest
import torch
from factories import build_checkpoint, run_ours_transformer, transformer_parity_inputs

from ltx2_diffusers import LTX2AudioVideoTransformer
from ltx2_diffusers.loaders import fp8


@pytest.fixture()
def model(tmp_path):
    path = tmp_path / "model.safetensors"
    build_checkpoint(path, "2.3", seed=4, components=("transformer",), num_layers=2)
    return LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32)


def _digest(model):
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refused_on_cpu_before_touching_weights(model):
    before = _digest(model)
    with pytest.raises(ValueError, match="CUDA GPU"):
        fp8.enable_fp8_scaled_mm(model)
    assert _digest(model) == before
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bad_arguments_are_refused(model):
    with pytest.raises(ValueError, match="granularity"):
        fp8.enable_fp8_scaled_mm(model, granularity="block")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fp8.enable_fp8_scaled_mm({"transformer_blocks.0.attn1.to_q.weight": torch.zeros(16, 16)})
    with pytest.raises(ValueError, match="no transformer block linears"):
        fp8.enable_fp8_scaled_mm(torch.nn.Linear(16, 16))


@pytest.mark.parametrize("rowwise", [True, False], ids=["row", "tensor"])
def test_quantised_linears_follow_the_float_model(model, rowwise):
    x = transformer_parity_inputs(model.config)
    expected = run_ours_transformer(model, x)
    targets = fp8._scaled_mm_targets(model)
    names = fp8._patch_scaled_mm(targets, rowwise=rowwise)
    # Every attention projection and feed-forward linear of every block, nothing else.
    assert len(names) == 2 * (6 * 4 + 2 * 2)
    assert all(m.weight.dtype == torch.float8_e4m3fn for _, m in targets)
    assert model.proj_in.weight.dtype == torch.float32
    out = run_ours_transformer(model, x)
    for got, ref in zip(out, expected):
        assert torch.isfinite(got).all()
        rel = ((got - ref).norm() / ref.norm()).item()
        # e4m3 keeps 3 mantissa bits: a few percent per matmul, and not zero (the matmuls really ran in float8).
        assert 1e-4 < rel < 0.15, rel
