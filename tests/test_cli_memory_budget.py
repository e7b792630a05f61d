"""`--memory-budget-gib` on `ltx2-a2v` and `ltx2-av`: parsing and refusals, how it meets `--offload`, `--device`
and `--context-parallel`, and the tier `prepare_pipeline` applies (the CUDA free-memory query mocked: this machine
has no GPU). Decision: without `--offload` on CUDA the free GPU memory is the budget; an explicit `--offload`
(also `--offload none`) places the pipeline as asked and cannot be combined with `--memory-budget-gib`."""

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import cached_checkpoint

from ltx2_diffusers import a2vid, av_cli, cli_common, cli_running
from ltx2_diffusers.pipelines import memory
from ltx2_diffusers.pipelines.memory import GIB, TIERS
from ltx2_diffusers.pipelines.pipeline_ltx2_audio_to_video import LTX2AudioToVideoPipeline


FREE = 30 * GIB


@pytest.fixture
def audio(tmp_path):
    path = tmp_path / "six_seconds.wav"
    sf.write(path, np.zeros(16000 * 6, np.float32), 16000)
    return str(path)


@pytest.fixture
def cuda(monkeypatch):
    """CUDA present, `FREE` bytes free (the query is recorded)."""
    queries = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: queries.append(device) or (FREE, 141 * GIB))
    return queries


def parse(cli, audio, *extra):
    common = ["--model", "org/repo", "--prompt", "p", "--output-path", "out.mp4"]
    if cli is a2vid:
        common += ["--audio-path", audio]
    return cli.parse_args([*common, *extra])


CLIS = pytest.mark.parametrize("cli", [a2vid, av_cli], ids=["a2v", "av"])


@CLIS
def test_flag_parsed_and_offload_default_told_apart(cli, audio, cuda):
    args = parse(cli, audio, "--memory-budget-gib", "23.5")
    assert args.memory_budget_gib == 23.5 and args.offload == "none" and not cli_common.offload_given(args)
    args = parse(cli, audio)
    assert args.memory_budget_gib is None and not cli_common.offload_given(args)
    assert cli_common.offload_given(parse(cli, audio, "--offload", "none"))


