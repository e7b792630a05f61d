"""Loading and LoRA-adapter behaviour of `LTX2AudioToVideoPipeline`: converted folders (local or on the Hub), the
original single files, `from_pipe`, saving, VAE tiling and the distilled LoRA's stage switch; shared by every
pipeline of the family (`LTX2PipelineBase`). Placement (offload, memory tiers): `pipeline_placement.py`."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import torch
from diffusers.utils import logging

from ..loaders.distilled_lora import (
    DEFAULT_DISTILLED_LORA_SCALE,
    DISTILLED_ADAPTER_NAME,
    DISTILLED_LORA_SUBFOLDER,
    DISTILLED_LORA_WEIGHT_NAME,
)
from ..loaders.safetensors_only import check_safetensors_only
from ..models.video_vae_tiling import VideoTilingConfig
from ..validation import check_adapter_weights
from .from_pipe_settings import carry_settings


logger = logging.get_logger(__name__)

# diffusers' and transformers' loaders swap process-wide functions while they build models (accelerate's
# `init_empty_weights` replaces `nn.Module.register_parameter`, `no_init_weights` the `torch.nn.init` functions)
# and restore them afterwards; two loads interleaved in threads can restore each other's replacement and leave
# it behind. This package's loaders therefore run one at a time.
LOAD_LOCK = threading.RLock()

# Set (per thread) while `from_pipe` builds a pipeline from another one's live components: the folder it records
# again (`_name_or_path`) is then not read (no `user_loras/` restored into the shared transformer, no
# `distilled_lora/` loaded over what the source pipeline or the caller chose).
_FROM_PIPE = threading.local()

# The order in which `from_pretrained` loads the components (and the prefetch reads them): what the first step uses
# first, the largest (the transformer) at the head, so that copying it to a device (`device_map`) overlaps the
# reading of the others; the components only stage 2 and the decode use at the end. diffusers itself would load
# them in the order of a set of names, which changes from one process to the next.
LOADING_ORDER = (
    "transformer", "connectors", "text_encoder", "tokenizer", "audio_vae", "vae", "distilled_lora",
    "latent_upsampler", "vocoder", "scheduler",
)  # fmt: skip

# The pipelines of one converted folder (same components): any of them loads a folder whose shim names another.
FAMILY = frozenset(
    {"LTX2AudioToVideoPipeline", "LTX2AudioVideoPipeline", "LTX2ImageToAudioVideoPipeline", "LTX2PipelineBase"}
)


def _prefetch_folder(cls, source, kwargs) -> None:
    """A local converted folder's weight files read ahead in the background (`loaders.prefetch`), in the order in
    which diffusers will load the components (`_loading_order`), without those the caller passes in."""
    if not isinstance(source, (str, os.PathLike)) or not os.path.isfile(os.path.join(source, "model_index.json")):
        return
    from ..loaders.prefetch import prefetch_files, weight_files

    components = [n for n in _loading_order(cls, source) if n not in kwargs]
    prefetch_files(weight_files(source, components, kwargs.get("variant")))


def _loading_order(cls, source) -> list[str]:
    """The components of the folder's `model_index.json` in the order `from_pretrained` loads them (diffusers
    iterates `extract_init_dict`'s result, which `LTX2A2VLoadingMixin.extract_init_dict` orders by `LOADING_ORDER`),
    then the pipeline's other components in signature order, the distilled LoRA last."""
    import inspect

    try:
        listed = sorted((k for k in cls.load_config(source) if not k.startswith("_")), key=_loading_rank)
    except (OSError, ValueError) as error:  # diffusers itself reports an unreadable folder
        logger.debug(f"prefetch in signature order: {error}")
        listed = []
    names = [*listed, *inspect.signature(cls.__init__).parameters, cls.DISTILLED_LORA_SUBFOLDER]
    return [n for n in dict.fromkeys(names) if n != "self"]


def _loading_rank(name: str) -> tuple[int, str]:
    """`LOADING_ORDER`'s place of a component, the other names after them by name."""
    return (LOADING_ORDER.index(name) if name in LOADING_ORDER else len(LOADING_ORDER), name)


