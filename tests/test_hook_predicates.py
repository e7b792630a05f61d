"""The shared hook predicates of `ltx2_diffusers.utils.hooks`: which hook kinds each one counts."""

import torch
from accelerate.hooks import ModelHook as AccelerateHook
from accelerate.hooks import add_hook_to_module, remove_hook_from_module
from diffusers.hooks import HookRegistry, ModelHook, apply_group_offloading

from ltx2_diffusers.utils.hooks import carries_hooks, placed_by_offload


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_bare_module_and_torch_hooks_count_for_neither():
    model = _model()
    model[1][0].register_forward_hook(lambda *_: None)
    model.register_forward_pre_hook(lambda *_: None)
    assert not carries_hooks(model) and not placed_by_offload(model)


def test_accelerate_hook_on_a_nested_module_counts_for_both_until_removed():
    model = _model()
    add_hook_to_module(model[1][0], AccelerateHook())
    assert carries_hooks(model) and placed_by_offload(model)
    assert not carries_hooks(model[0]) and not placed_by_offload(model[0])
    remove_hook_from_module(model[1][0])
    assert not carries_hooks(model) and not placed_by_offload(model)


def test_a_set_but_none_hf_hook_counts_only_as_placed():
    model = _model()
    model[1][0]._hf_hook = None
    assert not carries_hooks(model) and placed_by_offload(model)


def test_a_diffusers_hook_that_moves_no_weights_counts_only_as_a_hook():
    model = _model()
    registry = HookRegistry.check_if_exists_or_initialize(model[1])
    assert not carries_hooks(model)  # an empty registry holds no hook
    registry.register_hook(ModelHook(), "user_hook")
    assert carries_hooks(model) and not placed_by_offload(model)


def test_group_offload_counts_for_both():
    model = _model()
    apply_group_offloading(model, onload_device=torch.device("cpu"), offload_type="leaf_level")
    assert carries_hooks(model) and placed_by_offload(model)
