"""`loaders.device_placement`: the staged copy leaves modules exactly as `module.to(device)` does.

The staging logic (chunking through small buffers, memory order, the `_apply` conversion) runs here with unpinned
buffers and a CPU target: every host tensor is then copied into a fresh tensor, where `to("cpu")` would keep it;
the values, dtypes, parameter objects, `requires_grad`, tied parameters and hooks are compared with the module
before the placement."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from ltx2_diffusers.loaders.device_placement import StagingPool, place_modules, stageable


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class Odd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.big = torch.nn.Linear(64, 48, dtype=torch.bfloat16)  # 6144 bytes: many staging buffers
        self.small = torch.nn.Linear(3, 5)  # float32, bias: tiny tensors packed into one buffer
        self.tied = torch.nn.Linear(64, 48, bias=False, dtype=torch.bfloat16)
        self.tied.weight = self.big.weight  # one parameter object in two modules
        self.frozen = torch.nn.Parameter(torch.randn(7, 9, generator=g, dtype=torch.float16), requires_grad=False)
        self.strided = torch.nn.Parameter(torch.randn(6, 4, generator=g).t())  # non-contiguous: plain path
        self.register_buffer("steps", torch.arange(11, dtype=torch.int64))
        self.register_buffer("scalar", torch.tensor(2.5, dtype=torch.float64))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("empty", torch.empty(0, 3))
        self.register_buffer("nan", torch.tensor([float("nan"), float("inf"), -0.0]))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
        self.small.weight.grad = torch.randn(5, 3, generator=g)  # grads move with their parameter


def _snapshot(module):
    params = {n: (p, p.dtype, p.requires_grad, _raw(p), p.data_ptr()) for n, p in module.named_parameters()}
    buffers = {n: (b.dtype, _raw(b), b.shape) for n, b in module.named_buffers()}
    return params, buffers


@pytest.mark.parametrize("nbytes,buffers", [(1000, 2), (7, 3), (1 << 20, 1)])
def test_staged_copy_equals_to(nbytes, buffers):
    module = Odd()
    hook = module.big.register_forward_hook(lambda *a: None)
    before_params, before_buffers = _snapshot(module)
    grad = _raw(module.small.weight.grad)
    place_modules([module], "cpu", pool=StagingPool("cpu", buffers=buffers, nbytes=nbytes, pinned=False))

    params = dict(module.named_parameters())
    assert params.keys() == before_params.keys()
    moved = 0
    for name, (obj, dtype, requires_grad, raw, ptr) in before_params.items():
        p = params[name]
        assert p is obj, name  # the same nn.Parameter object, as to() keeps it
        assert isinstance(p, torch.nn.Parameter) and p.dtype == dtype and p.requires_grad == requires_grad
        assert _raw(p) == raw, name  # bit for bit
        moved += p.data_ptr() != ptr
    assert module.tied.weight is module.big.weight  # still tied
    assert moved == 5  # big.weight, big.bias, small.weight, small.bias, frozen: copied; strided: plain to()
    assert params["strided"].data_ptr() == before_params["strided"][4]
    assert not params["frozen"].requires_grad and params["frozen"].data_ptr() != before_params["frozen"][4]
    assert _raw(module.small.weight.grad) == grad
    for name, b in module.named_buffers():
        dtype, raw, shape = before_buffers[name]
        assert b.dtype == dtype and b.shape == shape and _raw(b) == raw, name
    assert list(module.big._forward_hooks) == [hook.id]  # hooks untouched


def test_moved_count_counts_every_staged_parameter():
    module = Odd()
    staged = {n for n, p in module.named_parameters() if stageable(p.data)}
    assert staged == {"big.weight", "big.bias", "small.weight", "small.bias", "frozen"}


def test_user_edits_after_loading_are_copied_and_the_file_is_untouched(tmp_path):
    """Weights memory-mapped from a safetensors file, edited in place after loading: the placement copies the
    tensors as they are (never the file), and the file keeps its bytes."""
    source = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(16, 8)).to(torch.bfloat16)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    module = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(16, 8)).to(torch.bfloat16)
    module.load_state_dict(load_file(path), assign=True)  # memory-mapped tensors, as diffusers' loading keeps them
    with torch.no_grad():
        module[0].weight.mul_(3)  # the user's edit
        module[1].bias.fill_(0.5)
    expected = {k: _raw(v) for k, v in module.state_dict().items()}
    place_modules([module], "cpu", pool=StagingPool("cpu", buffers=2, nbytes=256, pinned=False))
    assert {k: _raw(v) for k, v in module.state_dict().items()} == expected
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_cpu_target_without_pool_is_plain_to():
    module = Odd()
    ptrs = {n: p.data_ptr() for n, p in module.named_parameters()}
    place_modules([module], "cpu")
    assert {n: p.data_ptr() for n, p in module.named_parameters()} == ptrs  # to("cpu"): nothing copied


def test_buffer_requiring_grad_goes_through_to():
    module = torch.nn.Module()
    module.register_buffer("b", torch.ones(4, requires_grad=True))
    place_modules([module], "cpu", pool=StagingPool("cpu", buffers=1, nbytes=8, pinned=False))
    assert module.b.requires_grad and torch.equal(module.b.detach(), torch.ones(4))


@pytest.mark.parametrize("kwargs", [dict(buffers=0), dict(buffers=True), dict(nbytes=0), dict(nbytes=2.5)])
def test_pool_arguments_checked(kwargs):
    with pytest.raises(ValueError, match="buffers|nbytes"):
        StagingPool("cpu", pinned=False, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_placement_equals_to_cuda(tmp_path):
    """On CUDA, pinned buffers and a copy stream: the same tensors as `to("cuda")`, bit for bit, from memory-mapped
    weights larger than the staging buffers."""
    source = Odd()
    path = tmp_path / "w.safetensors"
    save_file({k: v.detach().contiguous() for k, v in source.state_dict().items() if k != "tied.weight"}, path)
    a, b = Odd(), Odd()
    for m in (a, b):
        state = load_file(path)
        state["tied.weight"] = state["big.weight"]
        m.load_state_dict(state, assign=True)
        m.tied.weight = m.big.weight
    a.to("cuda")
    place_modules([b], "cuda", pool=StagingPool("cuda", buffers=2, nbytes=1000))
    for (name, x), (_, y) in zip(
        [*a.named_parameters(), *a.named_buffers()], [*b.named_parameters(), *b.named_buffers()]
    ):
        assert y.device.type == "cuda" and x.dtype == y.dtype and _raw(x.cpu()) == _raw(y.cpu()), name
    assert b.tied.weight is b.big.weight
    place_modules([b], "cuda")  # already there: nothing changes
