"""Audio-to-video end to end: ours vs ltx-pipelines' A2VidPipelineTwoStage on the same random weights, one process.

    python benchmarks/a2v_end_to_end.py                       # H200: full-size LTX-2.3, 121 x 1024 x 1536, 30 + 3
    python benchmarks/a2v_end_to_end.py --tiny                # CPU, tiny checkpoint, under a minute
    python benchmarks/a2v_end_to_end.py --sides reference,ours,ours-eager,ours-tiled,ours-budget@24

Both sides read one *virtual* checkpoint: the original single-file key names and shapes come from ltx-core's own
models built on the meta device (tests/factories.py, benchmarks/convert_memory.py); every tensor is drawn when a
loader asks for it, seeded by its key, on the GPU for the large ones (no file is written). The two sides therefore
hold identical weights and each side's memory is its own. `safetensors.safe_open` is answered for the virtual paths
only (test-side patching, as tests/reference_pipeline.py patches the reference). The distilled LoRA (rank 384 by
default) is a virtual ComfyUI-format file too: ltx-core fuses it when it builds the stage-2 transformer, ours loads it
through `load_lora_weights`. Gemma is bypassed with random post-connector contexts on both sides; the reference's audio
file read is replaced by the same samples ours receives as an array.

Each side runs once to warm up (fewer stage-1 steps) and once timed. Reported per side: wall time end to end, wall
time of each phase (prepare = audio encode + model builds before the first step, stage 1, upsample = everything
between the stages, stage 2, decode), CUDA-event time per stage-1 step and per transformer forward (median), and
peak allocated memory per phase. Prints a table and one JSON line (`--json PATH` also writes it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from unittest import mock

import numpy as np
import torch


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import factories  # noqa: E402


GEMMA_HIDDEN, GEMMA_STATES = 3840, 49
CHECKPOINT = "/virtual/ltx-2.3-random.safetensors"
UPSAMPLER = "/virtual/ltx-2.3-spatial-upscaler-random.safetensors"
LORA = "/virtual/ltx-2.3-distilled-lora-random.safetensors"
LARGE = 1 << 20  # tensors above this many elements are drawn on the generation device, in the target dtype
LATENT: dict[str, torch.Tensor] = {}  # the final video latent each side handed to its decoder (normalised space)


# ---------------------------------------------------------------------------------------------------------
# Virtual checkpoints
# ---------------------------------------------------------------------------------------------------------
def _seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class VirtualFile:
    """key -> recipe; `get_tensor` draws the value (small: factories' seeded CPU values; large: normal noise)."""

    def __init__(self, metadata: dict, dtype: torch.dtype, device: torch.device, seed: int):
        self.metadata, self.dtype, self.device, self.seed = metadata, dtype, device, seed
        self.out = device  # where get_tensor hands values out (drawn on `device`)
        self.small: dict[str, torch.Tensor] = {}
        self.large: dict[str, tuple[tuple[int, ...], float]] = {}

    def keys(self):
        return list(self.small) + list(self.large)

    def shape(self, key):
        return tuple(self.small[key].shape) if key in self.small else self.large[key][0]

    def get(self, key: str) -> torch.Tensor:
        if key in self.small:
            return self.small[key].to(self.out)
        shape, std = self.large[key]
        generator = torch.Generator(self.device).manual_seed(_seed(self.seed, key))
        value = torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        return value.mul_(std).to(self.out)

    def nbytes(self) -> int:
        size = self.dtype.itemsize
        return sum(t.nbytes for t in self.small.values()) + sum(math.prod(s) * size for s, _ in self.large.values())


def _std(model: torch.nn.Module, model_key: str, shape) -> float:
    module_name, _, _ = model_key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    nn = torch.nn
    if isinstance(module, nn.Linear):
        fan_in = module.in_features
    elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        fan_in = shape[0] * math.prod(shape[2:]) / math.prod(module.stride)
    else:
        fan_in = math.prod(shape[1:])
    return factories._vocoder_gain(model, module_name) / math.sqrt(max(fan_in, 1))


def _fill(vf: VirtualFile, model_name: str, model: torch.nn.Module) -> None:
    key_map = factories.file_key_map(model_name, model)
    cache: dict = {}
    for model_key, tensor in model.state_dict(keep_vars=True).items():
        key = key_map[model_key]
        if key in vf.small or key in vf.large:
            continue
        if tensor.numel() > LARGE and model_key.endswith("weight"):
            vf.large[key] = (tuple(tensor.shape), _std(model, model_key, tensor.shape))
        else:
            value = factories._random_value(model, model_key, tensor, vf.seed, key, cache)
            vf.small[key] = value.to(vf.dtype).contiguous()


def full_size_config() -> tuple[dict, dict]:
    """LTX-2.3 at release size (48 blocks, 8 connector blocks) and the released x2 spatial upsampler."""
    from convert_memory import full_width_config

    return full_width_config(48, 8), factories.upsampler_config(mid_channels=1024)


def virtual_files(config, upsampler_config, lora_rank, dtype, device, seed=0, gemma_dims=(GEMMA_HIDDEN, GEMMA_STATES)):
    checkpoint = VirtualFile({"config": json.dumps(config), "model_version": "2.3.0"}, dtype, device, seed)
    for model_names in factories._COMPONENT_MODELS.values():
        for name in model_names:
            _fill(checkpoint, name, factories._instantiate(name, config, gemma_dims))
    upsampler = VirtualFile({"config": json.dumps(upsampler_config)}, dtype, device, seed + 1)
    _fill(upsampler, "upsampler", factories._instantiate("upsampler", upsampler_config))
    # The distilled LoRA, ComfyUI format, over the block linears (factories.build_lora's layout and scales).
    lora = VirtualFile({}, dtype, device, seed + 2)
    prefix = "model.diffusion_model."
    targets = tuple("." + t for t in factories._LORA_TARGETS)
    for key in sorted(checkpoint.keys()):
        shape = checkpoint.shape(key)
        if not key.startswith(prefix + "transformer_blocks.") or not key.endswith(".weight") or len(shape) != 2:
            continue
        module = key[: -len(".weight")]
        if not module.endswith(targets):
            continue
        out_features, in_features = shape
        name = "diffusion_model." + module[len(prefix) :]
        lora.large[name + ".lora_A.weight"] = ((lora_rank, in_features), 1.0 / math.sqrt(in_features))
        lora.large[name + ".lora_B.weight"] = ((out_features, lora_rank), 0.5 / math.sqrt(lora_rank))
    return {CHECKPOINT: checkpoint, UPSAMPLER: upsampler, LORA: lora}


_SAFETENSORS_DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


class _Handle:
    def __init__(self, vf: VirtualFile, device):
        self.vf, self.device = vf, device

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return self.vf.keys()

    def metadata(self):
        return dict(self.vf.metadata)

    def get_slice(self, key):
        shape = self.vf.shape(key)
        dtype = self.vf.small[key].dtype if key in self.vf.small else self.vf.dtype
        name = _SAFETENSORS_DTYPE_NAMES[dtype]
        return type("Slice", (), {"get_shape": lambda self: list(shape), "get_dtype": lambda self: name})()

    def get_tensor(self, key):
        value = self.vf.get(key)
        return value if self.device is None else value.to(self.device)


@contextlib.contextmanager
def serve(files: dict[str, VirtualFile]):
    """Answer `safe_open` (safetensors' and the names our loaders imported) for the virtual paths."""
    import safetensors

    from ltx2_diffusers.loaders import single_file, single_file_connectors

    real_open, real_check = safetensors.safe_open, single_file._check_safetensors_file

    def safe_open(path, framework="pt", device=None):
        path = str(path)
        if path in files:
            return _Handle(
                files[path], None if device in (None, "cpu") and files[path].device.type == "cpu" else device
            )
        return real_open(path, framework=framework, device=device or "cpu")

    def check(path):
        if str(path) not in files:
            real_check(path)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(safetensors, "safe_open", safe_open))
        stack.enter_context(mock.patch.object(single_file, "safe_open", safe_open))
        stack.enter_context(mock.patch.object(single_file_connectors, "safe_open", safe_open))
        stack.enter_context(mock.patch.object(single_file, "_check_safetensors_file", check))
        yield


