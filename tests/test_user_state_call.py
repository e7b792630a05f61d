"""The user owns their state across a call. What a call cannot honour of the user's transformer state (adapters
`reference_arithmetic` cannot fuse, `compile=True` against the user's offload hooks, a backend other than the one
the user set) is refused before any model runs; and a call that finishes, is interrupted or raises from its
callback in either stage leaves the user's adapters, weights, dtypes, modes, hooks, scheduler config and torch's
global state exactly as they were (hashed before and after)."""

import hashlib

import numpy as np
import pytest
import soundfile as sf
import torch
from converted_folder import converted_folder
from factories import build_lora
from family_call import tiny_call_args
from peft import LoraConfig

from ltx2_diffusers import (
    LTX2AudioToVideoPipeline,
    LTX2AudioVideoPipeline,
    LTX2ImageToAudioVideoPipeline,
    MultiModalGuidance,
)


GUIDANCE = MultiModalGuidance(cfg_scale=2.5, stg_blocks=[1])
STEPS = 3  # stage 1: steps 0..2; stage 2: steps 3..


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_state")
    folder = converted_folder(root, 31)
    loras = [build_lora(root / f"user{i}.safetensors", root / "ltx-2.3.safetensors", seed=50 + i) for i in (0, 1)]
    rate = 16000
    sf.write(root / "a.wav", np.sin(np.arange(rate) / rate * 2 * np.pi * 220).astype(np.float32) * 0.3, rate)
    return dict(folder=folder, loras=loras, audio=str(root / "a.wav"))


@pytest.fixture(autouse=True)
def process_backend_restored(monkeypatch):
    """diffusers' `set_attention_backend` also sets its process-wide active backend: put it back after each test
    (later modules' bit-exact comparisons ran on `_native_math` otherwise)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)


def make(setup, cls):
    pipe = LTX2AudioVideoPipeline.from_pretrained(setup["folder"])
    pipe = pipe if cls is LTX2AudioVideoPipeline else cls.from_pipe(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, setup, **kwargs):
    args = tiny_call_args(pipe, GUIDANCE, steps=STEPS, audio=setup["audio"])
    if isinstance(pipe, LTX2ImageToAudioVideoPipeline):
        args["image"] = np.full((64, 64, 3), 90, dtype=np.uint8)
    return pipe(**{**args, **kwargs})


# ------------------------------------------------------------------------------------------------ refused first
@pytest.fixture
def stages_run(setup):
    """A pipeline whose stages before the transformer record that they ran."""

    def wrap(pipe):
        ran = []
        for name in ("prepare_audio", "prepare_contexts", "encode_audio_tokens", "stage_1_video"):
            if hasattr(pipe, name):
                method = getattr(pipe, name)
                setattr(pipe, name, lambda *a, _m=method, _n=name, **k: (ran.append(_n), _m(*a, **k))[1])
        return ran

    return wrap


def test_reference_arithmetic_refuses_an_unfusable_user_adapter_before_any_model(setup, stages_run):
    pipe = make(setup, LTX2AudioToVideoPipeline)
    pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], use_dora=True), "mine")
    ran = stages_run(pipe)
    with pytest.raises(ValueError, match=r"reference_arithmetic=True cannot compute .* adapter 'mine' .* DoRA"):
        call(pipe, setup, reference_arithmetic=True)
    assert ran == []


def test_compile_true_against_the_users_block_offload_is_refused_before_any_model(setup, stages_run):
    pipe = make(setup, LTX2AudioToVideoPipeline)
    pipe.transformer.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    pipe.set_transformer_acceleration(compile=True)
    ran = stages_run(pipe)
    with pytest.raises(ValueError, match="compile=True: the transformer blocks carry offload hooks"):
        call(pipe, setup)
    assert ran == []


def test_a_backend_other_than_the_users_is_refused_before_any_model(setup, stages_run):
    pipe = make(setup, LTX2AudioVideoPipeline)
    pipe.transformer.set_attention_backend("_native_math")
    pipe.set_transformer_acceleration(attention_backend="native")
    ran = stages_run(pipe)
    with pytest.raises(ValueError, match="attention_backend='native': the user already set an attention backend"):
        call(pipe, setup)
    assert ran == []


# ------------------------------------------------------------------------------------------------ left as it was
def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def user_state(pipe) -> dict:
    """What the user owns: adapters (PEFT configs, active adapters and weights, merged / disabled layers), every
    module's class, mode and hooks, every tensor's dtype, device, requires_grad and bytes, the scheduler's config,
    and torch's global state."""
    modules, tensors = {}, {}
    for component, model in pipe.components.items():
        if not isinstance(model, torch.nn.Module):
            continue
        for name, m in model.named_modules():
            modules[f"{component}.{name}"] = (
                type(m), m.training, repr(getattr(m, "scaling", None)), repr(getattr(m, "merged_adapters", None)),
                getattr(m, "disable_adapters", None) if hasattr(m, "base_layer") else None,
                sorted(k for k in m.__dict__ if k.startswith("_ltx2") or k == "forward"),
                len(m._forward_hooks), len(m._forward_pre_hooks), type(getattr(m, "_hf_hook", None)),
            )  # fmt: skip
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            tensors[f"{component}.{name}"] = (t.dtype, t.device, t.requires_grad, digest(t))
    return dict(
        modules=modules,
        tensors=tensors,
        peft=repr(getattr(pipe.transformer, "peft_config", None)),
        active=pipe.get_active_adapters(),
        scheduler=(pipe.scheduler, dict(pipe.scheduler.config)),
        distilled_lora=pipe.distilled_lora,
        torch=(
            torch.get_default_dtype(),
            digest(torch.random.get_rng_state()),
            torch.get_num_threads(),
            torch.is_grad_enabled(),
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
            torch.get_float32_matmul_precision(),
        ),  # fmt: skip
    )


