"""The transformer's speed settings (`pipelines/acceleration.py`, issue 12): the decision table, what counts as the
user's own compile / attention backend, the pipeline default (eager on the CPU, compile once on CUDA, eager for
`reference_arithmetic`), compiled blocks with the stage-2 distilled LoRA, and the CLI flags."""

import logging

import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend
from factories import build_checkpoint, build_lora, build_upsampler
from test_pipeline import call
from test_transformer_diffusers_interop import forward_kwargs, randomize_, tiny_diffusers_config
from tiny_a2v import single_file_pipe, write_tone
from torch._dynamo.utils import counters

from ltx2_diffusers import (
    LTX2AudioVideoTransformer,
    a2vid,
    av_cli,
    cli_common,
)
from ltx2_diffusers.cli_running import apply_acceleration_flags, fp8_cast
from ltx2_diffusers.loaders.distilled_lora import LTX2DistilledLoRA
from ltx2_diffusers.pipelines import acceleration
from ltx2_diffusers.pipelines.acceleration import (
    TransformerAcceleration,
    apply_attention_backend,
    apply_compile,
    backend_set_by_user,
    blocks_carry_offload_hooks,
    compiled_by_user,
    resolve_acceleration,
)


CPU, CUDA, H200 = torch.device("cpu"), torch.device("cuda"), (9, 0)
AUTO = TransformerAcceleration()


# ------------------------------------------------------------------------------------------------ decision table
@pytest.mark.parametrize(
    "setting, device, reference, capability, user_compiled, user_backend, extra, expected",
    [
        (AUTO, CPU, False, None, False, False, {}, (False, None)),  # CPU: eager
        (AUTO, CUDA, False, H200, False, False, {}, (True, None)),  # CUDA: compiled, native SDPA on the H200
        (AUTO, "cuda:1", False, H200, False, False, {}, (True, None)),
        (AUTO, CUDA, True, H200, False, False, {}, (False, None)),  # reference_arithmetic: eager
        (AUTO, CUDA, False, H200, True, False, {}, (False, None)),  # the user compiled: untouched
        (AUTO, CUDA, False, H200, False, True, {}, (True, None)),  # the user's backend: untouched
        (AUTO, CUDA, False, H200, False, False, {"hooked_blocks": True}, (False, None)),  # group/sequential offload
        (AUTO, CUDA, False, H200, False, False, {"context_parallel": True}, (False, None)),
        (TransformerAcceleration(compile=False), CUDA, False, H200, False, False, {}, (False, None)),
        (TransformerAcceleration(compile=True), CPU, False, None, False, False, {}, (True, None)),
        (TransformerAcceleration(compile=True), CUDA, True, H200, False, False, {}, (False, None)),
        (TransformerAcceleration(compile=True), CUDA, False, H200, True, False, {}, (False, None)),
        (TransformerAcceleration(attention_backend="flash"), CPU, False, None, False, False, {}, (False, "flash")),
        (TransformerAcceleration(attention_backend=None), CUDA, False, H200, False, False, {}, (True, None)),
    ],
)
def test_resolve_table(setting, device, reference, capability, user_compiled, user_backend, extra, expected):
    assert resolve_acceleration(setting, device, reference, capability, user_compiled, user_backend, **extra) == (
        expected
    )


def test_auto_backend_follows_the_capability_table(monkeypatch):
    monkeypatch.setattr(acceleration, "AUTO_ATTENTION_BACKENDS", {(9, 0): "_native_cudnn", (8, 0): "flash"})
    assert resolve_acceleration(AUTO, CUDA, False, (9, 0), False, False, process_backend=True) == (True, None)
    assert resolve_acceleration(AUTO, CUDA, False, (9, 0), False, False) == (True, "_native_cudnn")
    assert resolve_acceleration(AUTO, CUDA, False, (8, 0), False, False) == (True, "flash")
    assert resolve_acceleration(AUTO, CUDA, False, (12, 0), False, False) == (True, None)  # not measured: native
    assert resolve_acceleration(AUTO, CUDA, True, (9, 0), False, False) == (False, None)  # reference: native
    assert resolve_acceleration(AUTO, CUDA, False, (9, 0), False, True) == (True, None)  # the user's stays
    assert resolve_acceleration(AUTO, CUDA, False, (9, 0), False, False, context_parallel=True) == (False, None)
    assert resolve_acceleration(AUTO, CPU, False, None, False, False) == (False, None)


