"""Audio-to-video on a distilled checkpoint (`model_variant="distilled"`): the distilled A2V recipe (stage 1 on the
distilled sigmas without guidance, audio frozen; stage 2 as usual without the LoRA), against that recipe composed
from ltx-pipelines' own pieces: A2VidPipelineTwoStage with its stage-1 schedule replaced by
`DISTILLED_SIGMA_VALUES`, its guided denoising function by `simple_denoising_func` (DistilledPipeline's) and no
stage-2 LoRA."""

import contextlib
from unittest import mock

import ltx_pipelines.a2vid_two_stage as a2vid
import pytest
import torch
from ltx_pipelines.utils.args import ImageConditioningInput
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.helpers import simple_denoising_func
from reference_pipeline import reference_patches, set_pipeline_dtype
from test_pipeline_parity import FPS, HEIGHT, NUM_FRAMES, SEED, WIDTH, contexts, files  # noqa: F401

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2ImageCondition
from ltx2_diffusers.schedules import DISTILLED_SIGMAS


class _DistilledSchedule:
    def execute(self, steps, **kwargs):
        return torch.tensor(DISTILLED_SIGMA_VALUES)


def _unguided(video_guider, audio_guider, v_context, a_context, transformer):
    return simple_denoising_func(video_context=v_context, audio_context=a_context, transformer=transformer)


def reference_distilled_a2v(paths, positive, images):
    captured = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            reference_patches(
                a2vid, captured=captured, contexts=(positive, positive), dtype=torch.float32, device="cpu",
                float32_functions=("denoise_video_only", "combined_image_conditionings"),
            )
        )  # fmt: skip
        stack.enter_context(mock.patch.object(a2vid, "LTX2Scheduler", _DistilledSchedule))
        stack.enter_context(mock.patch.object(a2vid, "multi_modal_guider_denoising_func", _unguided))
        pipe = a2vid.A2VidPipelineTwoStage(
            checkpoint_path=str(paths["checkpoint"]), distilled_lora=[],
            spatial_upsampler_path=str(paths["upsampler"]), gemma_root=None, loras=[], device=torch.device("cpu"),
        )  # fmt: skip
        set_pipeline_dtype(pipe, (pipe.stage_1_model_ledger, pipe.stage_2_model_ledger), torch.float32)
        pipe(
            prompt="unused", negative_prompt="unused", seed=SEED, height=HEIGHT, width=WIDTH,
            num_frames=NUM_FRAMES, frame_rate=FPS, num_inference_steps=len(DISTILLED_SIGMA_VALUES) - 1,
            video_guider_params=None, images=[ImageConditioningInput(*image) for image in images],
            audio_path=str(paths["audio"]), audio_start_time=0.0, audio_max_duration=NUM_FRAMES / FPS,
        )  # fmt: skip
    return captured["frames"]


@pytest.mark.parametrize("with_images", [False, True], ids=["no_images", "images"])
def test_distilled_a2v_recipe_matches_the_reference_pieces(files, with_images):  # noqa: F811
    assert tuple(DISTILLED_SIGMA_VALUES) == DISTILLED_SIGMAS
    positive = contexts(6, files["version"])
    images = [(str(files["image"]), 0, 1.0, 33), (str(files["image"]), 8, 0.7, 33)] if with_images else []
    reference = reference_distilled_a2v(files, positive, images)
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        files["checkpoint"], spatial_upsampler_path=files["upsampler"], model_variant="distilled",
        torch_dtype=torch.float32,
    )  # fmt: skip
    assert pipe.distilled_lora is None  # not needed: the distilled recipe's stage 2 has no LoRA
    common = dict(
        audio=files["audio"], prompt_contexts=positive, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
        frame_rate=FPS, conditions=[LTX2ImageCondition(*image) for image in images], output_type="pt",
    )  # fmt: skip
    for exact in (False, True):
        out = pipe(**common, generator=torch.Generator().manual_seed(SEED), reference_arithmetic=exact)
        frames = out.frames.permute(0, 2, 1, 3, 4)
        diff = (frames - reference).abs().max().item()
        print(f"distilled A2V ({'reference_arithmetic' if exact else 'default'}): frames max|d| = {diff:.3g}")
        assert frames.shape == reference.shape and frames.std() > 0.01
        assert diff == 0.0 if exact else diff <= 1e-4
