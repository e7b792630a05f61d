"""Multi-modal guidance for LTX-2: parameters, the passes a step needs, and their combination.

Mirrors ltx-core's ``MultiModalGuider`` and ltx-pipelines' ``multi_modal_guider_denoising_func``. One
``MultiModalGuidance`` describes one modality (video or audio). A denoising step runs up to four transformer
passes, each predicting both modalities:

- ``"cond"``: positive prompt;
- ``"uncond"``: negative prompt (CFG);
- ``"perturbed"``: positive prompt, self-attention skipped in ``stg_blocks`` (STG);
- ``"isolated"``: positive prompt, audio<->video cross-attention skipped everywhere (modality guidance).
"""

import math
import numbers
from dataclasses import dataclass, field

import torch

from .validation import check_guidance_scale


PASS_NAMES = ("cond", "uncond", "perturbed", "isolated")


def _check_index(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class MultiModalGuidance:
    """Guidance parameters for one modality (ltx-core ``MultiModalGuiderParams``).

    The defaults are LTX-2.3's video guidance for the audio-to-video pipeline. Use ``disabled()`` for the
    reference's neutral guider (the A2Vid pipeline's audio guider).

    Args:
        cfg_scale: classifier-free guidance scale; 1 disables it.
        stg_scale: spatio-temporal guidance scale; 0 disables it.
        rescale_scale: blend between the guided prediction (0) and the one rescaled to the conditional
            prediction's std (1); 0 disables rescaling.
        modality_scale: cross-modal (e.g. audio-to-video) guidance scale; 1 disables it.
        stg_blocks: transformer blocks whose self-attention the perturbed pass skips; ``None`` means all blocks.
        skip_step: N > 0 guides only steps with ``step_index % (N + 1) == 0``; other steps reuse the previous
            guided prediction. 0 guides every step.

    Bounds (``ltx2_diffusers.validation``; ltx-core accepts any float, but 1e30 gives NaN frames): ``cfg_scale``,
    ``stg_scale`` and ``modality_scale`` finite with ``|scale| <= 100``; ``rescale_scale`` finite in ``[0, 2]``.
    Anything else raises ``ValueError`` naming the field.
    """

    cfg_scale: float = 3.0
    stg_scale: float = 1.0
    rescale_scale: float = 0.7
    modality_scale: float = 3.0
    stg_blocks: list[int] | None = field(default_factory=lambda: [28])
    skip_step: int = 0

    def __post_init__(self):
        for name in ("cfg_scale", "stg_scale", "rescale_scale", "modality_scale"):
            value = check_guidance_scale(name, getattr(self, name), rescale=name == "rescale_scale")
            object.__setattr__(self, name, value)
        blocks = self.stg_blocks
        if blocks is not None:
            if isinstance(blocks, (str, bytes)) or not isinstance(blocks, (list, tuple)):
                raise TypeError(f"stg_blocks must be a list of ints or None, got {blocks!r}")
            blocks = [_check_index("stg_blocks entry", b) for b in blocks]
        object.__setattr__(self, "stg_blocks", blocks)
        object.__setattr__(self, "skip_step", _check_index("skip_step", self.skip_step))

    @classmethod
    def disabled(cls) -> "MultiModalGuidance":
        """Neutral guidance (ltx-core's default ``MultiModalGuiderParams()``): the prediction passes unchanged."""
        return cls(cfg_scale=1.0, stg_scale=0.0, rescale_scale=0.0, modality_scale=1.0, stg_blocks=[], skip_step=0)

    @property
    def needs_negative(self) -> bool:
        """Whether the ``"uncond"`` pass is needed (cfg_scale not close to 1)."""
        return not math.isclose(self.cfg_scale, 1.0)

    @property
    def needs_perturbed(self) -> bool:
        """Whether the ``"perturbed"`` pass is needed (stg_scale != 0)."""
        return not math.isclose(self.stg_scale, 0.0)

    @property
    def needs_isolated(self) -> bool:
        """Whether the ``"isolated"`` pass is needed (modality_scale not close to 1)."""
        return not math.isclose(self.modality_scale, 1.0)

    def should_skip_step(self, step_index: int) -> bool:
        """Whether this modality reuses its previous guided prediction at ``step_index``."""
        step_index = _check_index("step_index", step_index)
        return self.skip_step > 0 and step_index % (self.skip_step + 1) != 0


def combine_guidance(
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    perturbed: torch.Tensor | None = None,
    isolated: torch.Tensor | None = None,
    *,
    guidance: MultiModalGuidance,
) -> torch.Tensor:
    """Combine one modality's pass predictions into the guided prediction (``MultiModalGuider.calculate``).

    ``pred = cond + (cfg - 1)(cond - uncond) + stg (cond - perturbed) + (modality - 1)(cond - isolated)``,
    evaluated left to right in the inputs' dtype; if ``rescale_scale`` r != 0, ``pred`` is multiplied by
    ``r * cond.std() / pred.std() + (1 - r)`` (unbiased std over the whole tensor). A missing pass counts as
    0.0, as in the reference; a pass that ``guidance`` needs must be given.
    """
    for name, value, needed in (
        ("uncond", uncond, guidance.needs_negative),
        ("perturbed", perturbed, guidance.needs_perturbed),
        ("isolated", isolated, guidance.needs_isolated),
    ):
        if needed and value is None:
            raise ValueError(f"guidance needs the {name!r} pass but {name} is None ({guidance})")
    uncond = 0.0 if uncond is None else uncond
    perturbed = 0.0 if perturbed is None else perturbed
    isolated = 0.0 if isolated is None else isolated

    pred = (
        cond
        + (guidance.cfg_scale - 1) * (cond - uncond)
        + guidance.stg_scale * (cond - perturbed)
        + (guidance.modality_scale - 1) * (cond - isolated)
    )
    r = guidance.rescale_scale
    if r != 0:
        factor = cond.std() / pred.std()
        pred = pred * (r * factor + (1 - r))
    return pred


def guidance_passes(
    video: MultiModalGuidance,
    audio: MultiModalGuidance | None = None,
    *,
    step_index: int,
) -> tuple[str, ...]:
    """The transformer passes a step runs, in the reference's order (a subset of ``PASS_NAMES``).

    As in ``multi_modal_guider_denoising_func``: empty when both modalities skip the step; otherwise ``"cond"``
    plus each other pass that either modality needs, whether or not that modality skips this step (a skipping
    modality is disabled in the ``"cond"`` pass and its guided prediction is the previous one). ``audio=None``
    is the reference A2Vid pipeline's neutral audio guider (``MultiModalGuidance.disabled()``), which never
    skips, so a video-only skip step still runs the passes the video guidance needs.
    """
    audio = MultiModalGuidance.disabled() if audio is None else audio
    if video.should_skip_step(step_index) and audio.should_skip_step(step_index):
        return ()
    needed = (
        True,
        video.needs_negative or audio.needs_negative,
        video.needs_perturbed or audio.needs_perturbed,
        video.needs_isolated or audio.needs_isolated,
    )
    return tuple(name for name, need in zip(PASS_NAMES, needed, strict=True) if need)