# ---------------------------------------------------------------------------------------------------------
# Probes: phases, forwards, memory
# ---------------------------------------------------------------------------------------------------------
class Probe:
    """Phase marks (wall + device clock, peak memory per phase) and per-forward device times."""

    PHASES = ("prepare", "stage_1", "upsample", "stage_2", "decode", "finish")

    def __init__(self, device: torch.device, stage_1_tokens: int):
        self.cuda = device.type == "cuda"
        self.stage_1_tokens = stage_1_tokens
        self.marks: list[tuple[str, float, object]] = []
        self.peaks: dict[str, float] = {}
        self.forwards: list[tuple[str, object, object]] = []
        self.phase = None

    def _stamp(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _elapsed(self, a, b) -> float:
        return a.elapsed_time(b) / 1000 if self.cuda else b - a

    def mark(self, phase: str) -> None:
        if phase == self.phase:
            return
        if self.phase is not None and self.cuda:
            self.peaks[self.phase] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        self.marks.append((phase, time.perf_counter(), self._stamp()))
        self.phase = phase

    def forward_pre(self, tokens: int) -> None:
        self.mark("stage_1" if tokens <= self.stage_1_tokens else "stage_2")
        self._open = self._stamp()

    def forward_post(self) -> None:
        self.forwards.append((self.phase, self._open, self._stamp()))

    def wrap(self, fn, phase):
        def wrapped(*args, **kwargs):
            self.mark(phase)
            return fn(*args, **kwargs)

        return wrapped

    def report(self, stage_1_steps: int) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
        phases = {}
        for (name, _, a), (_, _, b) in zip(self.marks, self.marks[1:]):  # device clock: queued work counts
            phases[name] = phases.get(name, 0.0) + self._elapsed(a, b)
        forwards = {}
        for phase, a, b in self.forwards:
            forwards.setdefault(phase, []).append(self._elapsed(a, b))
        stage_1 = [(a, b) for phase, a, b in self.forwards if phase == "stage_1"]
        step = self._elapsed(stage_1[0][0], stage_1[-1][1]) / stage_1_steps if stage_1 else float("nan")
        return {
            "phase_s": phases,
            "peak_gib": dict(self.peaks),
            "stage_1_step_s": step,
            "forwards": {k: len(v) for k, v in forwards.items()},
            "forward_ms": {k: 1000 * statistics.median(v) for k, v in forwards.items()},
        }


def _tokens_of(args, kwargs) -> int:
    video = kwargs.get("hidden_states", kwargs.get("video", args[0] if args else None))
    video = getattr(video, "latent", video)
    return int(video.shape[1])


def attach(model: torch.nn.Module, probe: Probe) -> torch.nn.Module:
    model.register_forward_pre_hook(lambda m, a, k: probe.forward_pre(_tokens_of(a, k)), with_kwargs=True)
    model.register_forward_hook(lambda m, a, o: probe.forward_post())
    return model


# ---------------------------------------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------------------------------------
OUR_OPTIONS = ("eager", "compiled", "tiled", "fp8", "budget", "default", "offload", "exact")


def side_options(side: str) -> set[str]:
    """`ours-fp8-tiled` -> {"fp8", "tiled"}: our side's options (OUR_OPTIONS), checked."""
    options = set(side.split("-")[1:])
    unknown = options - set(OUR_OPTIONS)
    if side.split("-")[0] != "ours" or unknown:
        raise ValueError(f"unknown side {side!r}: ours[-{'|-'.join(OUR_OPTIONS)}]... or reference")
    return options


def build_ours(files, dtype, device, options: set[str], attention_backend: str | None = None, budget_gib=None,
               shape: dict | None = None):  # fmt: skip
    """Our pipeline as a user builds it: from the single file, the distilled LoRA through `load_lora_weights`,
    then the side's options: `eager` (no regional compile; the default compiles on CUDA), `compiled` (the
    user compiles the blocks themselves), `tiled` (`enable_vae_tiling()`: ltx-core's tiles, as the reference CLI),
    `fp8` (float8 scaled matmuls), `budget` (`enable_memory_budget` at the side's cap), `default` (the CLI's
    default placement: `enable_memory_budget` at the free memory, at most `DEFAULT_MEMORY_BUDGET_GIB`), `offload`
    (group offload, block level, stream)."""
    from ltx2_diffusers import LTX2AudioToVideoPipeline

    on_host = bool({"budget", "default", "offload"} & options)
    for vf in files.values():  # offloaded weights live on the CPU from the start
        vf.out = torch.device("cpu") if on_host else vf.device
    with serve(files):
        pipe = LTX2AudioToVideoPipeline.from_single_file(
            CHECKPOINT, spatial_upsampler_path=UPSAMPLER, distilled_lora=None, torch_dtype=dtype
        )
        lora = files[LORA]
        pipe.load_lora_weights({k: lora.get(k) for k in lora.keys()}, adapter_name="distilled")
    pipe.set_progress_bar_config(disable=True)
    pipe.connectors.to("cpu")  # Gemma and the connectors are bypassed: contexts are given
    if "eager" in options:
        pipe.set_transformer_acceleration(compile=False)
    if "fp8" in options:
        from ltx2_diffusers.loaders.fp8 import enable_fp8_scaled_mm

        pipe.transformer.to(device)
        before = one_forward(pipe.transformer, device, dtype)
        enable_fp8_scaled_mm(pipe.transformer)
        after = one_forward(pipe.transformer, device, dtype)
        pipe.fp8_forward_rel_err = ((after - before).norm() / before.norm()).item()
        pipe.fp8_forward_max_abs = (after - before).abs().max().item()
    if "default" in options:
        from ltx2_diffusers.pipelines.memory import DEFAULT_MEMORY_BUDGET_GIB

        free = torch.cuda.mem_get_info(device)[0] / 2**30 if device.type == "cuda" else DEFAULT_MEMORY_BUDGET_GIB
        budget_gib = min(free, DEFAULT_MEMORY_BUDGET_GIB)
        pipe.memory_tier = str(pipe.enable_memory_budget(budget_gib, device, **shape))
    elif "budget" in options:
        pipe.memory_tier = str(pipe.enable_memory_budget(budget_gib, device, **shape))
    elif "offload" in options:
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), use_stream=True)
    else:
        pipe.to(device)
    if "tiled" in options:
        pipe.enable_vae_tiling()
    if attention_backend:
        pipe.transformer.set_attention_backend(attention_backend)
    if "compiled" in options:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    return pipe


