"""Loading, LoRA-adapter and offloading behaviour of `LTX2AudioToVideoPipeline`: converted folders (local or on
the Hub), the original single files, the distilled LoRA's stage switch, and group offloading."""

from __future__ import annotations

import os

import torch
from diffusers.utils import logging

from ..validation import check_adapter_weights


logger = logging.get_logger(__name__)


class LTX2A2VLoadingMixin:
    """Mixed into `LTX2AudioToVideoPipeline` (before `DiffusionPipeline`)."""

    DISTILLED_LORA_SUBFOLDER = "distilled_lora"
    DISTILLED_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' `from_pretrained`, plus the converted folder's distilled LoRA as the adapter `"distilled"`.

        Converted folders name their pipeline through the Hub custom-pipeline shim (`pipeline.py`, which only
        imports this class); loading with this class directly never executes that file, so no remote code runs.
        """
        from diffusers.pipelines import pipeline_utils

        resolve = pipeline_utils._resolve_custom_pipeline_and_cls

        def resolve_without_shim(folder, config, custom_pipeline):
            names_us = config.get("_class_name") == ["pipeline", cls.__name__]
            if custom_pipeline is None and names_us:
                return None, None
            return resolve(folder=folder, config=config, custom_pipeline=custom_pipeline)

        pipeline_utils._resolve_custom_pipeline_and_cls = resolve_without_shim
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        finally:
            pipeline_utils._resolve_custom_pipeline_and_cls = resolve
        if isinstance(pipe, cls):
            pipe._load_distilled_lora_from(pretrained_model_name_or_path, kwargs)
        return pipe

    def _load_distilled_lora_from(self, source, kwargs) -> None:
        """The converted folder's (or Hub repo's) `distilled_lora/`, as the adapter `"distilled"`, if present."""
        weight = self.DISTILLED_LORA_WEIGHT_NAME
        if os.path.isdir(source):
            folder = os.path.join(source, self.DISTILLED_LORA_SUBFOLDER)
            if os.path.isfile(os.path.join(folder, weight)):
                self.load_lora_weights(folder, weight_name=weight, adapter_name="distilled")
            return
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        try:
            path = hf_hub_download(source, weight, subfolder=self.DISTILLED_LORA_SUBFOLDER, **hub)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return
        self.load_lora_weights(os.path.dirname(path), weight_name=weight, adapter_name="distilled")

    @classmethod
    def from_single_file(
        cls,
        checkpoint_path,
        *,
        spatial_upsampler_path=None,
        distilled_lora=None,
        gemma_root=None,
        torch_dtype: torch.dtype | None = torch.bfloat16,
    ):
        """Build the pipeline from the original files: the single-file checkpoint, the spatial upsampler, the
        distilled LoRA (`path` or `(path, strength)`, default strength 0.8) and an optional Gemma 3 folder."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        from ..loaders.single_file import read_checkpoint_config
        from ..models.autoencoder_audio_mel import AutoencoderAudioMel
        from ..models.connectors_single_file import load_connectors_from_single_file
        from ..models.transformer_ltx2_av import LTX2AudioVideoTransformer
        from ..models.upsampler_single_file import load_latent_upsampler_from_single_file
        from ..models.video_vae_single_file import load_video_vae_from_single_file
        from ..models.vocoder_hifigan import LTX2HiFiGANVocoder
        from ..schedules import flow_match_scheduler_config

        config, model_version = read_checkpoint_config(checkpoint_path)
        lora_path, lora_scale = (
            (distilled_lora, 0.8) if not isinstance(distilled_lora, (tuple, list)) else distilled_lora
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
            model_version=model_version or "2.3.0",
            distilled_lora_scale=float(lora_scale),
        )
        if lora_path is not None:
            pipe.load_lora_weights(lora_path, adapter_name="distilled")
        return pipe

    def _adapter_names(self) -> list[str]:
        peft_config = getattr(self.transformer, "peft_config", None) or {}
        return list(peft_config)

    def set_adapters(self, adapter_names, adapter_weights=None):
        """diffusers' `set_adapters`; the weights given for adapters other than `"distilled"` are remembered so
        that the stage switches keep them."""
        check_adapter_weights(adapter_weights)  # before anything is remembered
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
        self._user_adapter_weights = {n: (1.0 if w is None else w) for n, w in zip(names, weights) if n != "distilled"}
        return super().set_adapters(adapter_names, adapter_weights)

    def enable_group_offload(
        self,
        onload_device: torch.device,
        offload_device: torch.device = torch.device("cpu"),
        offload_type: str = "block_level",
        num_blocks_per_group: int | None = None,
        **kwargs,
    ):
        """diffusers' group offloading. `"block_level"` groups the transformer's blocks; the other components are
        offloaded leaf by leaf, since their `encode`/`decode`/`encode_waveform` entry points are not `forward`
        and would bypass a block-level group's onload hook."""
        from diffusers.hooks import apply_group_offloading

        for name, component in self.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            blocks = offload_type == "block_level" and name == "transformer"
            options = dict(onload_device=onload_device, offload_device=offload_device, **kwargs)
            if blocks:
                options.update(offload_type="block_level", num_blocks_per_group=num_blocks_per_group or 1)
            else:
                options.update(offload_type="leaf_level")
            if hasattr(component, "enable_group_offload"):
                component.enable_group_offload(**options)
            else:
                apply_group_offloading(module=component, **options)

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, **kwargs):
        """The mixin's `load_lora_weights`; for the `"distilled"` adapter only the transformer part is kept: the
        reference applies the distilled LoRA to the stage-2 transformer and never to the text connectors."""
        super().load_lora_weights(pretrained_model_name_or_path_or_dict, adapter_name=adapter_name, **kwargs)
        connectors_config = getattr(self.connectors, "peft_config", None) or {}
        if adapter_name == "distilled" and "distilled" in connectors_config:
            logger.info("the distilled LoRA's connector weights are not used (the reference ignores them)")
            self.connectors.delete_adapters("distilled")

    def _activate_distilled(self, active: bool, scale: float | None) -> None:
        """Stage switch of the `"distilled"` adapter; other loaded adapters stay active with their weights."""
        names = self._adapter_names()
        if "distilled" not in names:
            return
        user = getattr(self, "_user_adapter_weights", None)
        others = [n for n in names if n != "distilled" and (user is None or n in user)]
        weights = [1.0 if user is None else user[n] for n in others]
        scale = self.config.distilled_lora_scale if scale is None else scale
        if not others and not active:
            self.transformer.disable_adapters()
            return
        self.transformer.enable_adapters()
        self.transformer.set_adapters(others + ["distilled"], weights + [scale if active else 0.0])


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
