"""The two sides of benchmarks/a2v_end_to_end.py (ours as a user builds it, ltx-pipelines' A2VidPipelineTwoStage
under test-side patches) and the probes that time them (phases, forwards, peak memory)."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from unittest import mock

import torch
from a2v_virtual import CHECKPOINT, LORA, UPSAMPLER, serve


LATENT: dict[str, torch.Tensor] = {}  # the final video latent each side handed to its decoder (normalised space)


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