def one_forward(transformer, device, dtype, video_tokens=6144):
    """One batch-1 forward at the stage-1 token count on fixed random inputs (transformer_step's), float32 out."""
    from transformer_step import _ours_kwargs, make_inputs

    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    x = make_inputs(video_tokens, 126, 256, device, dtype, seed=3)
    x["video_context"] = x["video_context"][..., :width]
    x["audio_context"] = x["audio_context"][..., : transformer.config.audio_num_attention_heads
                                            * transformer.config.audio_attention_head_dim]  # fmt: skip
    with torch.no_grad():
        return transformer(**_ours_kwargs(x, 1, x["video_context"]))[0].float()


def run_ours(pipe, inputs, probe: Probe | None, steps: int, extra: dict | None = None):
    from ltx2_diffusers import MultiModalGuidance

    real_decode = type(pipe).decode.__get__(pipe)

    def capture(latents, *args, **kwargs):
        LATENT["video"] = latents.detach().float().cpu()
        return real_decode(latents, *args, **kwargs)

    pipe.decode = capture
    handles = []
    if probe is not None:
        handles = [
            pipe.transformer.register_forward_pre_hook(
                lambda m, a, k: probe.forward_pre(_tokens_of(a, k)), with_kwargs=True
            ),
            pipe.transformer.register_forward_hook(lambda m, a, o: probe.forward_post()),
        ]
        pipe.upsample = probe.wrap(type(pipe).upsample.__get__(pipe), "upsample")
        pipe.decode = probe.wrap(capture, "decode")
        probe.mark("prepare")
    try:
        out = pipe(
            audio=inputs["waveform"],
            audio_sample_rate=inputs["rate"],
            prompt_contexts=inputs["positive"],
            negative_prompt_contexts=inputs["negative"],
            height=inputs["height"],
            width=inputs["width"],
            num_frames=inputs["num_frames"],
            frame_rate=inputs["frame_rate"],
            num_inference_steps=steps,
            generator=torch.Generator(inputs["device"]).manual_seed(inputs["seed"]),
            output_type="pt",
            video_guidance=MultiModalGuidance(stg_blocks=[inputs["stg_block"]]),
            **(extra or {}),
        )
        frames = out.frames
        if probe is not None:
            probe.mark("finish")
    finally:
        for h in handles:
            h.remove()
        pipe.__dict__.pop("upsample", None)
        pipe.__dict__.pop("decode", None)
    return frames


