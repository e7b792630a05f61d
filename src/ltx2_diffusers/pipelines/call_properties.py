"""The call properties diffusers users read in step callbacks (`interrupt`, `num_timesteps`, `current_timestep`,
`guidance_scale`, `do_classifier_free_guidance`, `attention_kwargs`) and the LTX-2 pipelines' `stage_index`, from
the state a call keeps on the pipeline while it runs (`LTX2PipelineBase.denoise`)."""

from __future__ import annotations


class LTX2CallPropertiesMixin:
    """Mixed into `LTX2PipelineBase`."""

    @property
    def interrupt(self):
        return getattr(self, "_interrupt", False)

    @property
    def num_timesteps(self) -> int | None:
        """Steps of the current (or last) call, both stages; None before any call."""
        return getattr(self, "_num_timesteps", None)

    @property
    def current_timestep(self):
        """The timestep (`sigma * 1000`) of the step running now; None outside the denoising loops."""
        return getattr(self, "_current_timestep", None)

    def _described_guidance(self):
        """The guidance the call properties describe: the running stage's inside a denoising loop (stage 2 runs
        unguided), the last call's stage-1 guidance outside them; None before any call."""
        stage = getattr(self, "_stage_guidance", None)
        return stage if stage is not None else getattr(self, "_call_guidance", None)

    @property
    def guidance_scale(self) -> float | None:
        """The video CFG scale of the running stage (`video_guidance.cfg_scale` in stage 1; 1.0, no CFG, in stage 2
        and for an unguided call); outside the loops, the last call's stage-1 value. None before any call."""
        guidance = self._described_guidance()
        return None if guidance is None else guidance.resolved()[0].cfg_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the running stage runs classifier-free guidance: its video or its audio guidance has a
        `cfg_scale` other than 1 (`guidance_scale` / `audio_guidance_scale`), as diffusers' `LTX2Pipeline` reads
        `guidance_scale > 1 or audio_guidance_scale > 1`; False in stage 2 (unguided). Outside the loops, the last
        call's stage 1. False before any call and for an unguided call."""
        guidance = self._described_guidance()
        return guidance is not None and not guidance.unguided and any(g.needs_negative for g in guidance.resolved())

    @property
    def attention_kwargs(self) -> dict | None:
        """The current (or last) call's `attention_kwargs`, passed to every transformer forward; None before any
        call."""
        return getattr(self, "_attention_kwargs", None)

    @property
    def stage_index(self):
        """0 during stage 1, 1 during stage 2 (for callbacks)."""
        return getattr(self, "_stage_index", 0)
