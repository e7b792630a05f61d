"""`from_single_file(dtype=...)`: diffusers' current name for the weights' dtype, `torch_dtype` its older one."""

import pytest
import torch

from ltx2_diffusers import LTX2AudioToVideoPipeline


factories = pytest.importorskip("factories")


@pytest.fixture(scope="module")
def checkpoint():
    return factories.cached_checkpoint("checkpoint", "2.3", seed=4)


def _dtypes(pipe):
    return {name: {p.dtype for p in c.parameters()} for name, c in pipe.components.items() if hasattr(c, "parameters")}


def test_dtype_and_torch_dtype_load_the_same_weights(checkpoint):
    new = LTX2AudioToVideoPipeline.from_single_file(checkpoint, dtype=torch.float32)
    old = LTX2AudioToVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32)
    assert all(dtypes == {torch.float32} for dtypes in _dtypes(new).values())
    for name, component in new.components.items():
        if hasattr(component, "state_dict"):
            expected = getattr(old, name).state_dict()
            assert all(torch.equal(v, expected[k]) for k, v in component.state_dict().items()), name


def test_default_is_bfloat16(checkpoint):
    pipe = LTX2AudioToVideoPipeline.from_single_file(checkpoint)
    assert _dtypes(pipe)["transformer"] == {torch.bfloat16}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dtype": torch.float32, "torch_dtype": torch.float32}, ValueError, "not both"),
        ({"dtype": "float32"}, TypeError, "floating torch.dtype"),
        ({"dtype": torch.int8}, TypeError, "^dtype must be a floating torch.dtype"),
        ({"torch_dtype": torch.int8}, TypeError, "^torch_dtype must be a floating torch.dtype"),
    ],
)
def test_bad_dtypes_are_refused_before_reading(checkpoint, kwargs, error, match, monkeypatch):
    from ltx2_diffusers.loaders import single_file

    monkeypatch.setattr(single_file, "read_metadata", lambda *a: pytest.fail("the checkpoint was read"))
    with pytest.raises(error, match=match):
        LTX2AudioToVideoPipeline.from_single_file(checkpoint, **kwargs)