def test_the_h200_entry_is_native_sdpa_until_measured():
    assert acceleration.AUTO_ATTENTION_BACKENDS == {(9, 0): None}


def test_explicit_backends_and_the_process_wide_default():
    flash = TransformerAcceleration(attention_backend="flash")
    # diffusers' process-wide default: "auto" sets nothing over it, an explicit name is set.
    assert resolve_acceleration(AUTO, CUDA, False, H200, False, False, process_backend=True) == (True, None)
    assert resolve_acceleration(flash, CUDA, False, H200, False, False, process_backend=True) == (True, "flash")
    # The user's own backend on this transformer: the same name is no override, another is refused.
    assert resolve_acceleration(flash, CUDA, False, H200, False, "flash") == (True, "flash")
    with pytest.raises(ValueError, match=r"call pipe\.transformer\.reset_attention_backend\(\) first"):
        resolve_acceleration(flash, CUDA, False, H200, False, "_native_math")


def test_what_cannot_be_honoured_is_refused():
    with pytest.raises(ValueError, match="compile=True: the transformer blocks carry offload hooks"):
        resolve_acceleration(
            TransformerAcceleration(compile=True), CUDA, False, H200, False, False, hooked_blocks=True
        )
    with pytest.raises(ValueError, match="attention_backend='flash': the user already set an attention backend"):
        resolve_acceleration(TransformerAcceleration(attention_backend="flash"), CUDA, False, H200, False, True)
    with pytest.raises(TypeError, match="setting must be a TransformerAcceleration"):
        resolve_acceleration({"compile": True}, CUDA, False, H200, False, False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(compile="yes"), ValueError, "compile must be 'auto', True or False, got 'yes'"),
        (dict(compile="on"), ValueError, "compile must be"),
        (dict(compile=1), TypeError, "compile must be 'auto', True or False, got int"),
        (dict(compile=None), TypeError, "compile must be"),
        (dict(attention_backend=3), TypeError, "attention_backend must be a str or None, got int"),
        (dict(attention_backend="fastest"), ValueError, "attention_backend must be 'auto', None or one of"),
        (dict(attention_backend="flash_hub"), ValueError, "attention_backend='flash_hub' downloads a kernel"),
    ],
)
def test_garbage_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        TransformerAcceleration(**kwargs)


# ------------------------------------------------------------------------------------------------ the user's own
def tiny_transformer(num_layers=2):
    return randomize_(LTX2AudioVideoTransformer(**{**tiny_diffusers_config("2.3"), "num_layers": num_layers})).eval()


def compiled_blocks(model):
    return [i for i, b in enumerate(model.transformer_blocks) if b._compiled_call_impl is not None]


def test_the_users_compile_is_told_from_the_pipelines():
    model = tiny_transformer()
    assert not compiled_by_user(model)
    apply_compile(model, True)  # the pipeline's (torch.compile wraps lazily: nothing is compiled yet)
    assert compiled_blocks(model) == [0, 1] and not compiled_by_user(model)
    apply_compile(model, False)
    assert compiled_blocks(model) == [] and not compiled_by_user(model)

    model.transformer_blocks[1].compile()  # the user's
    assert compiled_by_user(model)
    apply_compile(model, False)  # the pipeline only takes back its own
    assert compiled_blocks(model) == [1]
    model.transformer_blocks[1]._compiled_call_impl = None

    assert compiled_by_user(torch.compile(model))
    model.forward = torch.compile(model.forward)
    assert compiled_by_user(model)


def processor_backends(model):
    return [p._attention_backend for p in acceleration._processors(model)]


def test_the_users_attention_backend_is_never_overridden():
    model = tiny_transformer(num_layers=1)
    assert not backend_set_by_user(model) and set(processor_backends(model)) == {None}
    apply_attention_backend(model, "_native_efficient")  # the pipeline's
    assert set(processor_backends(model)) == {AttentionBackendName._NATIVE_EFFICIENT}
    assert not backend_set_by_user(model)

    model.transformer_blocks[0].attn1.set_attention_backend("_native_math")  # the user's, on one module
    assert backend_set_by_user(model)
    apply_attention_backend(model, "_native_flash")
    backends = processor_backends(model)
    assert backends.count(AttentionBackendName._NATIVE_MATH) == 1
    assert backends.count(AttentionBackendName._NATIVE_FLASH) == len(backends) - 1
    apply_attention_backend(model, None)  # the pipeline takes back its own only
    assert processor_backends(model).count(None) == len(backends) - 1
    assert model.transformer_blocks[0].attn1.processor._attention_backend == AttentionBackendName._NATIVE_MATH

    fresh = tiny_transformer(num_layers=1)
    with attention_backend("_native_math"):  # process-wide (as DIFFUSERS_ATTN_BACKEND): no choice for this model
        assert not backend_set_by_user(fresh) and acceleration.process_backend_set()
    assert not backend_set_by_user(fresh) and not acceleration.process_backend_set()


