"""LTX-2 sigma schedules and the Euler step, bit-exact with ltx-core.

- ``ltx2_sigmas``: ltx-core's ``LTX2Scheduler().execute`` (shifted, stretched to a terminal sigma, then 0).
- ``DISTILLED_SIGMAS`` / ``STAGE_2_DISTILLED_SIGMAS``: the distilled tables of ltx-pipelines.
- ``flow_match_scheduler_config``: a diffusers ``FlowMatchEulerDiscreteScheduler`` config that keeps a table as is.
- ``euler_step`` / ``to_denoised``: ltx-core's ``EulerDiffusionStep`` and ``utils.to_denoised``.
- ``check_scheduler`` / ``set_scheduler_sigmas`` / ``scheduler_step``: the same tables and step through a registered
  ``FlowMatchEulerDiscreteScheduler``.

Every table here holds ``num_inference_steps + 1`` sigmas, falling from the first one to a final 0.0.
"""

import math
import numbers

import torch

from .validation import check_real, shown


# Token counts at which the shift equals base_shift and max_shift.
_BASE_SHIFT_TOKENS = 1024
_MAX_SHIFT_TOKENS = 4096

# Distilled schedules (ltx-pipelines' DISTILLED_SIGMA_VALUES / STAGE_2_DISTILLED_SIGMA_VALUES). Tuples, so no
# caller can change them in place; ``torch.tensor(table, dtype=torch.float32)`` gives the reference's tensor.
DISTILLED_SIGMAS = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)
"""Eight-step schedule of the distilled model."""
STAGE_2_DISTILLED_SIGMAS = (0.909375, 0.725, 0.421875, 0.0)
"""Three-step stage-2 (upsampled refinement) schedule; its first sigma is also the stage-2 noise scale."""


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def ltx2_sigmas(
    num_inference_steps: int,
    num_tokens: int | None = None,
    *,
    max_shift: float = 2.05,
    base_shift: float = 0.95,
    terminal: float = 0.1,
    stretch: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The LTX-2 sigma table, ``LTX2Scheduler().execute(num_inference_steps, latent)`` bit for bit.

    Returns a float32 tensor of ``num_inference_steps + 1`` sigmas from 1.0 down to ``terminal``, then 0.0.
    The shift grows linearly with the token count, from ``base_shift`` at 1024 tokens to ``max_shift`` at 4096.

    Args:
        num_inference_steps: number of denoising steps (>= 2 when stretching).
        num_tokens: latent tokens, ``F * H * W`` of the (B, C, F, H, W) latent; ``None`` uses 4096 (shift
            ``max_shift``), as every reference pipeline but the HQ one does.
        max_shift, base_shift: shift at 4096 and at 1024 tokens.
        terminal: last non-zero sigma after stretching, in (0, 1).
        stretch: stretch the shifted sigmas so the last non-zero one equals ``terminal``.
        device: device of the returned tensor (computed on CPU, like the reference).
    """
    steps = _check_positive_int("num_inference_steps", num_inference_steps)
    tokens = _MAX_SHIFT_TOKENS if num_tokens is None else _check_positive_int("num_tokens", num_tokens)
    max_shift = check_real("max_shift", max_shift)
    base_shift = check_real("base_shift", base_shift)
    terminal = check_real("terminal", terminal)
    if stretch:
        if steps < 2:
            raise ValueError(
                "num_inference_steps must be >= 2 when stretch=True (one step would start at sigma=terminal)"
            )
        if not 0.0 < terminal < 1.0:
            raise ValueError(f"terminal must be in (0, 1), got {terminal!r}")

    slope = (max_shift - base_shift) / (_MAX_SHIFT_TOKENS - _BASE_SHIFT_TOKENS)
    shift = tokens * slope + (base_shift - slope * _BASE_SHIFT_TOKENS)
    try:
        exp_shift = math.exp(shift)
    except OverflowError:
        raise ValueError(f"num_tokens={tokens} gives a shift ({shift:.1f}) too large to represent") from None

    # sigma' = e^shift / (e^shift + 1/sigma - 1), with 0 kept at 0. The Python-scalar divisions matter: torch
    # evaluates `float / tensor` as `tensor.reciprocal() * float`, and the reference relies on that rounding.
    linear = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)
    sigmas = torch.where(linear != 0, exp_shift / (exp_shift + (1 / linear - 1)), 0.0)

    if stretch:
        nonzero = sigmas != 0
        one_minus = 1.0 - sigmas[nonzero]
        scale = one_minus[-1] / (1.0 - terminal)
        sigmas[nonzero] = 1.0 - one_minus / scale
    if not torch.isfinite(sigmas).all():
        raise ValueError(
            f"num_tokens={tokens} shifts the sigmas of {steps} steps to 1.0 in float32; the schedule is degenerate"
        )
    return sigmas.to(device=device, dtype=torch.float32)


def flow_match_scheduler_config() -> dict:
    """Config for diffusers' ``FlowMatchEulerDiscreteScheduler`` that uses an LTX-2 table unchanged.

    No shift, no dynamic shift, no terminal stretch, no sigma remapping. With ``table`` one of this module's
    schedules, ``scheduler.set_timesteps(sigmas=table[:-1].tolist(), device=...)`` (a tuple: ``table[:-1]``) gives
    ``scheduler.sigmas == table`` (the scheduler appends the final 0.0) and ``scheduler.timesteps ==
    table[:-1] * 1000``, all float32. ``scheduler.step`` is not LTX-2's Euler step; use ``euler_step``.
    """
    return {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
        "base_shift": 0.95,
        "max_shift": 2.05,
        "base_image_seq_len": _BASE_SHIFT_TOKENS,
        "max_image_seq_len": _MAX_SHIFT_TOKENS,
        "invert_sigmas": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "time_shift_type": "exponential",
        "stochastic_sampling": False,
    }


def _scalar_sigma(name: str, value: float | torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=torch.float32) if not isinstance(value, torch.Tensor) else value.float()
    if value.numel() != 1:
        raise ValueError(f"{name} must hold a single value, got shape {tuple(value.shape)}")
    return value.reshape(())


def euler_step(
    sample: torch.Tensor,
    denoised: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
) -> torch.Tensor:
    """One Euler step from ``sigma`` to ``sigma_next`` (ltx-core ``EulerDiffusionStep``), in ``sample``'s dtype.

    The velocity ``(sample - denoised) / sigma`` is computed in float32 and rounded to ``sample.dtype``; the
    update ``sample + velocity * (sigma_next - sigma)`` is computed in float32 and cast back. Sigmas are taken
    as float32, as in the reference's tables. Raises ValueError if ``sigma`` is 0.
    """
    sigma = _scalar_sigma("sigma", sigma)
    sigma_next = _scalar_sigma("sigma_next", sigma_next)
    sigma_value = sigma.item()
    if sigma_value == 0:
        raise ValueError("sigma must be non-zero: the Euler step divides by it")
    velocity = ((sample.float() - denoised.float()) / sigma_value).to(sample.dtype)
    return (sample.float() + velocity.float() * (sigma_next - sigma)).to(sample.dtype)


def to_denoised(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    timesteps: float | torch.Tensor,
) -> torch.Tensor:
    """Clean-sample (x0) prediction ``sample - velocity * timesteps`` (ltx-core ``utils.to_denoised``).

    Computed in float32 and cast to ``sample.dtype``. ``timesteps`` is a sigma or a per-token tensor
    (``denoise_mask * sigma``) broadcastable to ``sample``.
    """
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.float()
    return (sample.float() - velocity.float() * timesteps).to(sample.dtype)


# Scheduler options whose step is not LTX-2's deterministic Euler step from one sigma of the table to the next.
_UNSUPPORTED_SCHEDULER_OPTIONS = {
    "stochastic_sampling": "draws fresh noise at every step",
    "invert_sigmas": "runs the table from 0 to 1 (Mochi)",
    "use_dynamic_shifting": "needs a resolution-dependent mu (LTX-2 shifts its tables itself: ltx2_sigmas(num_tokens=))",
}


def check_scheduler(scheduler) -> None:
    """Raise ValueError, naming the class or option, unless ``scheduler`` can run the LTX-2 Euler loop.

    Supported: diffusers' ``FlowMatchEulerDiscreteScheduler`` (the class itself, not a subclass, whose ``step`` may
    differ) without ``stochastic_sampling``, ``invert_sigmas`` or ``use_dynamic_shifting``. Its other options (static shift, terminal stretch,
    Karras/exponential/beta sigmas) are the user's and are honoured: they transform the table given to
    ``set_scheduler_sigmas``; ``flow_match_scheduler_config()`` keeps the table as is.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: PLC0415  (keeps `import schedules` light)

    if type(scheduler) is not FlowMatchEulerDiscreteScheduler:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} is not supported: LTX-2 pipelines step with "
            "FlowMatchEulerDiscreteScheduler (FlowMatchEulerDiscreteScheduler(**flow_match_scheduler_config()) "
            "reproduces the reference's sigma tables)"
        )
    for option, why in _UNSUPPORTED_SCHEDULER_OPTIONS.items():
        if scheduler.config.get(option, False):
            raise ValueError(
                f"FlowMatchEulerDiscreteScheduler with {option}=True is not supported: it {why}, not LTX-2's "
                "Euler step"
            )