@contextlib.contextmanager
def reference_patches(files, inputs, probe: Probe | None, dtype):
    """Test-side patches of ltx-pipelines 1.0: contexts instead of Gemma, the array instead of the audio file, a
    consumed (timed) decode, probes on the transformer / upsampler / decoder."""
    import ltx_pipelines.a2vid_two_stage as a2vid
    from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessorOutput
    from ltx_core.types import Audio
    from ltx_pipelines.utils.model_ledger import ModelLedger

    device = inputs["device"]
    captured = {}

    def encode_prompts(prompts, ledger, **kwargs):
        mask = torch.ones(1, inputs["positive"][0].shape[1], dtype=torch.int64, device=device)
        pos, neg = (tuple(c.to(device=device, dtype=dtype) for c in pair) for pair in (inputs["positive"],
                                                                                      inputs["negative"]))  # fmt: skip
        return [EmbeddingsProcessorOutput(*pos, mask), EmbeddingsProcessorOutput(*neg, mask)]

    def decode_audio(path, device_, start_time=0.0, max_duration=None):
        rate = inputs["rate"]
        samples = inputs["waveform"]
        if max_duration is not None:
            samples = samples[:, : round(max_duration * rate)]
        return Audio(waveform=torch.from_numpy(samples)[None].to(device_), sampling_rate=rate)

    real_decode, real_upsample, real_transformer = (
        a2vid.vae_decode_video,
        a2vid.upsample_video,
        ModelLedger.transformer,
    )

    def decode(latent, decoder, tiling_config, generator):
        if probe is not None:
            probe.mark("decode")
        LATENT["video"] = latent.detach().float().cpu()
        chunks = list(real_decode(latent, decoder, tiling_config, generator))
        captured["frames"] = chunks
        if probe is not None:
            probe.mark("finish")
        return iter(chunks)

    def upsample(*args, **kwargs):
        if probe is not None:
            probe.mark("upsample")
        return real_upsample(*args, **kwargs)

    def transformer(self):
        model = real_transformer(self)
        return attach(model, probe) if probe is not None else model

    with contextlib.ExitStack() as stack:
        stack.enter_context(serve(files))
        stack.enter_context(mock.patch.object(a2vid, "encode_prompts", encode_prompts))
        stack.enter_context(mock.patch.object(a2vid, "decode_audio_from_file", decode_audio))
        stack.enter_context(mock.patch.object(a2vid, "vae_decode_video", decode))
        stack.enter_context(mock.patch.object(a2vid, "upsample_video", upsample))
        stack.enter_context(mock.patch.object(ModelLedger, "transformer", transformer))
        if device.type == "cpu":
            stack.enter_context(mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None))
        yield captured