@pytest.fixture
def process_backend():
    """diffusers' process-wide attention backend, restored after the test (`set_attention_backend` sets it)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    yield _AttentionBackendRegistry
    _AttentionBackendRegistry.set_active_backend(active)


def test_the_users_backend_is_read_per_model(process_backend):
    """`set_attention_backend` on one model also sets diffusers' process-wide default, which `reset_attention_backend`
    does not clear: neither makes another model, nor the reset one, count as set by the user (before: both did)."""
    model, other = tiny_transformer(num_layers=1), tiny_transformer(num_layers=1)
    other.set_attention_backend("_native_math")
    assert process_backend._active_backend == AttentionBackendName._NATIVE_MATH
    assert backend_set_by_user(other) == "_native_math" and backend_set_by_user(model) is False
    other.reset_attention_backend()
    assert process_backend._active_backend == AttentionBackendName._NATIVE_MATH  # diffusers keeps it
    assert backend_set_by_user(other) is False
    model.transformer_blocks[0].attn1.set_attention_backend("_native_math")
    model.transformer_blocks[0].attn2.set_attention_backend("_native_efficient")
    assert backend_set_by_user(model) is True  # several


def test_offload_hooks_in_the_blocks_are_seen():
    model = tiny_transformer(num_layers=1)
    assert not blocks_carry_offload_hooks(model)
    model.enable_group_offload(onload_device=CPU, offload_type="block_level", num_blocks_per_group=1)
    assert blocks_carry_offload_hooks(model)


# ------------------------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("acceleration")
    checkpoint = build_checkpoint(root / "ltx-2.3-tiny.safetensors", "2.3", seed=41)
    write_tone(root / "a.wav")
    return dict(
        checkpoint=checkpoint,
        upsampler=build_upsampler(root / "upsampler.safetensors", seed=42),
        lora=build_lora(root / "lora.safetensors", checkpoint, seed=43, dtype=torch.float32),
        audio=root / "a.wav",
    )


def make_pipe(files):
    return single_file_pipe(files["checkpoint"], files["upsampler"], files["lora"], 0.6)


def latents(pipe, files, **kwargs):
    """test_pipeline's call (128 x 128, 9 frames, 2 steps, cfg + STG at block 1 + modality + rescale), as latents."""
    return call(pipe, files["audio"], **{"output_type": "latent", **kwargs}).frames


@pytest.fixture
def dynamo():
    """A clean dynamo state; hitting the recompile limit raises instead of silently running eager."""
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield lambda: counters["stats"]["unique_graphs"]
    torch._dynamo.reset()


@pytest.fixture
def mock_cuda(monkeypatch):
    """The decision made as on an H200; the pipeline's compile goes through `compile_repeated_blocks` with dynamo's
    "eager" backend (full-graph tracing and its guards, no code generation). Returns the compile calls."""
    real = acceleration.resolve_acceleration
    monkeypatch.setattr(
        acceleration, "resolve_acceleration", lambda s, d, r, c, *a, **k: real(s, "cuda", r, H200, *a, **k)
    )
    calls, compile_blocks = [], LTX2AudioVideoTransformer.compile_repeated_blocks

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return compile_blocks(self, *args, backend="eager", **kwargs)

    monkeypatch.setattr(LTX2AudioVideoTransformer, "compile_repeated_blocks", spy)
    return calls


def test_cpu_default_stays_eager_and_unchanged(files):
    pipe = make_pipe(files)
    assert pipe.transformer_acceleration == TransformerAcceleration("auto", "auto")
    default = latents(pipe, files)
    assert not any(m._compiled_call_impl is not None for m in pipe.transformer.modules())
    assert set(processor_backends(pipe.transformer)) == {None}
    pipe.set_transformer_acceleration(compile=False, attention_backend=None)
    assert torch.equal(default, latents(pipe, files))


