"""Model cards of converted folders: the `model_cards/` templates and the fields that fill them."""

from __future__ import annotations

import os
import string
import sys
from pathlib import Path
from typing import Mapping


def _model_cards_dir() -> Path:
    """`model_cards/` of a source checkout, else the copy a (non-editable) install puts under `share/`."""
    checkout = Path(__file__).resolve().parents[3] / "model_cards"
    installed = Path(sys.prefix) / "share" / "ltx2-diffusers" / "model_cards"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


MODEL_CARDS_DIR = _model_cards_dir()


def _model_card_kind(model_version: str, variant: str, fp8: bool) -> str:
    if fp8:
        return "fp8"
    return f"ltx-{'2.3' if model_version.startswith('2.3') else '2'}-{variant}"


def render_model_card(kind: str, fields: Mapping[str, str], templates_dir: str | os.PathLike | None = None) -> str:
    """The filled model card `model_cards/<kind>.md` (`string.Template` placeholders such as `$repo_id`)."""
    folder = Path(templates_dir) if templates_dir is not None else MODEL_CARDS_DIR
    path = folder / f"{kind}.md"
    if not path.is_file():
        raise ValueError(f"no model card template {path} (kinds: {sorted(p.stem for p in folder.glob('*.md'))})")
    return string.Template(path.read_text()).substitute(fields)


def _card_fields(
    model_version, variant, repo_id, checkpoint_path, distilled_lora, scale, dtype, has_gemma, has_upsampler, fp8
) -> dict:
    is_23 = model_version.startswith("2.3")
    return {
        "repo_id": repo_id,
        "model_version": model_version,
        "variant": variant,
        "base_model": "Lightricks/LTX-2.3" if is_23 else "Lightricks/LTX-2",
        "model_name": ("LTX-2.3 22B" if is_23 else "LTX-2 19B") + f" {variant}",
        "source_checkpoint": checkpoint_path.name,
        "distilled_lora": Path(os.fspath(distilled_lora)).name if distilled_lora is not None else "none",
        "distilled_lora_scale": f"{float(scale):g}",
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else "source dtypes (unchanged)",
        "text_encoder": "included (text_encoder/, tokenizer/)" if has_gemma else "not included",
        "latent_upsampler": "included" if has_upsampler else "not included",
        "quantization": "float8_e4m3fn transformer weights" if fp8 else "none",
        "torch_dtype": "torch.bfloat16",
    }
