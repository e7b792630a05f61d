"""One pipeline, two threads: the second call is refused with a clear RuntimeError while the first runs, and the
first call's frames are unaffected. Concurrent loads leave no patched function behind."""

import threading

import diffusers
import pytest
import torch
from diffusers.pipelines import pipeline_loading_utils, pipeline_utils
from test_pipeline import call
from test_pipeline import setup as pipeline_setup  # noqa: F401  (module fixture reused)

from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.convert import convert_checkpoint


@pytest.fixture(scope="module")
def setup(pipeline_setup):  # noqa: F811
    return pipeline_setup


def test_a_concurrent_call_is_refused_and_the_running_one_is_exact(setup):
    pipe = setup["pipe"]
    expected = call(pipe, setup["audio"], output_type="latent").frames
    inside, release, result, errors = threading.Event(), threading.Event(), {}, []

    def wait_in_callback(p, i, t, kwargs):
        if not inside.is_set():
            inside.set()
            release.wait(timeout=120)
        return kwargs

    def first():
        result["frames"] = call(
            pipe, setup["audio"], output_type="latent", callback_on_step_end=wait_in_callback
        ).frames

    def second():
        try:
            call(pipe, setup["audio"], output_type="latent")
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(timeout=300)
    other = threading.Thread(target=second)
    other.start()
    other.join(timeout=300)
    release.set()
    thread.join(timeout=300)
    assert len(errors) == 1 and "already running" in str(errors[0])
    assert torch.equal(result["frames"], expected)
    # and afterwards the pipeline is free again
    assert torch.equal(call(pipe, setup["audio"], output_type="latent").frames, expected)


def test_a_callback_calling_the_pipeline_is_refused(setup):
    pipe = setup["pipe"]
    errors = []

    def reenter(p, i, t, kwargs):
        try:
            call(p, setup["audio"], output_type="latent")
        except RuntimeError as error:
            errors.append(error)
        return kwargs

    call(pipe, setup["audio"], output_type="latent", num_inference_steps=2, callback_on_step_end=reenter)
    assert errors and all("already running" in str(e) for e in errors)


def _process_wide_functions():
    """Functions that loaders swap while building models (accelerate, diffusers, transformers) or that our
    loading once patched."""
    watched = {
        "pipeline_utils._resolve_custom_pipeline_and_cls": pipeline_utils._resolve_custom_pipeline_and_cls,
        "pipeline_loading_utils._resolve_custom_pipeline_and_cls": (
            pipeline_loading_utils._resolve_custom_pipeline_and_cls
        ),
        "pipeline_loading_utils._get_pipeline_class": pipeline_loading_utils._get_pipeline_class,
        "DiffusionPipeline.from_pretrained": diffusers.DiffusionPipeline.__dict__["from_pretrained"],
        "DiffusionPipeline._dict_from_json_file": diffusers.DiffusionPipeline.__dict__.get("_dict_from_json_file"),
        "Module.register_parameter": torch.nn.Module.register_parameter,
        "Module.register_buffer": torch.nn.Module.register_buffer,
    }
    watched.update({f"torch.nn.init.{n}": getattr(torch.nn.init, n) for n in dir(torch.nn.init) if n.endswith("_")})
    return watched


def test_concurrent_loads_patch_nothing(setup, tmp_path):
    """Four loads at once (converted folder and original files): all succeed, with the distilled LoRA, and every
    process-wide function is the original afterwards (our loaders run one at a time)."""
    out = tmp_path / "converted"
    convert_checkpoint(
        setup["checkpoint"], out, spatial_upsampler_path=setup["upsampler"], distilled_lora=setup["lora"]
    )
    before = _process_wide_functions()
    loaded, errors = [], []

    def load(i):
        try:
            if i % 2:
                loaded.append(LTX2AudioToVideoPipeline.from_pretrained(out))
            else:
                loaded.append(
                    LTX2AudioToVideoPipeline.from_single_file(
                        setup["checkpoint"], spatial_upsampler_path=setup["upsampler"], distilled_lora=setup["lora"]
                    )
                )
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert len(loaded) == 4 and all(p.distilled_lora is not None for p in loaded)
    after = _process_wide_functions()
    changed = [name for name in before if after[name] is not before[name]]
    assert not changed, changed
    assert not any(t.is_meta for p in loaded for t in p.transformer.state_dict().values())


def test_save_pretrained_during_a_call_is_refused(setup, tmp_path):
    pipe = setup["pipe"]
    errors = []

    def save_inside(p, i, t, kwargs):
        try:
            p.save_pretrained(tmp_path / "saved")
        except RuntimeError as error:
            errors.append(error)
        return kwargs

    call(pipe, setup["audio"], output_type="latent", callback_on_step_end=save_inside)
    assert errors and "save_pretrained cannot start" in str(errors[0])
    assert not (tmp_path / "saved").exists()
