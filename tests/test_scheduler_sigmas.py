"""The reference's sigma tables and Euler step through a registered diffusers FlowMatchEulerDiscreteScheduler."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES

from ltx2_diffusers.schedules import (
    DISTILLED_SIGMAS,
    STAGE_2_DISTILLED_SIGMAS,
    check_scheduler,
    flow_match_scheduler_config,
    scheduler_step,
    set_scheduler_sigmas,
)


def reference_table(name):
    """The reference's own tensors: LTX2Scheduler's default tables and the distilled constants."""
    if name in ("30", "40"):
        return LTX2Scheduler().execute(steps=int(name))
    if name == "hq_15":
        return LTX2Scheduler().execute(steps=15, latent=torch.zeros(1, 128, 16, 17, 30))
    values = {"distilled": DISTILLED_SIGMA_VALUES, "stage_2": STAGE_2_DISTILLED_SIGMA_VALUES}[name]
    return torch.tensor(values, dtype=torch.float32)


TABLES = ["30", "40", "hq_15", "distilled", "stage_2"]


def scheduler():
    return FlowMatchEulerDiscreteScheduler(**flow_match_scheduler_config())


@pytest.mark.parametrize("form", ["tensor", "list", "without_final_zero", "ours"])
@pytest.mark.parametrize("name", TABLES)
def test_scheduler_sigmas_equal_reference_tables(name, form):
    table = reference_table(name)
    given = {
        "tensor": table,
        "list": table.tolist(),
        "without_final_zero": table[:-1],
        "ours": {"distilled": DISTILLED_SIGMAS, "stage_2": STAGE_2_DISTILLED_SIGMAS}.get(name, table),
    }[form]
    sched = scheduler()
    sigmas = set_scheduler_sigmas(sched, given, device="cpu")
    assert sigmas.dtype == torch.float32
    assert torch.equal(sigmas, table)
    assert torch.equal(sched.sigmas, table)
    assert sched.num_inference_steps == len(table) - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", TABLES)
def test_scheduler_step_equals_reference_euler_step(name, dtype):
    """A whole loop through scheduler.step equals ltx-core's EulerDiffusionStep bit for bit, step by step."""
    table = reference_table(name)
    sched = scheduler()
    set_scheduler_sigmas(sched, table)
    g = torch.Generator().manual_seed(len(table))
    sample = torch.randn(1, 24, 16, generator=g).to(dtype)
    expected = sample
    for i in range(len(table) - 1):
        denoised = (0.8 * torch.randn(1, 24, 16, generator=g)).to(dtype)
        expected = EulerDiffusionStep().step(expected, denoised, table, i)
        sample = scheduler_step(sched, sample, denoised)
        assert sample.dtype == dtype
        assert torch.equal(sample, expected), i
    with pytest.raises(ValueError, match="no step left"):
        scheduler_step(sched, sample, sample)


def test_scheduler_is_reusable_after_a_run():
    sched = scheduler()
    for name in ("distilled", "stage_2", "30"):
        table = reference_table(name)
        assert torch.equal(set_scheduler_sigmas(sched, table), table)
        sample = torch.ones(1, 4, 2)
        expected = sample
        for i in range(len(table) - 1):
            expected = EulerDiffusionStep().step(expected, 0.5 * expected, table, i)
            sample = scheduler_step(sched, sample, 0.5 * sample)
        assert torch.equal(sample, expected)


def test_user_scheduler_options_are_honoured():
    """A user's shift is the user's: the table goes through it (not silently replaced by the reference's)."""
    sched = FlowMatchEulerDiscreteScheduler(**{**flow_match_scheduler_config(), "shift": 3.0})
    table = reference_table("distilled")
    sigmas = set_scheduler_sigmas(sched, table)
    assert not torch.equal(sigmas, table)
    steps = table[:-1].numpy()
    assert torch.equal(sigmas[:-1], torch.from_numpy(3.0 * steps / (1 + 2.0 * steps)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: DDIMScheduler(),
        lambda: FlowMatchHeunDiscreteScheduler(),
        lambda: type("MyEuler", (FlowMatchEulerDiscreteScheduler,), {})(),
    ],
    ids=["ddim", "heun", "subclass"],
)
def test_unsupported_scheduler_class_is_refused_by_name(make):
    sched = make()
    with pytest.raises(ValueError, match=type(sched).__name__):
        check_scheduler(sched)
    with pytest.raises(ValueError, match=type(sched).__name__):
        set_scheduler_sigmas(sched, DISTILLED_SIGMAS)


@pytest.mark.parametrize("option", ["stochastic_sampling", "invert_sigmas", "use_dynamic_shifting"])
def test_unsupported_scheduler_option_is_refused_by_name(option):
    sched = FlowMatchEulerDiscreteScheduler(**{**flow_match_scheduler_config(), option: True})
    with pytest.raises(ValueError, match=option):
        set_scheduler_sigmas(sched, DISTILLED_SIGMAS)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ([1.0, float("nan"), 0.0], ValueError, "finite"),
        ([1.0, 0.5, 0.7, 0.0], ValueError, "decrease"),
        ([1.5, 0.5, 0.0], ValueError, r"\(0, 1\]"),
        ([0.5, 0.0, 0.0], ValueError, r"\(0, 1\]"),
        ([0.0], ValueError, "at least one"),
        ([], ValueError, "at least one"),
        (torch.ones(2, 2), ValueError, "one-dimensional"),
        ("1.0", TypeError, "sequence"),
        ([1.0, "x"], TypeError, "real number"),
        (torch.tensor([1, 0], dtype=torch.bool), TypeError, "real numbers"),
    ],
)
def test_bad_sigmas_are_refused_before_the_scheduler_changes(bad, error, match):
    sched = scheduler()
    set_scheduler_sigmas(sched, DISTILLED_SIGMAS)
    before = sched.sigmas.clone()
    with pytest.raises(error, match=match):
        set_scheduler_sigmas(sched, bad)
    assert torch.equal(sched.sigmas, before)


def test_scheduler_options_that_break_the_table_are_refused():
    sched = FlowMatchEulerDiscreteScheduler(**{**flow_match_scheduler_config(), "shift": -0.5})
    with pytest.raises(ValueError, match="scheduler's options"):
        set_scheduler_sigmas(sched, [1.0, 0.5, 0.0])