class LTX2A2VLoadingMixin:
    """Mixed into `LTX2AudioToVideoPipeline` (before `DiffusionPipeline`)."""

    DISTILLED_LORA_SUBFOLDER = DISTILLED_LORA_SUBFOLDER
    DISTILLED_LORA_WEIGHT_NAME = DISTILLED_LORA_WEIGHT_NAME

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """diffusers reads `model_index.json` through this (local folders and Hub downloads alike). A converted
        folder names its pipeline through the Hub custom-pipeline shim (`_class_name: ["pipeline", "<ours>"]`,
        `pipeline.py` only imports this class); loading with this class itself reads that entry as this class, so
        the shim is never executed and no remote code runs; a folder converted for one pipeline of the family
        (same components) loads into any other. `DiffusionPipeline.from_pretrained` is untouched."""
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name")
        if isinstance(name, list) and len(name) == 2 and name[0] == "pipeline" and name[1] in FAMILY:
            config["_class_name"] = name[1] if name[1] in {c.__name__ for c in cls.__mro__} else cls.__name__
        return config

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """ConfigMixin's, its init dict ordered by `LOADING_ORDER` (then the other names by name):
        `from_pretrained` loads the components in this order."""
        init_dict, unused, hidden = super().extract_init_dict(config_dict, **kwargs)
        return {name: init_dict[name] for name in sorted(init_dict, key=_loading_rank)}, unused, hidden

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' `from_pretrained`. The distilled LoRA is the `distilled_lora` component; folders written
        before that component was listed in `model_index.json` get it from their `distilled_lora/` subfolder
        (also on the Hub). An explicit `distilled_lora=None` is honoured: no distilled LoRA is loaded. With a
        `device_map` naming one device, the distilled LoRA read from the folder is on that device too. Only
        safetensors are read (`check_safetensors_only`: `use_safetensors=False` and a folder whose component holds
        only pickle weights are refused)."""
        check_safetensors_only(pretrained_model_name_or_path, kwargs)
        kwargs["use_safetensors"] = True
        with LOAD_LOCK:
            _prefetch_folder(cls, pretrained_model_name_or_path, kwargs)
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            if (
                isinstance(pipe, LTX2A2VLoadingMixin)
                and "distilled_lora" in kwargs
                and kwargs["distilled_lora"] is None
            ):
                if pipe.distilled_lora is not None:  # taken from the folder by `register_to_config`
                    pipe.register_modules(distilled_lora=None)
            elif isinstance(pipe, LTX2A2VLoadingMixin) and pipe.distilled_lora is None:
                pipe._load_distilled_lora_from(os.fspath(pretrained_model_name_or_path), kwargs)
            device_map = kwargs.get("device_map")
            if (
                isinstance(pipe, LTX2A2VLoadingMixin)
                and "distilled_lora" not in kwargs
                and pipe.distilled_lora is not None
                and isinstance(device_map, str)
                and device_map != "balanced"
            ):
                # a folder that does not list the component loads it through `register_to_config`, on the host
                from ..loaders.distilled_lora import _mapped_device

                pipe.distilled_lora.to(_mapped_device(device_map))
        return pipe

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' `from_pipe`: the new pipeline shares `pipeline`'s components and adapter state as they are
        now. The folder `pipeline` was loaded from is not read again (the user adapters of its `user_loras/` are not
        restored into the shared transformer, its `distilled_lora/` is not loaded); a component passed in (an
        explicit `distilled_lora=None` included) replaces `pipeline`'s, as for any diffusers component.

        The shared components keep their dtypes: diffusers' `from_pipe` ends with `to(dtype=torch.float32)`, which
        would cast `pipeline`'s own components in place (a bfloat16 pipeline doubled in memory, fp8-cast weights
        lost, layerwise casting broken); here that cast happens only when `dtype` (or `torch_dtype`) is passed, and
        then, as in diffusers, it casts the shared components, `pipeline`'s included.

        The pipeline-level settings of `pipeline` follow as well (`from_pipe_settings.SETTINGS`): `enable_vae_tiling`
        (unless a `vae` is passed in), `set_transformer_acceleration` (unless a `transformer` is), and the memory
        tier and decode budget `enable_memory_tier` / `enable_memory_budget` applied (unless either is)."""
        depth = getattr(_FROM_PIPE, "depth", 0)
        keep = getattr(_FROM_PIPE, "keep_dtypes", False)
        _FROM_PIPE.depth = depth + 1
        _FROM_PIPE.keep_dtypes = kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None
        try:
            pipe = super().from_pipe(pipeline, **kwargs)
        finally:
            _FROM_PIPE.depth = depth
            _FROM_PIPE.keep_dtypes = keep
        carry_settings(pipeline, pipe)
        return pipe

    def to(self, *args, **kwargs):
        """diffusers' `to`; within `from_pipe` without a `dtype`, the cast to float32 diffusers' `from_pipe` applies
        to the new pipeline (`to(dtype=torch.float32)`) is skipped: the shared components keep their dtypes."""
        if getattr(_FROM_PIPE, "keep_dtypes", False) and not args and set(kwargs) == {"dtype"}:
            return self
        return super().to(*args, **kwargs)

    def register_to_config(self, **kwargs):
        """ConfigMixin's. When diffusers records the folder a pipeline was loaded from (`_name_or_path`, right after
        construction, on every loading route including `DiffusionPipeline.from_pretrained`), a local folder's
        `distilled_lora/` is loaded if `model_index.json` did not list it as a component, and the user adapters a
        `save_pretrained` wrote (`user_loras/`) are restored; never within `from_pipe`, whose components are live
        ones (another pipeline's, or the caller's)."""
        super().register_to_config(**kwargs)
        source = kwargs.get("_name_or_path")
        if source is None or getattr(_FROM_PIPE, "depth", 0) or not os.path.isdir(source):
            return
        from .pipeline_saving import restore_user_adapters

        if getattr(self, "distilled_lora", None) is None:
            self._load_distilled_lora_from(os.fspath(source), {})
        restore_user_adapters(self, os.fspath(source))

    def save_pretrained(
        self, save_directory, safe_serialization: bool = True, variant: str | None = None,
        max_shard_size: int | str | None = None, push_to_hub: bool = False, use_flashpack: bool = False, **kwargs,
    ):  # fmt: skip
        """diffusers' `save_pretrained` with clean base weights (PEFT layers taken out for the save; fused LoRAs
        refused), the distilled LoRA (`distilled_lora/`, diffusers LoRA format), the user adapters
        (`user_loras/`), and the custom-pipeline shim (`pipeline.py`) named in `model_index.json`. The folder is
        built beside `save_directory` and moved into place at the end (`pipeline_saving.save_folder`): an
        interrupted save leaves the previous folder as it was; a non-empty `save_directory` is replaced only when
        it is a previous save or conversion of this package holding nothing else (ValueError naming the foreign
        entries otherwise); the folder the pipeline was loaded from can be saved over. Only safetensors are
        written: `safe_serialization=False` and `use_flashpack=True` are refused."""
        from .call_guard import exclusive
        from .pipeline_saving import (
            HUB_OPTIONS,
            LORA_COMPONENT_NAMES,
            check_saveable,
            peft_layers_removed,
            save_folder,
        )

        with exclusive(self, "save_pretrained"):
            check_saveable(self, safe_serialization=safe_serialization, use_flashpack=use_flashpack)
            hub = {k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs} if push_to_hub else None
            components = {name: getattr(self, name, None) for name in LORA_COMPONENT_NAMES}

            def save_components(folder):
                with peft_layers_removed(components):
                    super(LTX2A2VLoadingMixin, self).save_pretrained(
                        folder, safe_serialization=True, variant=variant, max_shard_size=max_shard_size, **kwargs
                    )

            save_folder(self, save_directory, save_components, hub)

    def _load_distilled_lora_from(self, source, kwargs) -> None:
        """The converted folder's (or Hub repo's) `distilled_lora/`, as the `distilled_lora` component, if present."""
        weight = self.DISTILLED_LORA_WEIGHT_NAME
        if os.path.isdir(source):
            folder = os.path.join(source, self.DISTILLED_LORA_SUBFOLDER)
            if os.path.isfile(os.path.join(folder, weight)):
                self.load_lora_weights(folder, weight_name=weight, adapter_name=DISTILLED_ADAPTER_NAME)
            return
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        try:
            path = hf_hub_download(source, weight, subfolder=self.DISTILLED_LORA_SUBFOLDER, **hub)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return
        self.load_lora_weights(os.path.dirname(path), weight_name=weight, adapter_name=DISTILLED_ADAPTER_NAME)

    @classmethod
    def from_single_file(
        cls,
        checkpoint_path,
        *,
        spatial_upsampler_path=None,
        distilled_lora=None,
        gemma_root=None,
        dtype: torch.dtype | None = None,
        model_variant: str | None = None,
        model_version: str | None = None,
        torch_dtype: torch.dtype | None = None,
    ):
        """Build the pipeline from the original files: the single-file checkpoint, the spatial upsampler, the
        distilled LoRA (`path` or `(path, strength)`, default strength 0.8) and an optional Gemma 3 folder.
        `dtype`: the weights' floating dtype (default `torch.bfloat16`); `torch_dtype` is its older name, as in
        diffusers' `from_pretrained` (pass one of them).
        `model_variant`: `"dev"` or `"distilled"` (a distilled checkpoint: the distilled recipe, no LoRA); None
        decides it as the converter does (the metadata, else "distilled" in the file name).
        `model_version`: needed only when the file's metadata has none (as the converter)."""
        from ..loaders.model_variant import resolve_model_variant, same_version
        from ..loaders.single_file import check_model_version, read_metadata
        from ..validation import check_lora_strength

        if dtype is not None and torch_dtype is not None:
            raise ValueError("pass dtype or torch_dtype (its older name), not both")
        name = "dtype" if dtype is not None or torch_dtype is None else "torch_dtype"
        torch_dtype = dtype if dtype is not None else torch_dtype if torch_dtype is not None else torch.bfloat16
        if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating torch.dtype (e.g. torch.bfloat16), got {torch_dtype!r}")
        metadata = read_metadata(checkpoint_path)
        model_variant = resolve_model_variant(metadata, model_variant, checkpoint_path).name
        file_version = metadata.get("model_version")
        if file_version is None and model_version is None:
            raise ValueError(
                f"{os.fspath(checkpoint_path)!r} has no 'model_version' in its metadata; pass model_version "
                "('2.0.0' for LTX-2, '2.3.0' for LTX-2.3)"
            )
        if model_version is not None:
            check_model_version(model_version, "model_version")
        if file_version is not None and model_version is not None and not same_version(file_version, model_version):
            raise ValueError(f"model_version {model_version!r} contradicts the file's metadata {file_version!r}")
        model_version = file_version or model_version
        check_model_version(model_version, "model_version")
        if isinstance(distilled_lora, (tuple, list)):
            if len(distilled_lora) != 2:
                raise ValueError(f"distilled_lora must be a path or (path, strength), got {distilled_lora!r}")
            check_lora_strength("distilled_lora strength", distilled_lora[1])
        with LOAD_LOCK:
            return cls._from_single_file(
                checkpoint_path,
                spatial_upsampler_path,
                distilled_lora,
                gemma_root,
                torch_dtype,
                model_variant,
                model_version,
            )

    @classmethod
    def _from_single_file(
        cls, checkpoint_path, spatial_upsampler_path, distilled_lora, gemma_root, torch_dtype, model_variant,
        model_version,
    ):  # fmt: skip
        from diffusers import FlowMatchEulerDiscreteScheduler

        from ..loaders.single_file import read_checkpoint_config
        from ..loaders.single_file_connectors import load_connectors_from_single_file
        from ..loaders.single_file_upsampler import load_latent_upsampler_from_single_file
        from ..loaders.single_file_video_vae import load_video_vae_from_single_file
        from ..models.autoencoder_audio_mel import AutoencoderAudioMel
        from ..models.transformer_ltx2_av import LTX2AudioVideoTransformer
        from ..models.vocoder_hifigan import LTX2HiFiGANVocoder
        from ..schedules import flow_match_scheduler_config

        config, _ = read_checkpoint_config(checkpoint_path)
        lora_path, lora_scale = (
            (distilled_lora, DEFAULT_DISTILLED_LORA_SCALE)
            if not isinstance(distilled_lora, (tuple, list))
            else distilled_lora
        )
        text_encoder = tokenizer = None
        if gemma_root is not None:
            text_encoder, tokenizer = load_gemma(gemma_root, torch_dtype)
        pipe = cls(
            scheduler=FlowMatchEulerDiscreteScheduler(**flow_match_scheduler_config()),
            vae=load_video_vae_from_single_file(checkpoint_path, torch_dtype=torch_dtype),
            audio_vae=AutoencoderAudioMel.from_single_file(checkpoint_path, torch_dtype=torch_dtype),
            connectors=load_connectors_from_single_file(checkpoint_path, torch_dtype=torch_dtype),
            transformer=LTX2AudioVideoTransformer.from_single_file(checkpoint_path, torch_dtype=torch_dtype),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            vocoder=LTX2HiFiGANVocoder.from_single_file(checkpoint_path, torch_dtype=torch_dtype)
            if "vocoder" in config
            else None,
            latent_upsampler=None
            if spatial_upsampler_path is None
            else load_latent_upsampler_from_single_file(spatial_upsampler_path, torch_dtype=torch_dtype),
            model_version=model_version,
            distilled_lora_scale=float(lora_scale),
            model_variant=model_variant,
        )
        if lora_path is not None:
            pipe.load_lora_weights(lora_path, adapter_name=DISTILLED_ADAPTER_NAME)
        return pipe

    def enable_vae_tiling(
        self,
        *,
        tile_size_in_pixels: int | None = VideoTilingConfig.tile_size_in_pixels,
        tile_overlap_in_pixels: int = VideoTilingConfig.tile_overlap_in_pixels,
        tile_size_in_frames: int | None = VideoTilingConfig.tile_size_in_frames,
        tile_overlap_in_frames: int = VideoTilingConfig.tile_overlap_in_frames,
        **unknown,
    ):
        """Decode the video in overlapping tiles, in space and time, as ltx-core does (`VideoDecoder.tiled_decode`):
        the decoder's memory is bounded by the tile instead of the video. Without arguments, the reference CLI's
        tiling (ltx-core's `TilingConfig.default()`: 512-pixel tiles overlapping by 64, 64-frame tiles overlapping
        by 24), so the frames equal its output. A size of None leaves that axis in one piece. This replaces the
        video VAE's own (diffusers') tiling, which `enable_vae_tiling` switches off.

        Args:
            tile_size_in_pixels: tile size along the longer side (the other side scales with the aspect ratio), a
                multiple of 32, at least 64.
            tile_overlap_in_pixels: overlap of neighbouring tiles, a multiple of 32, smaller than the tile.
            tile_size_in_frames: tile length, a multiple of 8, at least 16.
            tile_overlap_in_frames: overlap of consecutive tiles, a multiple of 8, smaller than the tile.

        Example:

        ```py
        >>> pipe.enable_vae_tiling()  # ltx-core's TilingConfig.default()
        >>> pipe.enable_vae_tiling(tile_size_in_pixels=256, tile_size_in_frames=None)  # space only
        ```
        """
        if unknown:
            raise TypeError(
                f"enable_vae_tiling got unexpected arguments {sorted(unknown)}; it takes tile_size_in_pixels, "
                "tile_overlap_in_pixels, tile_size_in_frames, tile_overlap_in_frames (diffusers' own tiling, with "
                "tile_sample_* arguments, is pipe.vae.enable_tiling)"
            )
        tiling = VideoTilingConfig(
            tile_size_in_pixels=tile_size_in_pixels,
            tile_overlap_in_pixels=tile_overlap_in_pixels,
            tile_size_in_frames=tile_size_in_frames,
            tile_overlap_in_frames=tile_overlap_in_frames,
        )
        self.vae.disable_tiling()
        self._vae_tiling = tiling

    @property
    def vae_tiling(self) -> VideoTilingConfig | None:
        """The tiling `enable_vae_tiling` set, or None (the video is decoded in one piece, or by the video VAE's own
        tiling where `pipe.vae.enable_tiling()` turned it on)."""
        return getattr(self, "_vae_tiling", None)

    def set_adapters(self, adapter_names, adapter_weights=None):
        """diffusers' `set_adapters`, with the adapter weights checked (finite, bounded) before anything changes."""
        check_adapter_weights(adapter_weights)
        self._check_not_distilled(adapter_names, "set_adapters")
        return super().set_adapters(adapter_names, adapter_weights)

    def delete_adapters(self, adapter_names):
        """diffusers' `delete_adapters` (the user's PEFT adapters)."""
        self._check_not_distilled(adapter_names, "delete_adapters")
        return super().delete_adapters(adapter_names)

    def _check_not_distilled(self, adapter_names, method: str) -> None:
        """`ValueError` if `adapter_names` names the distilled LoRA, which `load_lora_weights(...,
        adapter_name="distilled")` loads into the pipeline-owned `distilled_lora` component: no PEFT adapter
        operation reaches it (a PEFT adapter the user named so is theirs, and goes through)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names or ())
        adapters = {name for listed in self.get_list_adapters().values() for name in listed}
        if DISTILLED_ADAPTER_NAME in names and DISTILLED_ADAPTER_NAME not in adapters:
            if getattr(self, "distilled_lora", None) is None:
                raise ValueError(
                    f"{method}({DISTILLED_ADAPTER_NAME!r}): no such adapter; the name is the stage-2 distilled LoRA's "
                    "(`load_lora_weights(..., adapter_name='distilled')` loads it into `distilled_lora`), and this "
                    "pipeline holds none"
                )
            raise ValueError(
                f"{method}({DISTILLED_ADAPTER_NAME!r}): {DISTILLED_ADAPTER_NAME!r} is the stage-2 distilled LoRA, held "
                "by the pipeline's `distilled_lora` component, not a PEFT adapter; its strength is the call's "
                "`distilled_lora_scale` (0 turns it off), and `stage_2=False` skips the stage that applies it"
            )

    def disable_vae_tiling(self):
        """Back to decoding the video in one piece (also turns the video VAE's own tiling off)."""
        self._vae_tiling = None
        self.vae.disable_tiling()

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, **kwargs):
        """The mixin's `load_lora_weights` (user adapters, through PEFT). `adapter_name="distilled"` is kept for
        backward compatibility and does NOT create a PEFT adapter: it loads the stage-2 distilled LoRA into the
        pipeline-owned `distilled_lora` component (replacing any loaded one), transformer part only: the
        reference applies the distilled LoRA to the stage-2 transformer and never to the text connectors."""
        if adapter_name != DISTILLED_ADAPTER_NAME:
            return super().load_lora_weights(
                pretrained_model_name_or_path_or_dict, adapter_name=adapter_name, **kwargs
            )
        from ..loaders.distilled_lora import LTX2DistilledLoRA
        from ..loaders.lora import convert_lora_state_dict

        if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
            state_dict = dict(pretrained_model_name_or_path_or_dict)
        else:
            if isinstance(pretrained_model_name_or_path_or_dict, os.PathLike):
                pretrained_model_name_or_path_or_dict = os.fspath(pretrained_model_name_or_path_or_dict)
            for peft_option in ("hotswap", "low_cpu_mem_usage"):  # no PEFT adapter is made here
                kwargs.pop(peft_option, None)
            state_dict = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        converted = convert_lora_state_dict(state_dict, self._lora_targets())
        dropped = [k for k in converted if not k.startswith("transformer.")]
        if dropped:
            logger.info(
                f"the distilled LoRA's {len(dropped)} connector tensors are not used (the reference ignores them)"
            )
        store = LTX2DistilledLoRA.from_state_dict({k: v for k, v in converted.items() if k.startswith("transformer.")})
        self.register_modules(distilled_lora=store)

    def distilled_lora_applied(self, scale: float | None = None):
        """Context manager of stage 2: the pipeline-owned distilled LoRA applied to the transformer at `scale`
        (default `config.distilled_lora_scale`) as ltx-core fuses it; user adapters are left as they are."""
        scale = self.config.distilled_lora_scale if scale is None else scale
        return self.distilled_lora.applied(self.transformer, scale)


def load_gemma(gemma_root, torch_dtype=None):
    """Gemma 3 text encoder and tokenizer from a folder (found recursively, as the reference searches it)."""
    from pathlib import Path

    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    root = Path(gemma_root)
    if not root.is_dir():
        raise ValueError(f"gemma_root {os.fspath(gemma_root)!r} is not a folder")
    weights = sorted(root.rglob("model*.safetensors"))
    tokenizers = sorted(p.parent for p in root.rglob("tokenizer*.json")) + sorted(
        p.parent for p in root.rglob("tokenizer.model")
    )
    if not weights or not tokenizers:
        raise ValueError(f"gemma_root {os.fspath(gemma_root)!r} needs model*.safetensors and a tokenizer")
    text_encoder = Gemma3ForConditionalGeneration.from_pretrained(weights[0].parent, torch_dtype=torch_dtype)
    return text_encoder, AutoTokenizer.from_pretrained(tokenizers[0])