def run_reference(files, inputs, probe: Probe | None, steps: int, dtype):
    import ltx_pipelines.a2vid_two_stage as a2vid
    from ltx_core.loader import LoraPathStrengthAndSDOps
    from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.utils.constants import LTX_2_3_PARAMS

    device = inputs["device"]
    # inference mode as its CLI's main(): parameters built by ltx-core require grad, so outside it autograd keeps
    # every activation of the 48 blocks.
    with reference_patches(files, inputs, probe, dtype) as captured, torch.inference_mode():
        if probe is not None:
            probe.mark("prepare")
        pipe = a2vid.A2VidPipelineTwoStage(
            checkpoint_path=CHECKPOINT,
            distilled_lora=[LoraPathStrengthAndSDOps(LORA, 0.8, LTXV_LORA_COMFY_RENAMING_MAP)],
            spatial_upsampler_path=UPSAMPLER,
            gemma_root=None,
            loras=[],
            device=device,
        )
        params = dataclasses.replace(LTX_2_3_PARAMS.video_guider_params, stg_blocks=[inputs["stg_block"]])
        pipe(
            prompt="unused",
            negative_prompt="unused",
            seed=inputs["seed"],
            height=inputs["height"],
            width=inputs["width"],
            num_frames=inputs["num_frames"],
            frame_rate=inputs["frame_rate"],
            num_inference_steps=steps,
            video_guider_params=params,
            images=[],
            audio_path="unused.wav",
            audio_max_duration=inputs["num_frames"] / inputs["frame_rate"],
            tiling_config=TilingConfig.default(),  # as its CLI (untiled, the full-size decode runs out of memory)
        )
    frames = torch.cat([c for c in captured["frames"]], dim=0) if captured.get("frames") else None
    return frames


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(name, run, device, stage_1_tokens, steps, warmup_steps):
    """Warm-up call, then a timed call with probes; returns the row."""
    t0 = time.perf_counter()
    run(None, warmup_steps)
    _sync(device)
    warm = time.perf_counter() - t0
    _free(device)
    probe = Probe(device, stage_1_tokens)
    base = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    t0 = time.perf_counter()
    frames = run(probe, steps)
    _sync(device)
    total = time.perf_counter() - t0
    row = {"side": name, "total_s": total, "warmup_s": warm, "resident_before_gib": base, **probe.report(steps)}
    row["peak_total_gib"] = max(row["peak_gib"].values(), default=float("nan"))
    return row, frames


