"""Sigma schedules and Euler stepping, bit-exact against ltx-core / ltx-pipelines."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.utils import to_denoised as ref_to_denoised
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES

from ltx2_diffusers.schedules import (
    DISTILLED_SIGMAS,
    STAGE_2_DISTILLED_SIGMAS,
    euler_step,
    flow_match_scheduler_config,
    ltx2_sigmas,
    to_denoised,
)


def ref_sigmas(steps, latent_shape=None, **kwargs):
    latent = None if latent_shape is None else torch.zeros(latent_shape)
    return LTX2Scheduler().execute(steps=steps, latent=latent, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# LTX2Scheduler


@pytest.mark.parametrize("steps", [2, 3, 8, 15, 20, 30, 40, 50])
def test_default_sigmas_match_reference(steps):
    ours = ltx2_sigmas(steps)
    assert ours.dtype == torch.float32 and ours.shape == (steps + 1,)
    assert torch.equal(ours, ref_sigmas(steps))
    assert ours[-2].item() == pytest.approx(0.1) and ours[-1].item() == 0.0


def test_30_steps_match_documented_values():
    # Values printed from the reference (LTX2_REFERENCE.md section 4.1), six significant digits.
    documented = (
        "1.0 0.994957 0.989603 0.983908 0.97784 0.971358 0.964421 0.956978 0.948972 0.940336 0.930994 0.920854 "
        "0.90981 0.897735 0.884479 0.869858 0.853651 0.835584 0.815319 0.792427 0.766363 0.736418 0.701656 "
        "0.660813 0.612141 0.553148 0.480164 0.387541 0.26612 0.1 0.0"
    )
    documented = torch.tensor([float(x) for x in documented.split()])
    torch.testing.assert_close(ltx2_sigmas(30), documented, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "latent_shape",
    [(1, 128, 16, 17, 30), (1, 128, 2, 4, 4), (1, 128, 4, 16, 16), (2, 128, 31, 16, 24), (1, 8, 126, 16)],
    ids=["hq_stage1", "32_tokens", "4096_tokens", "11904_tokens", "audio_shape"],
)
@pytest.mark.parametrize("steps", [15, 30, 40])
def test_latent_aware_sigmas_match_reference(latent_shape, steps):
    ours = ltx2_sigmas(steps, math.prod(latent_shape[2:]))
    assert torch.equal(ours, ref_sigmas(steps, latent_shape))


def test_none_tokens_is_4096():
    assert torch.equal(ltx2_sigmas(30), ltx2_sigmas(30, 4096))
    assert not torch.equal(ltx2_sigmas(30), ltx2_sigmas(30, 8160))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"terminal": 0.05},
        {"terminal": 0.3, "max_shift": 1.5, "base_shift": 0.5},
        {"stretch": False},
        {"stretch": False, "max_shift": 3.0},
    ],
)
def test_sigma_options_match_reference(kwargs):
    for steps, tokens in [(30, None), (20, 6000), (7, 500)]:
        shape = None if tokens is None else (1, 128, tokens, 1, 1)
        assert torch.equal(ltx2_sigmas(steps, tokens, **kwargs), ref_sigmas(steps, shape, **kwargs))


def test_sigmas_device_argument():
    assert ltx2_sigmas(5, device="cpu").device == torch.device("cpu")
    assert torch.equal(ltx2_sigmas(1, stretch=False), ref_sigmas(1, stretch=False))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0,), {}, ValueError, "num_inference_steps"),
        ((1,), {}, ValueError, "num_inference_steps"),
        ((2.0,), {}, TypeError, "num_inference_steps"),
        ((30, 0), {}, ValueError, "num_tokens"),
        ((30, 4096.0), {}, TypeError, "num_tokens"),
        ((30,), {"terminal": 1.0}, ValueError, "terminal"),
        ((30,), {"terminal": 0.0}, ValueError, "terminal"),
        ((30,), {"max_shift": float("nan")}, ValueError, "max_shift"),
        ((30, 10**7), {}, ValueError, "num_tokens"),
    ],
)
def test_sigmas_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        ltx2_sigmas(*args, **kwargs)


def test_degenerate_token_count_is_rejected_where_reference_gives_nan():
    tokens = 100_000
    assert torch.isnan(ref_sigmas(30, (1, 128, tokens, 1, 1))).any()
    with pytest.raises(ValueError, match="degenerate"):
        ltx2_sigmas(30, tokens)


# ---------------------------------------------------------------------------------------------------------------
# Distilled tables


def test_distilled_tables_match_reference():
    assert DISTILLED_SIGMAS == tuple(DISTILLED_SIGMA_VALUES)
    assert STAGE_2_DISTILLED_SIGMAS == tuple(STAGE_2_DISTILLED_SIGMA_VALUES)
    # As tensors, the way the reference pipelines build them.
    assert torch.equal(torch.tensor(DISTILLED_SIGMAS, dtype=torch.float32), torch.Tensor(DISTILLED_SIGMA_VALUES))
    assert torch.equal(
        torch.tensor(STAGE_2_DISTILLED_SIGMAS, dtype=torch.float32), torch.Tensor(STAGE_2_DISTILLED_SIGMA_VALUES)
    )


# ---------------------------------------------------------------------------------------------------------------
# diffusers FlowMatchEulerDiscreteScheduler keeps our tables


TABLES = {
    "30": lambda: ltx2_sigmas(30),
    "40": lambda: ltx2_sigmas(40),
    "hq_stage1_15": lambda: ltx2_sigmas(15, 16 * 17 * 30),
    "distilled": lambda: torch.Tensor(DISTILLED_SIGMA_VALUES),
    "stage_2": lambda: torch.Tensor(STAGE_2_DISTILLED_SIGMA_VALUES),
}


@pytest.mark.parametrize("name", list(TABLES))
def test_flow_match_scheduler_keeps_table(name):
    table = TABLES[name]()
    for scheduler in (
        FlowMatchEulerDiscreteScheduler(**flow_match_scheduler_config()),
        FlowMatchEulerDiscreteScheduler.from_config(flow_match_scheduler_config()),
    ):
        scheduler.set_timesteps(sigmas=table[:-1].tolist(), device="cpu")
        assert scheduler.sigmas.dtype == torch.float32 and scheduler.timesteps.dtype == torch.float32
        assert torch.equal(scheduler.sigmas, table)
        assert torch.equal(scheduler.timesteps, table[:-1] * 1000)
        assert scheduler.num_inference_steps == len(table) - 1


def test_flow_match_scheduler_keeps_tuple_table():
    scheduler = FlowMatchEulerDiscreteScheduler(**flow_match_scheduler_config())
    scheduler.set_timesteps(sigmas=STAGE_2_DISTILLED_SIGMAS[:-1])
    assert torch.equal(scheduler.sigmas, torch.Tensor(STAGE_2_DISTILLED_SIGMA_VALUES))


def test_flow_match_config_is_complete():
    # Every key is a real config field of the scheduler (none silently ignored).
    scheduler = FlowMatchEulerDiscreteScheduler(**flow_match_scheduler_config())
    for key, value in flow_match_scheduler_config().items():
        assert scheduler.config[key] == value, key


# ---------------------------------------------------------------------------------------------------------------
# Euler step and x0 conversion


def states(dtype, shape=(1, 64, 128), seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(shape, generator=g)
    denoised = 0.7 * torch.randn(shape, generator=g)
    return sample.to(dtype), denoised.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("table", ["30", "distilled", "stage_2"])
def test_euler_step_matches_reference(dtype, table):
    sigmas = TABLES[table]()
    stepper = EulerDiffusionStep()
    sample, _ = states(dtype)
    for i in range(len(sigmas) - 1):
        _, denoised = states(dtype, seed=i + 1)
        expected = stepper.step(sample, denoised, sigmas, i)
        ours = euler_step(sample, denoised, sigmas[i], sigmas[i + 1])
        assert ours.dtype == dtype
        assert torch.equal(ours, expected), i
        assert torch.equal(euler_step(sample, denoised, sigmas[i].item(), sigmas[i + 1].item()), expected), i
        sample = expected
    if dtype == torch.bfloat16:  # velocity rounding: the last step does not land exactly on denoised
        assert not torch.equal(sample, denoised)


def test_euler_step_is_pure():
    sample, denoised = states(torch.bfloat16)
    before = sample.clone(), denoised.clone()
    euler_step(sample, denoised, 0.5, 0.25)
    assert torch.equal(sample, before[0]) and torch.equal(denoised, before[1])


def test_euler_step_bad_sigma():
    sample, denoised = states(torch.bfloat16)
    with pytest.raises(ValueError, match="Sigma can't be 0"):
        EulerDiffusionStep().step(sample, denoised, torch.tensor([0.0, 0.0]), 0)
    with pytest.raises(ValueError, match="sigma must be non-zero"):
        euler_step(sample, denoised, 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma must be non-zero"):
        euler_step(sample, denoised, torch.tensor(0.0), 0.1)
    with pytest.raises(ValueError, match="single value"):
        euler_step(sample, denoised, torch.tensor([0.5, 0.4]), 0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_to_denoised_matches_reference(dtype):
    sample, velocity = states(dtype)
    sigma = ltx2_sigmas(30)[7]
    mask = torch.ones(1, 64, 1)
    mask[:, :10] = 0.0  # conditioning tokens
    mask[:, 10:20] = 0.25
    for timesteps in (sigma, sigma.item(), 0.3, mask * sigma):
        expected = ref_to_denoised(sample, velocity, timesteps)
        ours = to_denoised(sample, velocity, timesteps)
        assert ours.dtype == dtype
        assert torch.equal(ours, expected)
    ours = to_denoised(sample, velocity, mask * sigma)
    assert torch.equal(ours[:, :10], sample[:, :10]) and not torch.equal(ours[:, 10:], sample[:, 10:])
