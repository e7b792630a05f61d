"""`reference_arithmetic=True` honours the user's adapter state (`loaders/lora_fusion.py`): active adapters at their
`set_adapters` weights, disabled ones (`disable_lora`), fused ones (`fuse_lora`), fused then disabled (before: the
fused LoRA stayed applied, 1.38 from the no-LoRA output), rank / alpha patterns, rsLoRA and `lora_bias`, each equal to
the normal path (PEFT's forward) within fp32 1e-5; what the fused weight cannot express (DoRA, before silently
computed as a plain LoRA: 0.862 off; other LoRA variants, LoRA on a non-linear layer, dropout in training mode) is
refused before any forward with a ValueError naming the adapter and the layer."""

import contextlib

import pytest
import torch
from factories import build_checkpoint, build_lora, build_upsampler
from peft import LoraConfig, inject_adapter_in_model
from test_pipeline import call
from test_transformer_diffusers_interop import forward_kwargs, randomize_, tiny_diffusers_config
from tiny_a2v import write_tone

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2AudioVideoTransformer, MultiModalGuidance
from ltx2_diffusers.loaders.lora_fusion import reference_lora_arithmetic


TOL = 1e-5
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "net.2"]


def transformer():
    return randomize_(LTX2AudioVideoTransformer(**{**tiny_diffusers_config("2.3"), "num_layers": 1})).eval()


def randomize_lora_(model, seed):
    """Random LoRA factors (PEFT initialises B to zero), magnitudes and biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def with_adapters(seed=0, **config):
    """The tiny transformer with two user adapters "u1" (rank 4) and "u2" (rank 2, `config` added to both)."""
    model = transformer()
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, **config), adapter_name="u1")
    model.add_adapter(LoraConfig(r=2, lora_alpha=8, target_modules=TARGETS, **config), adapter_name="u2")
    randomize_lora_(model, seed)
    return model.eval()  # new PEFT layers start in training mode


def outputs(model, kwargs, reference: bool):
    with torch.no_grad(), reference_lora_arithmetic(model) if reference else contextlib.nullcontext():
        out = model(**kwargs)
    return torch.cat([out[0].flatten(), out[1].flatten()])


def delta(a, b):
    return (a - b).abs().max().item()


def no_lora_output(kwargs):
    return outputs(transformer(), kwargs, reference=False)


# ------------------------------------------------------------------------------------------------ the user's state
STATES = ["both active", "set_adapters weights", "one adapter", "disabled", "fused", "fused then disabled",
          "fused then re-enabled", "partly fused"]  # fmt: skip


def apply_state(model, state):
    if state == "set_adapters weights":
        model.set_adapters(["u1", "u2"], [0.6, -0.3])
    elif state == "one adapter":
        model.set_adapters("u2")
    elif state == "disabled":
        model.disable_lora()
    elif state.startswith("fused"):
        model.set_adapters(["u1", "u2"], [0.6, 0.3])
        model.fuse_lora(lora_scale=1.0, adapter_names=["u1", "u2"])
        if state != "fused":
            model.disable_lora()
        if state == "fused then re-enabled":
            model.enable_lora()
    elif state == "partly fused":
        model.fuse_lora(lora_scale=1.0, adapter_names=["u1"])


@pytest.mark.parametrize("state", STATES)
def test_reference_arithmetic_honours_the_adapter_state(state):
    """Reference arithmetic first (the order of the report), then the normal path on an identical model: equal
    within 1e-5, and the user's LoRA matters (or, disabled, the output is the no-LoRA one)."""
    kwargs = forward_kwargs(transformer())
    ours, normal = with_adapters(), with_adapters()
    apply_state(ours, state)
    apply_state(normal, state)
    reference = outputs(ours, kwargs, reference=True)
    expected = outputs(normal, kwargs, reference=False)
    assert delta(reference, expected) <= TOL, state
    assert delta(outputs(ours, kwargs, reference=True), expected) <= TOL  # a second call: the same
    base = no_lora_output(kwargs)
    if state in ("disabled", "fused then disabled"):
        assert delta(reference, base) <= TOL
    else:
        assert delta(reference, base) > 1e-2  # the LoRA applied
    assert "forward" not in next(m for n, m in ours.named_modules() if n.endswith("to_q")).__dict__