def _check_table(sigmas) -> torch.Tensor:
    """``sigmas`` as a float32 CPU tensor of step sigmas, one trailing 0.0 dropped; ValueError/TypeError if bad."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.dtype.is_complex or not (sigmas.dtype.is_floating_point or sigmas.dtype == torch.int64):
            raise TypeError(f"sigmas must hold real numbers, got dtype {sigmas.dtype}")
        if sigmas.dim() != 1:
            raise ValueError(f"sigmas must be one-dimensional, got shape {tuple(sigmas.shape)}")
        table = sigmas.detach().to(device="cpu", dtype=torch.float32)
    else:
        if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__len__"):
            raise TypeError(f"sigmas must be a sequence of floats or a 1-D tensor, got {type(sigmas).__name__}")
        values = [check_real("sigmas entry", value) for value in sigmas]
        table = torch.tensor(values, dtype=torch.float32)
    if table.numel() and table[-1].item() == 0.0:
        table = table[:-1]
    if table.numel() == 0:
        raise ValueError("sigmas must hold at least one non-zero step sigma")
    if not torch.isfinite(table).all():
        raise ValueError(f"sigmas must be finite, got {shown(table.tolist())}")
    if not ((table > 0) & (table <= 1)).all():
        raise ValueError(
            f"step sigmas must lie in (0, 1] (only the final one may be 0.0), got {shown(table.tolist())}"
        )
    if (table[1:] >= table[:-1]).any():
        raise ValueError(f"sigmas must decrease strictly, got {shown(table.tolist())}")
    return table


def set_scheduler_sigmas(scheduler, sigmas, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Configure ``scheduler`` to step through ``sigmas`` and return its sigmas (the steps', then 0.0).

    ``sigmas``: the step sigmas in (0, 1], strictly decreasing (a sequence or 1-D tensor); a final 0.0, as in the
    reference's tables and this module's, is dropped because the scheduler appends it. Calls
    ``scheduler.set_timesteps(sigmas=..., device=device)`` and ``set_begin_index(0)``. With
    ``flow_match_scheduler_config()`` the returned tensor equals the table bit for bit (float32); a user's
    scheduler applies its own options to it (see ``check_scheduler``). Raises ValueError/TypeError before touching
    the scheduler if either is unusable.
    """
    check_scheduler(scheduler)
    table = _check_table(sigmas)
    scheduler.set_timesteps(sigmas=table.tolist(), device=device)
    scheduler.set_begin_index(0)
    result = scheduler.sigmas
    steps = result[:-1]
    if not torch.isfinite(result).all() or not ((steps > 0) & (steps <= 1)).all() or result[-1].item() != 0.0:
        raise ValueError(
            f"the scheduler's options turn sigmas into {shown(result.tolist())}; LTX-2 needs step sigmas in (0, 1] "
            "followed by 0.0"
        )
    return result