def test_cuda_default_compiles_once_and_reference_arithmetic_runs_eager(files, dynamo, mock_cuda, caplog):
    eager = make_pipe(files)
    eager.set_transformer_acceleration(compile=False)
    expected = latents(eager, files)
    expected_reference = latents(eager, files, reference_arithmetic=True)
    without_lora = latents(eager, files, distilled_lora_scale=0.0)

    pipe = make_pipe(files)
    with caplog.at_level(logging.INFO, logger=acceleration.logger.name):
        first = latents(pipe, files)  # stage 1 (cfg, STG, isolated), stage 2 with the distilled LoRA
    assert mock_cuda == [{"fullgraph": False}]
    assert "compiling 2 transformer blocks (first call is slower)" in caplog.text
    assert compiled_blocks(pipe.transformer) == [0, 1] and not compiled_by_user(pipe.transformer)
    graphs = dynamo()
    assert 2 <= graphs <= torch._dynamo.config.recompile_limit  # stage 1 and stage 2 (LoRA) at least
    assert not counters["graph_break"]  # traced whole: fullgraph=False compiles what fullgraph=True would
    second = latents(pipe, files)  # stage 1 again after stage 2: every graph reused
    assert dynamo() == graphs and mock_cuda == [{"fullgraph": False}]
    assert (expected - without_lora).abs().max().item() > 1e-2
    for out in (first, second):
        assert (out - expected).abs().max().item() <= 1e-6  # the LoRA applied inside the compiled blocks

    reference = latents(pipe, files, reference_arithmetic=True)
    assert torch.equal(reference, expected_reference)  # eager: bit-identical to the uncompiled run
    assert dynamo() == graphs and compiled_blocks(pipe.transformer) == [0, 1]  # restored after the call
    assert mock_cuda == [{"fullgraph": False}]

    pipe.set_transformer_acceleration(compile=False)  # opting out takes the pipeline's compile back
    assert torch.equal(latents(pipe, files), expected)
    assert compiled_blocks(pipe.transformer) == []


def test_a_process_past_dynamos_recompile_limit_runs_the_new_shapes_eager(files, mock_cuda, caplog):
    """Stage 1 (batch 3-4) and stage 2 (batch 1) need several graphs; a process with several models, dtypes or
    sizes needs more than dynamo's limit (8 per block code; on an H200 the 3rd tiny model of
    benchmarks/pipeline_parity.py failed mid-call with FailOnRecompileLimitHit). Past it, the call completes."""
    eager = make_pipe(files)
    eager.set_transformer_acceleration(compile=False)
    expected = latents(eager, files)
    torch._dynamo.reset()
    counters.clear()
    try:
        pipe = make_pipe(files)
        with caplog.at_level(logging.WARNING), torch._dynamo.config.patch(recompile_limit=1):
            out = latents(pipe, files)
        assert counters["stats"]["unique_graphs"] == 1 and compiled_blocks(pipe.transformer) == [0, 1]
        assert "recompile_limit" in caplog.text  # dynamo says so
        assert (out - expected).abs().max().item() <= 1e-6
    finally:
        torch._dynamo.reset()


def test_users_compiled_blocks_are_left_alone_and_bypassed_for_reference_arithmetic(files, dynamo, mock_cuda):
    eager = make_pipe(files)
    expected = latents(eager, files, reference_arithmetic=True)
    pipe = make_pipe(files)
    pipe.transformer.compile_repeated_blocks(fullgraph=True)  # the user's (mock_cuda's spy: one recorded call)
    user_calls = list(mock_cuda)
    out = latents(pipe, files, reference_arithmetic=True)
    assert torch.equal(out, expected) and dynamo() == 0  # ran eager: nothing was compiled
    assert mock_cuda == user_calls and compiled_by_user(pipe.transformer)
    latents(pipe, files)  # a default call runs the user's compiled blocks; the pipeline compiles nothing more
    assert dynamo() > 0 and mock_cuda == user_calls
    assert compiled_blocks(pipe.transformer) == [0, 1] and compiled_by_user(pipe.transformer)