def at_step(step: int, what: str):
    def callback(pipe, i, t, kwargs):
        if i == step:
            if what == "raise":
                raise RuntimeError("the user's callback failed")
            pipe._interrupt = True
        return {}

    return callback


@pytest.mark.parametrize(
    ("cls", "callback"),
    [
        (LTX2AudioToVideoPipeline, None),
        (LTX2AudioToVideoPipeline, at_step(1, "interrupt")),
        (LTX2AudioToVideoPipeline, at_step(1, "raise")),
        (LTX2AudioToVideoPipeline, at_step(STEPS + 1, "raise")),
        (LTX2AudioVideoPipeline, at_step(STEPS + 1, "raise")),
        (LTX2ImageToAudioVideoPipeline, at_step(STEPS + 1, "raise")),
    ],
    ids=["a2v", "a2v-interrupt-1", "a2v-raise-1", "a2v-raise-2", "av-raise-2", "i2av-raise-2"],
)
def test_the_users_state_is_left_as_it_was(setup, cls, callback):
    pipe = make(setup, cls)
    for i, lora in enumerate(setup["loras"]):
        pipe.load_lora_weights(lora, adapter_name=f"user{i}")
    pipe.set_adapters(["user0", "user1"], [0.6, -0.3])
    pipe.transformer.transformer_blocks[0].train()
    pipe.vae.requires_grad_(True)
    before = user_state(pipe)
    try:
        call(pipe, setup, callback_on_step_end=callback)
    except RuntimeError as error:
        assert "callback failed" in str(error)
    after = user_state(pipe)
    for key in before:
        assert after[key] == before[key], key


def test_adapter_operations_naming_the_distilled_lora_are_refused(setup):
    """`load_lora_weights(..., adapter_name="distilled")` loads the pipeline-owned distilled LoRA, which no PEFT
    adapter operation reaches: `delete_adapters("distilled")` is refused (it deleted nothing and stage 2 kept
    applying it) and `set_adapters` says why; a PEFT adapter the user named "distilled" stays theirs."""
    pipe = make(setup, LTX2AudioToVideoPipeline)
    pipe.load_lora_weights(setup["loras"][0], adapter_name="distilled")
    store = pipe.distilled_lora
    for method in (pipe.delete_adapters, lambda names: pipe.set_adapters(names, [0.5])):
        with pytest.raises(ValueError, match="'distilled' is the stage-2 distilled LoRA, held by the pipeline's"):
            method(["distilled"])
    assert pipe.distilled_lora is store
    pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]), "distilled")
    pipe.set_adapters("distilled", 0.5)
    pipe.delete_adapters("distilled")
    assert not pipe.get_list_adapters() and pipe.distilled_lora is store
    pipe.distilled_lora = None  # no distilled LoRA held: the message does not say one is
    with pytest.raises(ValueError, match="no such adapter; .* this pipeline holds none"):
        pipe.delete_adapters("distilled")