def run_side(
    side, files, inputs, dtype, device, stage_1_tokens, steps, warmup_steps, frames_out, attention_backend, cap=None
):
    try:
        if side == "reference":

            def run(probe, n):
                return run_reference(files, inputs, probe, n, dtype)

            pipe = None
        else:
            t_build = time.perf_counter()
            options = side_options(side)
            shape = {k: inputs[k] for k in ("height", "width", "num_frames")}
            if "exact" in options:  # a budget's decode estimate: the calls will not walk the decoder channels-last
                shape["reference_arithmetic"] = True
            pipe = build_ours(files, dtype, device, options, attention_backend, cap, shape)
            _sync(device)
            build_s = time.perf_counter() - t_build
            extra = {"reference_arithmetic": True} if "exact" in options else {}

            def run(probe, n):
                return run_ours(pipe, inputs, probe, n, extra)

        row, frames = measure(side, run, device, stage_1_tokens, steps, warmup_steps)
        if pipe is not None:
            row["build_s"] = build_s
            for key in ("fp8_forward_rel_err", "fp8_forward_max_abs", "memory_tier"):
                if hasattr(pipe, key):
                    row[key] = getattr(pipe, key)
        if frames_out:
            torch.save({"frames": _frames(frames).half(), "latent": LATENT.get("video")}, frames_out)
    except torch.OutOfMemoryError as e:  # a side that does not fit under the cap is a result, not a crash
        where = [f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in traceback.extract_tb(e.__traceback__)]
        row = {
            "side": side,
            "error": f"out of memory: {str(e).splitlines()[0][:120]} at {' < '.join(where[::-1][:6])}",
        }
    except ValueError as e:  # e.g. fp8 matmuls refused on this device
        row = {"side": side, "error": f"refused: {e}"}
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint on the CPU (smoke test)")
    parser.add_argument("--sides", default="ours,reference", help="comma list of: reference, ours, ours-OPTION[-OPTION]"
                        f" with OPTION in {', '.join(OUR_OPTIONS)} (see build_ours); NAME@GIB runs that side under a "
                        "GIB memory cap (and `budget` budgets that)")  # fmt: skip
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="stage-1 steps (default 30; tiny 2)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="stage-1 steps of the warm-up call (2)")
    parser.add_argument("--lora-rank", type=int, default=None)
    parser.add_argument("--memory-cap-gib", type=float, default=None, help="torch.cuda per-process memory cap (all "
                        "sides; a side written NAME@GIB gets its own cap)")  # fmt: skip
    parser.add_argument("--device", default=None)
    parser.add_argument("--attention-backend", default=None, help="diffusers attention backend for our sides "
                        "(e.g. _native_cudnn, flash_hub); default: native SDPA")  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the JSON line to this path")
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)  # child process: run this side only
    parser.add_argument("--frames-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("steps", "warmup_steps"):  # the pipeline takes at least 2 stage-1 steps; refuse before any build
        if getattr(args, flag) is not None and getattr(args, flag) < 2:
            parser.error(f"--{flag.replace('_', '-')} must be at least 2 (the pipeline's num_inference_steps >= 2)")

    tiny = args.tiny
    device = torch.device(args.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda"))
    dtype = torch.bfloat16  # the reference computes in bfloat16 only
    num_frames = args.num_frames or (9 if tiny else 121)
    height = args.height or (128 if tiny else 1024)
    width = args.width or (128 if tiny else 1536)
    steps = args.steps or (2 if tiny else 30)
    warmup_steps = args.warmup_steps or 2
    rank = args.lora_rank or (4 if tiny else 384)
    frame_rate = 24.0
    cap = args.memory_cap_gib
    if args.side is not None and "@" in args.side:  # "ours-offload@24": this side under a 24 GiB cap
        args.side, cap = args.side.split("@")[0], float(args.side.split("@")[1])
    if cap and device.type == "cuda" and args.side is not None:
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), torch.cuda.current_device())

    t0 = time.perf_counter()
    if tiny:
        config = factories.checkpoint_config("2.3")
        up_config = factories.upsampler_config()
        gemma = (config["transformer"]["caption_channels"], factories.TEXT_NUM_HIDDEN_STATES)
    else:
        config, up_config = full_size_config()
        gemma = (GEMMA_HIDDEN, GEMMA_STATES)

    section = config["transformer"]
    g = torch.Generator().manual_seed(7)
    video_dim = section["num_attention_heads"] * section["attention_head_dim"]
    audio_dim = section["audio_num_attention_heads"] * section["audio_attention_head_dim"]
    text_tokens = 32 if tiny else 1024

    def context():
        return (
            torch.randn(1, text_tokens, video_dim, generator=g).to(dtype),
            torch.randn(1, text_tokens, audio_dim, generator=g).to(dtype),
        )

    rate = 48000
    t = np.arange(int(rate * (num_frames / frame_rate + 0.5))) / rate
    waveform = (np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 3 * t)]) * 0.4).astype(np.float32)
    inputs = dict(
        waveform=waveform, rate=rate, positive=context(), negative=context(), height=height, width=width,
        num_frames=num_frames, frame_rate=frame_rate, seed=10, device=device, stg_block=1 if tiny else 28,
    )  # fmt: skip
    latent_frames = (num_frames - 1) // 8 + 1
    stage_1_tokens = latent_frames * (height // 64) * (width // 64)

    if args.side is not None:  # child: one side, its row as the last stdout line, its frames to a file
        files = virtual_files(config, up_config, rank, dtype, device, gemma_dims=gemma)
        recipe_s = time.perf_counter() - t0
        row = run_side(
            args.side, files, inputs, dtype, device, stage_1_tokens, steps, warmup_steps, args.frames_out,
            args.attention_backend, cap,
        )  # fmt: skip
        row.update(recipe_s=recipe_s, weights_gib=files[CHECKPOINT].nbytes() / 2**30, memory_cap_gib=cap)
        if cap:
            row["side"] = f"{args.side}@{cap:g}GiB"
        print("ROW " + json.dumps(row))
        return row

    # Parent: each side in its own process (clean memory and compile caches), one after the other, same machine.
    rows, frame_files = [], {}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="a2v_e2e_"))
    for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
        frame_files[side] = workdir / f"{side.replace('@', '_')}.pt"
        cmd = [sys.executable, __file__, "--side", side, "--frames-out", str(frame_files[side])]
        cmd += [a for a in (argv if argv is not None else sys.argv[1:])]
        child = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in child.stdout.splitlines() if line.startswith("ROW ")]
        if child.returncode != 0 or not lines:
            tail = (child.stderr or child.stdout).strip().splitlines()[-3:]
            row = {"side": side, "error": f"exit {child.returncode}: " + " | ".join(tail)}
        else:
            row = json.loads(lines[-1][4:])
        print(f"[{side}] " + (row.get("error") or f"{row['total_s']:.2f} s"), file=sys.stderr, flush=True)
        print("SIDE " + json.dumps(row), flush=True)  # each side's full row as soon as it ends
        rows.append(row)
        frame_files[row["side"]] = frame_files.pop(side)

    # Output differences (frames in [0, 1]) against the first side that ran: the same random weights and seed.
    names = [r["side"] for r in rows if "error" not in r and frame_files[r["side"]].exists()]
    if names:
        base = torch.load(frame_files[names[0]])
        for row in rows:
            if row["side"] in names:
                other = torch.load(frame_files[row["side"]])
                delta = other["frames"].float() - base["frames"].float()
                row["max_abs_diff_vs_" + names[0]] = delta.abs().max().item()
                row["mean_abs_diff_vs_" + names[0]] = delta.abs().mean().item()
                if other["latent"] is not None and base["latent"] is not None:  # the denoiser, without the decode
                    d = other["latent"] - base["latent"]
                    row["latent_max_abs_diff_vs_" + names[0]] = d.abs().max().item()
                    row["latent_rel_l2_vs_" + names[0]] = (d.norm() / base["latent"].norm()).item()
    shutil.rmtree(workdir, ignore_errors=True)
    _print_table(rows)
    result = {
        "benchmark": "a2v_end_to_end",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "size": {
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "stage_1_steps": steps,
            "stage_2_steps": 3,
        },
        "lora_rank": rank,
        "memory_cap_gib": args.memory_cap_gib,
        "attention_backend": args.attention_backend,
        "rows": rows,
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        pathlib.Path(args.json).write_text(line + "\n")
    return result


def _frames(frames) -> torch.Tensor:
    """(F, H, W, 3) float in [0, 1] on the CPU from either side's output."""
    x = frames.float().cpu()
    if x.dim() == 5 and x.shape[2] == 3:  # ours, output_type="pt": (B, F, 3, H, W)
        return x[0].permute(0, 2, 3, 1)
    if x.dim() == 4 and x.shape[-1] == 3:  # reference chunks: (F, H, W, 3), uint8 or float
        return x / 255.0 if frames.dtype == torch.uint8 else x
    raise ValueError(f"unexpected frame layout {tuple(x.shape)}")


def _print_table(rows) -> None:
    cols = ("total_s", "stage_1_step_s")
    phases = Probe.PHASES[:-1]
    head = f"{'side':22s} {'total s':>8s} {'s/step1':>8s} " + " ".join(f"{p[:9]:>9s}" for p in phases)
    print(head + f" {'fwd1 ms':>8s} {'fwd2 ms':>8s} {'peak GiB':>9s} {'max|d|':>9s}")
    for row in rows:
        if "error" in row:
            print(f"{row['side']:22s} {row['error']}")
            continue
        diff = next((v for k, v in row.items() if k.startswith("max_abs_diff")), float("nan"))
        print(
            f"{row['side']:22s} " + " ".join(f"{row[c]:8.2f}" for c in cols) + " "
            + " ".join(f"{row['phase_s'].get(p, float('nan')):9.2f}" for p in phases)
            + f" {row['forward_ms'].get('stage_1', float('nan')):8.0f} {row['forward_ms'].get('stage_2', float('nan')):8.0f}"
            + f" {row['peak_total_gib']:9.2f} {diff:9.2e}"
        )  # fmt: skip


if __name__ == "__main__":
    main()