def test_block_offload_stays_eager_and_compile_true_is_refused(files, dynamo, mock_cuda):
    eager = make_pipe(files)
    eager.set_transformer_acceleration(compile=False)
    expected = latents(eager, files, stage_2=False, height=64, width=64)
    pipe = make_pipe(files)
    pipe.transformer.enable_group_offload(onload_device=CPU, offload_type="block_level", num_blocks_per_group=1)
    out = latents(pipe, files, stage_2=False, height=64, width=64)  # auto on "CUDA": hooks in the blocks, eager
    assert torch.equal(out, expected) and mock_cuda == [] and dynamo() == 0
    pipe.set_transformer_acceleration(compile=True)
    with pytest.raises(ValueError, match="compile=True: the transformer blocks carry offload hooks"):
        latents(pipe, files, stage_2=False, height=64, width=64)
    assert mock_cuda == [] and compiled_blocks(pipe.transformer) == []


def test_explicit_backend_is_set_on_the_processors_and_garbage_refused(files):
    pipe = make_pipe(files)
    with pytest.raises(ValueError, match="compile must be 'auto', True or False"):
        pipe.set_transformer_acceleration(compile="fast")
    with pytest.raises(ValueError, match="attention_backend must be 'auto', None or one of"):
        pipe.set_transformer_acceleration(attention_backend="nope")
    pipe.set_transformer_acceleration(attention_backend="_native_math")
    out = latents(pipe, files, stage_2=False, height=64, width=64)
    assert set(processor_backends(pipe.transformer)) == {AttentionBackendName._NATIVE_MATH}
    assert torch.isfinite(out).all()


def test_following_the_refusals_advice_literally_lets_the_call_run(files, process_backend):
    """The user's backend on this transformer refuses another explicit one; the message says to call
    `pipe.transformer.reset_attention_backend()`: done as written, the next call runs with the pipeline's backend
    (before: still refused, as the reset leaves diffusers' process-wide default set)."""
    pipe = make_pipe(files)
    pipe.transformer.set_attention_backend("_native_math")
    pipe.set_transformer_acceleration(attention_backend="native")
    with pytest.raises(ValueError, match=r"attention_backend='native': the user already set") as refusal:
        latents(pipe, files, stage_2=False, height=64, width=64)
    advice = "pipe.transformer.reset_attention_backend()"
    assert advice in str(refusal.value)
    eval(advice, {"pipe": pipe})  # the advice, literally
    out = latents(pipe, files, stage_2=False, height=64, width=64)
    assert torch.isfinite(out).all()
    assert set(processor_backends(pipe.transformer)) == {AttentionBackendName.NATIVE}


def test_a_fresh_pipeline_is_not_affected_by_another_models_backend(files, process_backend):
    """`set_attention_backend` on another model (it sets diffusers' process-wide default too) does not make a fresh
    pipeline's transformer "set by the user": an explicit backend is set on its processors, and "auto" sets nothing
    over the process-wide default (before: the explicit one was refused)."""
    tiny_transformer(num_layers=1).set_attention_backend("_native_math")
    pipe = make_pipe(files)
    assert not backend_set_by_user(pipe.transformer)
    expected = latents(make_pipe(files), files, stage_2=False, height=64, width=64)  # auto: nothing set
    assert set(processor_backends(pipe.transformer)) == {None}
    pipe.set_transformer_acceleration(attention_backend="native")
    out = latents(pipe, files, stage_2=False, height=64, width=64)
    assert set(processor_backends(pipe.transformer)) == {AttentionBackendName.NATIVE}
    assert (out - expected).abs().max().item() <= 1e-5  # _native_math and native SDPA agree on the CPU


def test_missing_backend_package_is_refused_when_set(files):
    from diffusers.models import attention_dispatch

    if attention_dispatch._CAN_USE_FLASH_ATTN:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ValueError, match="attention_backend='flash' cannot run here"):
        make_pipe(files).set_transformer_acceleration(attention_backend="flash")