def test_set_adapters_weights_are_not_the_defaults():
    """Guards the table above: weights 0.6 / -0.3 give a different output than 1 / 1 under reference arithmetic."""
    kwargs = forward_kwargs(transformer())
    model = with_adapters()
    default = outputs(model, kwargs, reference=True)
    model.set_adapters(["u1", "u2"], [0.6, -0.3])
    assert delta(outputs(model, kwargs, reference=True), default) > 1e-2


@pytest.mark.parametrize(
    "config",
    [
        dict(rank_pattern={"to_q": 3}, alpha_pattern={"to_k": 16}),
        dict(use_rslora=True),
        dict(lora_bias=True),
        dict(lora_dropout=0.5),  # eval mode: no dropout, fused as usual
    ],
    ids=["patterns", "rslora", "lora_bias", "dropout-eval"],
)
def test_peft_options_the_fused_weight_expresses(config):
    kwargs = forward_kwargs(transformer())
    ours, normal = with_adapters(**config), with_adapters(**config)
    expected = outputs(normal, kwargs, reference=False)
    assert delta(outputs(ours, kwargs, reference=True), expected) <= TOL
    assert delta(expected, no_lora_output(kwargs)) > 1e-2


# ------------------------------------------------------------------------------------------------ refused
def refused(model, match):
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=match):
        with reference_lora_arithmetic(model):
            model(torch.randn(2, 8))
    assert calls == []
    assert not any("forward" in m.__dict__ for m in model.modules())  # nothing left patched


def test_dora_is_refused_naming_the_adapter():
    model = transformer()
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"], use_dora=True), adapter_name="mine")
    with pytest.raises(
        ValueError,
        match=r"adapter 'mine' \(layer '[\w.]+to_q'\) is a DoRA \(use_dora=True\), which reference_arithmetic does "
        r"not support",
    ):
        with reference_lora_arithmetic(model):
            pass
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("state", ["disabled", "fused"])
def test_a_dora_the_fused_weight_need_not_express_runs_as_peft_does(state):
    """Disabled, or fused into the weights (PEFT's merge), a DoRA adds nothing at run time: not refused, and equal
    to the normal path."""
    kwargs = forward_kwargs(transformer())
    models = []
    for _ in range(2):
        model = transformer()
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, use_dora=True), adapter_name="d")
        randomize_lora_(model, 3)
        model.disable_lora() if state == "disabled" else model.fuse_lora(adapter_names=["d"])
        models.append(model)
    assert delta(outputs(models[0], kwargs, reference=True), outputs(models[1], kwargs, reference=False)) <= TOL


def test_lora_on_a_non_linear_layer_is_refused():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8))
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0", "1"]), model, adapter_name="emb")
    with pytest.raises(ValueError, match=r"adapter 'emb' on layer '0' is a Embedding, not a LoRA linear"):
        with reference_lora_arithmetic(model):
            pass


def test_lora_around_a_transposed_conv1d_is_refused():
    from transformers.pytorch_utils import Conv1D

    model = torch.nn.Sequential(Conv1D(8, 8))
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"], fan_in_fan_out=True), model, "gpt2")
    refused(model, r"adapter 'gpt2' on layer '0' wraps a Conv1D, not a torch.nn.Linear")


def test_lora_dropout_in_training_mode_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"], lora_dropout=0.1), model, "drop")
    model.train()
    refused(model, r"adapter 'drop' \(layer '0'\) applies LoRA dropout \(p=0.1\) in training mode")
    model.eval()
    with reference_lora_arithmetic(model):
        model(torch.randn(2, 8))


