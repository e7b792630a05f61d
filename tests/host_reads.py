"""`HostReads`: a torch function mode recording the calls that, on a GPU, read a tensor's value back on the host
or build a tensor from host values (each waits for the device's queued work). On this CPU-only machine it stands in
for `torch.cuda.set_sync_debug_mode` (tests/test_denoise_host_syncs.py, benchmarks/host_syncs.py)."""

import traceback

import torch
from torch.overrides import TorchFunctionMode


#: Tensor methods / torch functions that wait for a GPU (a value read on the host) or copy from host memory.
SYNCING = {
    "item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "tensor", "as_tensor", "nonzero",
    "masked_select", "unique", "argwhere",
}  # fmt: skip


class HostReads(TorchFunctionMode):
    """Records the syncing calls made while active (`SYNCING`); with `device_moves`, also every `to(device)` (a
    copy from the host when the tensor lives there: on this CPU-only machine every move is a no-op to the CPU)."""

    def __init__(self, device_moves: bool = False):
        super().__init__()
        self.device_moves = device_moves
        self.calls: list[str] = []
        self.sites: list[str] = []  # per call: "file:line function" of the package's innermost frame

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        moves = name == "to" and any(isinstance(a, (torch.device, str)) for a in (*args[1:], kwargs.get("device")))
        if name in SYNCING or (self.device_moves and moves):
            self.calls.append(name)
            self.sites.append(package_site(traceback.extract_stack()[:-1]))
        return func(*args, **kwargs)


def package_site(stack) -> str:
    """`file:line function` of the innermost frame of `stack` inside the ltx2_diffusers package (else the innermost)."""
    frames = [f for f in stack if "ltx2_diffusers" in f.filename] or list(stack)
    frame = frames[-1]
    return f"{frame.filename.split('ltx2_diffusers/')[-1]}:{frame.lineno} {frame.name}"