# ------------------------------------------------------------------------------------------------ compiled + LoRA
def random_distilled_lora(model, seed=5):
    """A distilled LoRA on the q projections and second feed-forward linears of every block."""
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for name, module in model.named_modules():
        if name.startswith("transformer_blocks") and name.endswith(("to_q", "ff.net.2")):
            pairs[f"transformer.{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=g) * 0.3
            pairs[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=g) * 0.3
    return LTX2DistilledLoRA.from_state_dict(pairs)


def test_inductor_compiled_blocks_apply_the_distilled_lora(dynamo):
    """Inductor on the CPU, the pipeline's compile (`apply_compile`): with the distilled LoRA swapped into the
    block linears (stage 2) the block recompiles and equals eager; without it (stage 1 of the next call) the
    first graph is reused: two graphs in all."""
    model = tiny_transformer(num_layers=1)
    kwargs = forward_kwargs(model)
    lora = random_distilled_lora(model)
    with torch.no_grad():
        plain = model(**kwargs)[0]
        with lora.applied(model, 0.8):
            with_lora = model(**kwargs)[0]
        apply_compile(model, True)
        outputs = []
        for _ in range(2):  # stage 1, stage 2, then the next call's stage 1 and stage 2
            outputs.append((model(**kwargs)[0], "plain"))
            with lora.applied(model, 0.8):
                outputs.append((model(**kwargs)[0], "lora"))
    assert dynamo() == 2
    scale = plain.abs().max().item()
    assert (with_lora - plain).abs().max().item() > 0.1 * scale  # the LoRA matters
    for out, kind in outputs:
        expected = with_lora if kind == "lora" else plain
        assert (out - expected).abs().max().item() <= 1e-4 * scale


def test_compiled_blocks_recompile_for_the_fp8_lora_hook(dynamo):
    """float8 linears get the distilled LoRA from a forward hook, on which dynamo does not guard: the marker class
    makes the compiled block recompile (before, it kept computing without the LoRA)."""
    model = tiny_transformer(num_layers=1)
    fp8_cast(model)
    kwargs = forward_kwargs(model)
    lora = random_distilled_lora(model)
    assert model.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn
    with torch.no_grad():
        plain = model(**kwargs)[0]
        with lora.applied(model, 0.8):
            with_lora = model(**kwargs)[0]
        model.compile_repeated_blocks(fullgraph=True, backend="eager")
        compiled_plain = model(**kwargs)[0]
        with lora.applied(model, 0.8):
            compiled_lora = model(**kwargs)[0]
        compiled_plain_again = model(**kwargs)[0]
    assert (with_lora - plain).abs().max() > 0.1
    assert (compiled_lora - with_lora).abs().max() <= 1e-5
    assert (compiled_plain - plain).abs().max() <= 1e-5 and (compiled_plain_again - plain).abs().max() <= 1e-5
    assert dynamo() == 2


# ------------------------------------------------------------------------------------------------ CLI
class _Recorder:
    def set_transformer_acceleration(self, **kwargs):
        self.setting = kwargs


@pytest.mark.parametrize("cli", [a2vid, av_cli])
def test_cli_flags_reach_the_pipeline(cli, capsys):
    base = ["--model", "m", "--prompt", "p", "--output-path", "o.mp4"]
    base += ["--audio-path", "a.wav"] if cli is a2vid else []
    parser = cli.build_parser()
    for argv, expected in (
        ([], dict(compile="auto", attention_backend="auto")),
        (["--compile", "off", "--attention-backend", "native"], dict(compile=False, attention_backend="native")),
        (["--compile", "on"], dict(compile=True, attention_backend="auto")),
    ):
        pipe = _Recorder()
        apply_acceleration_flags(pipe, parser.parse_args(base + argv))
        assert pipe.setting == expected
    for argv, flag in ((["--compile", "fast"], "--compile"), (["--attention-backend", "nope"], "--attention-backend")):
        with pytest.raises(SystemExit):
            parser.parse_args(base + argv)
        assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("offload", ["sequential", "group"])
def test_cli_compile_on_with_block_offload_is_refused_before_loading(offload, capsys):
    parser = a2vid.build_parser()
    base = ["--model", "m", "--prompt", "p", "--output-path", "o.mp4", "--audio-path", "a.wav", "--offload", offload]
    cli_common.check_acceleration(parser, parser.parse_args([*base, "--compile", "auto"]))  # eager there: fine
    with pytest.raises(SystemExit):
        cli_common.check_acceleration(parser, parser.parse_args([*base, "--compile", "on"]))
    assert f"--compile on cannot compile the transformer blocks under --offload {offload}" in capsys.readouterr().err


def test_cli_flags_on_a_pipeline_without_the_setting_are_refused():
    args = a2vid.build_parser().parse_args(
        ["--model", "m", "--prompt", "p", "--output-path", "o.mp4", "--audio-path", "a.wav", "--compile", "on"]
    )
    with pytest.raises(ValueError, match="--compile/--attention-backend"):
        apply_acceleration_flags(object(), args)
    args.compile = "auto"
    apply_acceleration_flags(object(), args)  # defaults: nothing to set