def scheduler_step(scheduler, sample: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """One Euler step of ``scheduler`` (configured by ``set_scheduler_sigmas``) from the x0 prediction ``denoised``.

    Equals ``euler_step(sample, denoised, sigma, sigma_next)`` (ltx-core's ``EulerDiffusionStep``) bit for bit for
    the scheduler's current pair of sigmas: the velocity ``(sample - denoised) / sigma`` is computed in float32,
    rounded to ``sample.dtype`` and handed to ``scheduler.step`` in float32, which advances ``sample`` in float32;
    the result is cast back to ``sample.dtype``.
    """
    index = scheduler.step_index if scheduler.step_index is not None else (scheduler.begin_index or 0)
    if index + 1 >= len(scheduler.sigmas):
        raise ValueError(f"the scheduler has no step left ({len(scheduler.sigmas) - 1} steps, at step {index})")
    sigma = scheduler.sigmas[index].item()
    if sigma == 0:
        raise ValueError("sigma must be non-zero: the Euler step divides by it")
    velocity = ((sample.float() - denoised.float()) / sigma).to(sample.dtype)
    timestep = scheduler.timesteps[index]
    stepped = scheduler.step(velocity.float(), timestep, sample, return_dict=False)[0]
    return stepped.to(sample.dtype)
