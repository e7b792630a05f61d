"""A distilled LoRA that cannot be applied is refused with a ValueError naming the module: a lora_A / lora_B pair of
mismatched rank when the store is built, and a pair that does not fit the transformer in check_inputs, before any
transformer forward (not at stage 2, after stage 1's compute)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import build_checkpoint, build_upsampler
from test_pipeline import call

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2DistilledLoRA


def test_mismatched_rank_is_refused_when_built():
    with pytest.raises(ValueError, match=r"distilled LoRA 0: lora_A \[2, 4\] and lora_B \[6, 3\]"):
        LTX2DistilledLoRA.from_state_dict(
            {"transformer.0.lora_A.weight": torch.randn(2, 4), "transformer.0.lora_B.weight": torch.randn(6, 3)}
        )
    with pytest.raises(ValueError, match="lora_A"):
        LTX2DistilledLoRA.from_state_dict(
            {"transformer.0.lora_A.weight": torch.randn(2, 4, 1), "transformer.0.lora_B.weight": torch.randn(6, 2)}
        )


def test_check_fits_names_the_module():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6))
    misfit = LTX2DistilledLoRA.from_state_dict(
        {"transformer.0.lora_A.weight": torch.randn(2, 5), "transformer.0.lora_B.weight": torch.randn(6, 2)}
    )
    with pytest.raises(ValueError, match=r"distilled LoRA 0: A\[2, 5\] B\[6, 2\] do not fit the weight \[6, 4\]"):
        misfit.check_fits(model)
    absent = LTX2DistilledLoRA.from_state_dict(
        {"transformer.7.lora_A.weight": torch.randn(2, 4), "transformer.7.lora_B.weight": torch.randn(6, 2)}
    )
    with pytest.raises(ValueError, match="'7' is not a module of the transformer"):
        absent.check_fits(model)
    with pytest.raises(ValueError, match="not a module"):
        with absent.applied(model, 1.0):
            pass
    assert type(model[0]) is torch.nn.Linear


def test_a_misfit_distilled_lora_is_refused_before_any_compute(tmp_path):
    checkpoint = build_checkpoint(tmp_path / "ltx-2.3-tiny.safetensors", "2.3", seed=5)
    upsampler = build_upsampler(tmp_path / "upsampler.safetensors", seed=6)
    rate = 16000
    sf.write(tmp_path / "a.wav", np.sin(np.arange(rate) / rate * 2 * np.pi * 220) * 0.3, rate)
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, torch_dtype=torch.float32
    )
    name, module = next((n, m) for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear))
    out_features, in_features = module.weight.shape
    misfit = LTX2DistilledLoRA.from_state_dict({
        f"transformer.{name}.lora_A.weight": torch.randn(2, in_features + 1),
        f"transformer.{name}.lora_B.weight": torch.randn(out_features, 2),
    })  # fmt: skip
    pipe.register_modules(distilled_lora=misfit)
    forwards = []
    pipe.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(ValueError, match=f"distilled LoRA {name}: .* do not fit the weight"):
        call(pipe, tmp_path / "a.wav", stage_2=True)
    assert forwards == []


def test_one_linear_twice_is_refused_and_left_clean():
    """Two targets resolving to one linear (a name and its `.base_layer`-free twin), or `applied` nested, would
    overwrite the delta and break the restore (the class left swapped, every `weight` read a KeyError)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 6))
    store = LTX2DistilledLoRA.from_state_dict(
        {"transformer.0.lora_A.weight": torch.randn(2, 4), "transformer.0.lora_B.weight": torch.randn(6, 2)}
    )
    x = torch.randn(3, 4)
    plain = model(x)
    with store.applied(model, 0.5):
        with pytest.raises(ValueError, match="already carries a distilled LoRA"):
            with store.applied(model, 0.5):
                pass
        inside = model(x)
    assert not torch.equal(inside, plain)
    assert type(model[0]) is torch.nn.Linear and torch.equal(model(x), plain)


def pair(rank=2, inp=4, out=6):
    return {
        "transformer.0.lora_A.weight": torch.randn(rank, inp),
        "transformer.0.lora_B.weight": torch.randn(out, rank),
    }


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "only 0 bytes long"),
        (b"\x00" * 64, "invalid header length"),
        (b"not a safetensors file at all", "not a safetensors file"),
    ],
)
def test_a_file_that_is_not_safetensors_is_refused_naming_it(tmp_path, content, fragment):
    path = tmp_path / "pytorch_lora_weights.safetensors"
    path.write_bytes(content)
    for source in (path, tmp_path):
        with pytest.raises(ValueError, match=fragment) as error:
            LTX2DistilledLoRA.from_pretrained(source)
        assert str(path) in str(error.value)


def test_a_file_without_transformer_lora_tensors_is_refused_naming_it(tmp_path):
    from safetensors.torch import save_file

    only_connectors = tmp_path / "connectors.safetensors"
    save_file({"connectors.x.lora_A.weight": torch.randn(2, 4)}, only_connectors)
    empty = tmp_path / "empty.safetensors"
    save_file({}, empty)
    for path in (only_connectors, empty):
        with pytest.raises(ValueError, match="holds no transformer LoRA tensors") as error:
            LTX2DistilledLoRA.from_pretrained(path)
        assert str(path) in str(error.value)


def test_an_empty_or_non_tensor_state_dict_is_refused():
    with pytest.raises(ValueError, match="state_dict is empty"):
        LTX2DistilledLoRA.from_state_dict({})
    bad = pair()
    bad["transformer.0.lora_B.weight"] = [[1.0, 2.0]] * 6
    with pytest.raises(TypeError, match=r"'transformer\.0\.lora_B\.weight' is a list, expected a torch.Tensor"):
        LTX2DistilledLoRA.from_state_dict(bad)
    with pytest.raises(TypeError, match="mapping"):
        LTX2DistilledLoRA.from_state_dict(list(pair().items()))


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 1e30, -10.5, 10.0001])
def test_a_scale_outside_the_documented_bound_is_refused_and_nothing_is_applied(scale):
    from ltx2_diffusers.validation import MAX_LORA_STRENGTH

    model = torch.nn.Sequential(torch.nn.Linear(4, 6))
    store = LTX2DistilledLoRA.from_state_dict(pair())
    with pytest.raises(
        ValueError, match=rf"scale must be (finite|within \[-{MAX_LORA_STRENGTH:g}, {MAX_LORA_STRENGTH:g}\])"
    ):
        with store.applied(model, scale):
            pass
    assert type(model[0]) is torch.nn.Linear
    with pytest.raises(TypeError, match="scale must be a real number"):
        with store.applied(model, "0.5"):
            pass
    x = torch.randn(3, 4)
    with store.applied(model, MAX_LORA_STRENGTH):  # the bound itself is accepted
        at_bound = model(x)
    a, b = store.pairs()["0"]
    expected = torch.nn.functional.linear(x, model[0].weight + (b * MAX_LORA_STRENGTH) @ a, model[0].bias)
    assert (at_bound - expected).abs().max() <= 1e-5