@CLIS
@pytest.mark.parametrize(
    "extra, message",
    [
        (("--memory-budget-gib", "lots"), "argument --memory-budget-gib: expected a number, got 'lots'"),
        (("--memory-budget-gib", "nan"), "argument --memory-budget-gib: expected a finite number"),
        (("--memory-budget-gib", "inf"), "argument --memory-budget-gib: expected a finite number"),
        (("--memory-budget-gib", "0"), "argument --memory-budget-gib: must be > 0"),
        (("--memory-budget-gib", "-8"), "argument --memory-budget-gib: must be > 0"),
        (("--memory-budget-gib", "24", "--offload", "model"), "--memory-budget-gib chooses the offloading itself"),
        (("--memory-budget-gib", "24", "--offload", "none"), "drop --offload none or the budget"),
        (("--memory-budget-gib", "24", "--device", "cpu"), "--memory-budget-gib needs a CUDA device, got cpu"),
    ],
)
def test_refused(cli, audio, cuda, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        parse(cli, audio, *extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@CLIS
def test_refused_with_context_parallel(cli, audio, cuda, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        parse(cli, audio, "--context-parallel", "2", "--memory-budget-gib", "24")
    assert "cannot be combined with --context-parallel" in capsys.readouterr().err


def test_refused_without_cuda(audio, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        parse(a2vid, audio, "--memory-budget-gib", "24")
    assert "--memory-budget-gib needs a CUDA device, got cpu" in capsys.readouterr().err


class SpyPipe:
    """Records what `prepare_pipeline` asks of the pipeline."""

    def __init__(self):
        self.calls = []

    def enable_vae_tiling(self):
        self.calls.append(("vae tiling",))

    def enable_memory_budget(self, budget, device, **kwargs):
        self.calls.append(("budget", budget, device, kwargs))
        return TIERS[3]

    def to(self, device):
        self.calls.append(("to", device))

    def enable_model_cpu_offload(self, device):
        self.calls.append(("model offload", device))


def prepare(args, device):
    pipe = SpyPipe()
    assert cli_running.prepare_pipeline(pipe, args, device) == device
    return pipe.calls


@CLIS
def test_default_on_cuda_budgets_the_free_memory(cli, audio, cuda, capsys):
    args = parse(cli, audio, "--height", "512", "--width", "768", "--num-frames", "97", "--vae-tiling")
    calls = prepare(args, torch.device("cuda"))
    shape = dict(height=512, width=768, num_frames=97, frame_rate=24.0, stage_2=True, guidance_batch_size=None,
                 reference_arithmetic=False)  # fmt: skip
    assert calls == [("vae tiling",), ("budget", 30.0, torch.device("cuda"), shape)]
    assert cuda == [torch.device("cuda")]
    assert f"memory tier: {TIERS[3]} for 30.00 GiB (default, 30.00 GiB free on cuda)" in capsys.readouterr().out


def test_default_budget_counts_what_this_process_already_holds(audio, cuda, monkeypatch):
    """`--quantization fp8-scaled-mm` quantises the transformer on the GPU before the tier is chosen: its weights
    (and the bf16 blocks the caching allocator keeps) are not free, yet they are this pipeline's, which the
    estimates count themselves. The budget is the free memory plus what PyTorch holds on the device."""
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * GIB)
    ((kind, budget, _, _),) = prepare(parse(a2vid, audio), torch.device("cuda"))
    assert (kind, budget) == ("budget", 36.0)


def test_default_budget_falls_back_to_the_free_memory_when_the_cap_fits_no_tier(audio, cuda, monkeypatch):
    """A run too large for the 40 GiB default but not for the GPU: the whole free memory is budgeted instead."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (139 * GIB, 141 * GIB))

    class Large(SpyPipe):
        def enable_memory_budget(self, budget, device, **kwargs):
            self.calls.append(("budget", budget))
            if budget < 100:
                raise ValueError("memory_budget_gib=40 fits no memory tier")
            return TIERS[0]

    pipe = Large()
    cli_running.prepare_pipeline(pipe, parse(a2vid, audio), torch.device("cuda"))
    assert pipe.calls == [("budget", 40.0), ("budget", 139.0)]
    pipe = Large()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * GIB, 141 * GIB))
    with pytest.raises(ValueError, match=r"cuda has 60.00 GiB free: memory_budget_gib=40 fits no memory tier"):
        cli_running.prepare_pipeline(pipe, parse(a2vid, audio), torch.device("cuda"))
    assert pipe.calls == [("budget", 40.0), ("budget", 60.0)]


def test_default_budget_is_at_most_the_default_cap(audio, cuda, monkeypatch, capsys):
    """On a GPU with more free memory than `DEFAULT_MEMORY_BUDGET_GIB` (40), the default budget is 40 GiB: block
    streaming keeps the speed, so the default holds the peak to the reference's; `--memory-budget-gib` raises it."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (139 * GIB, 141 * GIB))
    ((kind, budget, _, _),) = prepare(parse(a2vid, audio), torch.device("cuda"))
    assert (kind, budget) == ("budget", memory.DEFAULT_MEMORY_BUDGET_GIB) == ("budget", 40.0)
    assert "for 40.00 GiB (default, 139.00 GiB free on cuda)" in capsys.readouterr().out
    ((kind, budget, _, _),) = prepare(parse(a2vid, audio, "--memory-budget-gib", "100"), torch.device("cuda"))
    assert (kind, budget) == ("budget", 100.0)


@CLIS
def test_explicit_budget_is_used_and_free_memory_not_queried(cli, audio, cuda):
    args = parse(cli, audio, "--memory-budget-gib", "24", "--reference-arithmetic", "--no-stage-2")
    ((kind, budget, _, shape),) = prepare(args, torch.device("cuda"))
    assert (kind, budget, shape["guidance_batch_size"], shape["stage_2"]) == ("budget", 24.0, 1, False)
    assert cuda == []


@CLIS
@pytest.mark.parametrize("offload, expected", [("none", "to"), ("model", "model offload")])
def test_explicit_offload_wins(cli, audio, cuda, offload, expected):
    args = parse(cli, audio, "--offload", offload)
    assert prepare(args, torch.device("cuda")) == [(expected, torch.device("cuda"))]
    assert cuda == []


@CLIS
def test_no_tier_on_cpu(cli, audio, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: pytest.fail("queried the GPU memory"))
    args = parse(cli, audio, "--guidance-batch-size", "2")
    assert prepare(args, torch.device("cpu")) == [("to", torch.device("cpu"))]


def test_num_frames_auto_budgets_the_frames_the_audio_gives(audio, cuda):
    # 6 s at 24 fps are 144 frames; the largest 8k + 1 is 137.
    ((_, _, _, shape),) = prepare(parse(a2vid, audio, "--num-frames", "auto"), torch.device("cuda"))
    assert shape["num_frames"] == 137
    ((_, _, _, shape),) = prepare(
        parse(a2vid, audio, "--num-frames", "auto", "--audio-max-duration", "1"), torch.device("cuda")
    )
    assert shape["num_frames"] == 17  # 24 frames -> 17


# ------------------------------------------------------------------------------------------------ real pipeline
@pytest.fixture(scope="module")
def pipe():
    checkpoint = cached_checkpoint("checkpoint", "2.3", seed=4)
    lora = cached_checkpoint("lora", checkpoint_path=checkpoint, seed=6, dtype=torch.float32)
    return LTX2AudioToVideoPipeline.from_single_file(
        checkpoint,
        spatial_upsampler_path=cached_checkpoint("upsampler", seed=5),
        distilled_lora=(lora, 0.6),
        torch_dtype=torch.float32,
    )


def test_free_memory_picks_the_tier_the_estimates_allow(pipe, audio, cuda, monkeypatch):
    """The real pipeline's measured sizes at the run's shape: the free memory just above a tier's need picks it;
    too little free memory is refused naming the device and the smallest budget (nothing is applied)."""
    applied = []
    monkeypatch.setattr(type(pipe), "enable_memory_tier", lambda self, tier, device: applied.append((tier, device)))
    args = parse(a2vid, audio, "--height", "128", "--width", "128", "--num-frames", "9")
    sizes = memory.measure_memory_sizes(pipe, height=128, width=128, num_frames=9)
    stream = replace(TIERS[1], resident_blocks=0)
    model = next(t for t in TIERS if t.offload == "model")
    for tier in (TIERS[0], stream, model):
        monkeypatch.setattr(
            torch.cuda, "mem_get_info", lambda device=None, t=tier: (memory.estimated_peak(t, sizes) / 0.9 + 64, 0)
        )
        cli_running.prepare_pipeline(pipe, args, torch.device("cuda"))
        assert applied[-1] == (tier, torch.device("cuda"))
    smallest = min(memory.estimated_peak(t, sizes) for t in TIERS)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (smallest / 2, 0))
    with pytest.raises(ValueError, match=r"cuda has .* GiB free: memory_budget_gib=.* fits no memory tier"):
        cli_running.prepare_pipeline(pipe, args, torch.device("cuda"))
    assert len(applied) == 3
