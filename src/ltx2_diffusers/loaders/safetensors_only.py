"""Only safetensors weights are read: pickle files (`.bin`, `.pt`, ...) can run code when loaded.

diffusers' `from_pretrained` falls back to pickle weights where a folder has no safetensors file, and reads them
with `use_safetensors=False`. The pipelines' `from_pretrained` (`check_safetensors_only`) and this package's models
(`SafetensorsOnlyMixin`) refuse both, naming the file, and always pass `use_safetensors=True`.
"""

from __future__ import annotations

import os


__all__ = ["PICKLE_WEIGHT_SUFFIXES", "SafetensorsOnlyMixin", "check_safetensors_only", "check_safetensors_save"]

PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _check_loading_kwargs(kwargs) -> None:
    use_safetensors = kwargs.get("use_safetensors")
    if use_safetensors is not None and use_safetensors is not True:
        raise ValueError(
            f"use_safetensors={use_safetensors!r}: only safetensors weights are read (pickle files can run code "
            "when loaded); leave use_safetensors at None or True"
        )
    if kwargs.get("use_flashpack", False) is not False:
        raise ValueError(f"use_flashpack={kwargs['use_flashpack']!r}: only safetensors weights are read")


def check_safetensors_save(safe_serialization, use_flashpack) -> None:
    """For `save_pretrained` (the pipelines' and the models'): only safetensors weights are written."""
    if safe_serialization is not True:
        raise ValueError(
            f"safe_serialization={safe_serialization!r}: only safetensors weights are written (pickle files can run "
            "code when read); leave safe_serialization at True"
        )
    if use_flashpack is not False:
        raise ValueError(f"use_flashpack={use_flashpack!r}: only safetensors weights are written")


def _refuse_pickle_only(folder: str) -> None:
    files = sorted(os.listdir(folder))
    pickles = [f for f in files if f.endswith(PICKLE_WEIGHT_SUFFIXES)]
    if pickles and not any(f.endswith(".safetensors") for f in files):
        raise ValueError(
            f"{os.path.join(folder, pickles[0])!r} is a pickle weight file and {folder!r} holds no safetensors "
            "weights: only safetensors files are read (convert the weights to safetensors)"
        )


def _check_weight_files(folder: str) -> None:
    """`_refuse_pickle_only`, then every safetensors file of `folder` whole (a header read each): a truncated or
    non-safetensors file is a ValueError naming it before any component loads, not diffusers' OSError midway."""
    from .single_file import _check_safetensors_file  # noqa: PLC0415  (single_file imports the models)

    _refuse_pickle_only(folder)
    for name in sorted(os.listdir(folder)):
        # dot-files are never loaded: macOS `._*` forks, a killed save's `.*.partial.safetensors`
        if name.endswith(".safetensors") and not name.startswith("."):
            _check_safetensors_file(os.path.join(folder, name))


def check_safetensors_only(source, kwargs) -> None:
    """For a pipeline's `from_pretrained`: `use_safetensors` other than None/True and `use_flashpack=True` are
    refused; in a local folder, a component subfolder (one the caller does not pass) holding pickle weights and no
    safetensors file is refused, naming the pickle file (diffusers would load it), and so is a truncated or
    non-safetensors `.safetensors` file there."""
    _check_loading_kwargs(kwargs)
    if not isinstance(source, (str, os.PathLike)) or not os.path.isdir(source):
        return
    root = os.path.join(os.fspath(source), kwargs.get("subfolder") or "")
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if name in kwargs or name.startswith(".") or not os.path.isdir(folder):
            continue
        _check_weight_files(folder)


class SafetensorsOnlyMixin:
    """For a model class: `from_pretrained` reads safetensors only (also when diffusers' own pipeline loader calls
    it, e.g. `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`): `use_safetensors=False` and
    `use_flashpack=True` are refused, a local model folder with pickle weights only is refused naming the file."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        _check_loading_kwargs(kwargs)
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            folder = os.path.join(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if os.path.isdir(folder):
                _check_weight_files(folder)
        kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