# ------------------------------------------------------------------------------------------------ the pipeline
GUIDANCE = MultiModalGuidance(cfg_scale=2.0, stg_scale=1.0, rescale_scale=0.5, modality_scale=2.0, stg_blocks=[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion_state")
    checkpoint = build_checkpoint(root / "ltx-2.3-tiny.safetensors", "2.3", seed=61)
    write_tone(root / "a.wav")
    return dict(
        checkpoint=checkpoint,
        upsampler=build_upsampler(root / "upsampler.safetensors", seed=62),
        distilled=build_lora(root / "distilled.safetensors", checkpoint, seed=63, dtype=torch.float32),
        u1=build_lora(root / "u1.safetensors", checkpoint, seed=64, dtype=torch.float32, scale=1.0),
        u2=build_lora(root / "u2.safetensors", checkpoint, seed=65, dtype=torch.float32, scale=1.0),
        audio=root / "a.wav",
    )


def latents(pipe, files, **kwargs):
    options = dict(video_guidance=GUIDANCE, generator=torch.Generator().manual_seed(3), output_type="latent")
    return call(pipe, str(files["audio"]), **options, **kwargs).frames


def test_pipeline_fused_then_disabled_user_loras_under_reference_arithmetic(files):
    """The report's case on the pipeline (stage 2 with the distilled LoRA): two user LoRAs at set_adapters weights,
    fused, then disabled. reference_arithmetic=True equals the no-LoRA output and the normal path within 1e-5."""
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        files["checkpoint"],
        spatial_upsampler_path=files["upsampler"],
        distilled_lora=(files["distilled"], 0.7),
        torch_dtype=torch.float32,
    )
    base = latents(pipe, files, reference_arithmetic=True)
    pipe.load_lora_weights(files["u1"], adapter_name="u1")
    pipe.load_lora_weights(files["u2"], adapter_name="u2")
    pipe.set_adapters(["u1", "u2"], [0.6, 0.3])
    unfused = latents(pipe, files)
    assert delta(unfused, base) > 1e-2  # the user LoRAs matter
    assert delta(latents(pipe, files, reference_arithmetic=True), unfused) <= TOL
    pipe.fuse_lora(components=["transformer", "connectors"], lora_scale=1.0, adapter_names=["u1", "u2"])
    assert delta(latents(pipe, files, reference_arithmetic=True), unfused) <= TOL
    pipe.disable_lora()
    disabled = latents(pipe, files, reference_arithmetic=True)
    assert delta(disabled, base) <= TOL
    assert delta(disabled, latents(pipe, files)) <= TOL


def test_offload_hooks_are_run_around_the_fused_weight():
    """reference_arithmetic reads the layers' weights directly: under per-layer offload hooks (accelerate's
    `cpu_offload`, weights on the meta device between forwards; diffusers' leaf-level group offload) the hooks
    onload them first and offload them after (before: `RuntimeError: Tensor on device meta` from inside torch)."""
    import accelerate
    from diffusers.hooks import apply_group_offloading

    kwargs = forward_kwargs(transformer())
    expected = outputs(with_adapters(), kwargs, reference=True)
    assert delta(expected, no_lora_output(kwargs)) > 1e-2  # the adapters matter

    model = accelerate.cpu_offload(with_adapters(), execution_device="cpu")
    assert delta(outputs(model, kwargs, reference=True), expected) <= TOL
    layer = model.transformer_blocks[0].attn1.to_q
    assert layer.base_layer.weight.is_meta and layer.lora_B["u1"].weight.is_meta  # offloaded again

    model = with_adapters()
    apply_group_offloading(model, onload_device="cpu", offload_device="cpu", offload_type="leaf_level")
    assert delta(outputs(model, kwargs, reference=True), expected) <= TOL


def test_pipeline_user_lora_under_sequential_offload_hooks(files):
    """The report's case: a user LoRA, `accelerate.cpu_offload(pipe.transformer)`, reference_arithmetic=True with
    the distilled LoRA in stage 2: the same latents as without the hooks."""
    import accelerate

    pipe = LTX2AudioToVideoPipeline.from_single_file(
        files["checkpoint"],
        spatial_upsampler_path=files["upsampler"],
        distilled_lora=(files["distilled"], 0.7),
        torch_dtype=torch.float32,
    )
    pipe.load_lora_weights(files["u1"], adapter_name="u1")
    pipe.set_adapters("u1", 0.6)
    expected = latents(pipe, files, reference_arithmetic=True)
    accelerate.cpu_offload(pipe.transformer, execution_device="cpu")
    assert delta(latents(pipe, files, reference_arithmetic=True), expected) <= TOL
