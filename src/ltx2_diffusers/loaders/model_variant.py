"""Which LTX-2 model a checkpoint holds: the full-quality "dev" model or the step-distilled one.

The converter records the answer as `model_variant` in the pipeline config (`model_index.json`), where a pipeline
reads it to pick its defaults (a distilled folder runs the reference's distilled schedule). It is decided, first
match wins:

1. the checkpoint's safetensors metadata, top-level key `model_variant` ("dev" or "distilled"). ltx-core 1.0.0
   reads no such key and the published headers quoted in the reference carry only `config` and `model_version`
   (ltx-pipelines tells the distilled model apart only by the flag it is passed, `--distilled-checkpoint-path`),
   so this applies to files that state it, e.g. re-exports;
2. the caller's choice (`convert_checkpoint(model_variant=...)`, `--model-variant`); it must agree with (1);
3. the checkpoint's file name: "distilled" in it (as in `ltx-2-19b-distilled.safetensors`,
   `ltx-2.3-22b-distilled-fp8.safetensors`) means distilled, anything else dev.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping


MODEL_VARIANTS = ("dev", "distilled")
#: The safetensors metadata key that states the variant (see the module docstring).
METADATA_KEY = "model_variant"


@dataclasses.dataclass(frozen=True)
class ModelVariant:
    """The variant and where it came from: "metadata", "argument" or "file name"."""

    name: str
    source: str


def check_model_variant(value, where: str) -> str:
    """`value` if it is "dev" or "distilled", else `ValueError` naming `where`."""
    if not isinstance(value, str) or value not in MODEL_VARIANTS:
        raise ValueError(f"{where} must be 'dev' or 'distilled', got {str(value)[:80]!r}")
    return value


def variant_from_file_name(path: str | os.PathLike) -> str:
    """ "distilled" if the file name (not its folder) contains "distilled" (any case), else "dev"."""
    return "distilled" if "distilled" in os.path.basename(os.fspath(path)).lower() else "dev"


def resolve_model_variant(
    metadata: Mapping[str, str], requested: str | None, checkpoint_path: str | os.PathLike
) -> ModelVariant:
    """The checkpoint's variant from its metadata, else `requested`, else its file name (module docstring).

    `ValueError` for a metadata value or a `requested` value other than "dev" / "distilled", and when both are
    given and differ."""
    if requested is not None:
        check_model_variant(requested, "model_variant (--model-variant)")
    stated = metadata.get(METADATA_KEY)
    if stated is not None:
        check_model_variant(stated, f"{os.fspath(checkpoint_path)!r}: metadata {METADATA_KEY!r}")
        if requested is not None and requested != stated:
            raise ValueError(
                f"model_variant (--model-variant) {requested!r} contradicts the metadata of "
                f"{os.fspath(checkpoint_path)!r}, which says {stated!r}"
            )
        return ModelVariant(stated, "metadata")
    if requested is not None:
        return ModelVariant(requested, "argument")
    return ModelVariant(variant_from_file_name(checkpoint_path), "file name")


#: The transformer config keys that tell LTX-2 (all False/True/True) from LTX-2.3 (True/True/False): gated
#: attention, the cross-attention AdaLN modulation, and the caption projection moved out into the connectors.
VERSION_KEYS = ("gated_attn", "cross_attn_mod", "use_prompt_embeddings")


def model_version_of_transformer(config) -> str | None:
    """ "2.3.0" for an LTX-2.3 transformer config, "2.0.0" for an LTX-2 one (`VERSION_KEYS`), None for a config
    that mixes the two (or lacks the keys): the version is then not derivable from the model."""
    try:
        gated, cross, inside = (bool(config[key]) for key in VERSION_KEYS)
    except (KeyError, TypeError):
        return None
    if gated and cross and not inside:
        return "2.3.0"
    if not gated and not cross and inside:
        return "2.0.0"
    return None


def same_family(version_a: str, version_b: str) -> bool:
    """Whether two model versions pick the same recipe (LTX-2.3: "2.3*", else LTX-2)."""
    return str(version_a).startswith("2.3") == str(version_b).startswith("2.3")


def same_version(version_a: str, version_b: str) -> bool:
    """Whether two version strings name the same release, trailing ".0" components aside ("2.3" and "2.3.0")."""

    def parts(version: str) -> list[str]:
        items = str(version).split(".")
        while len(items) > 1 and items[-1] == "0":
            items.pop()
        return items

    return parts(version_a) == parts(version_b)


def pipeline_model_version(transformer_config, model_version: str | None) -> str:
    """A pipeline's `model_version` checked against its transformer's config (`model_version_of_transformer`):
    None gives the transformer's version (LTX-2.3's "2.3.0" where the config mixes the two); a version of the
    other family than the transformer's is refused (ValueError), since it would run the other model's recipe."""
    from .single_file import check_model_version

    derived = model_version_of_transformer(transformer_config)
    if model_version is None:
        return derived or "2.3.0"
    check_model_version(model_version, "model_version")
    if derived is not None and not same_family(model_version, derived):
        raise ValueError(
            f"model_version {model_version!r} contradicts the transformer, whose config (gated_attn, cross_attn_mod, "
            f"use_prompt_embeddings) is that of {derived!r}; leave model_version out to take the transformer's"
        )
    return model_version
