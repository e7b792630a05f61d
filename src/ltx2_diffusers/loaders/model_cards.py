"""Model cards of converted folders: the `model_cards/` templates and the fields that fill them."""

from __future__ import annotations

import json
import os
import string
import sys
import unicodedata
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


#: ASCII punctuation left as is in markdown text (cannot start any markup); every other one is escaped.
_MARKDOWN_SAFE = frozenset("/,")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def markdown_text(value: str) -> str:
    """`value` as literal markdown text: HTML specials as entities, other ASCII punctuation backslash-escaped
    (CommonMark renders `\\` + punctuation as that character), control / format / separator characters (newlines
    included) and lone surrogates written as visible `\\xNN` / `\\uNNNN` escapes. Safe in prose, headings and table
    cells."""
    out = []
    for ch in str(value):
        if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp"):
            ch = f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
            out.append("\\" + ch)  # the backslash itself, escaped
        elif ch in _HTML_ENTITIES:
            out.append(_HTML_ENTITIES[ch])
        elif ch.isascii() and not ch.isalnum() and not ch.isspace() and ch not in _MARKDOWN_SAFE:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def python_literal(value: str) -> str:
    """A Python string literal that evaluates to `value` (double-quoted when it can be) on one line, with backticks
    and `<`, `>`, `&` written as `\\x..` escapes (so no fence or tag appears in the card's text)."""
    literal = repr(str(value))
    if literal.startswith("'") and '"' not in value:
        literal = f'"{literal[1:-1]}"'
    for ch in "`<>&":
        literal = literal.replace(ch, f"\\x{ord(ch):02x}")
    return literal


def render_model_card(kind: str, fields: Mapping[str, str], templates_dir: str | os.PathLike | None = None) -> str:
    """The filled model card `model_cards/<kind>.md`.

    Every field is escaped for where it lands: `$name` is markdown text (`markdown_text`), `$name_literal` a Python
    string literal (`python_literal`, for the code snippets) and `$name_yaml` a quoted YAML scalar (front matter)."""
    folder = Path(templates_dir) if templates_dir is not None else MODEL_CARDS_DIR
    path = folder / f"{kind}.md"
    if not path.is_file():
        raise ValueError(f"no model card template {path} (kinds: {sorted(p.stem for p in folder.glob('*.md'))})")
    values = {}
    for key, value in fields.items():
        values[key] = markdown_text(value)
        values[f"{key}_literal"] = python_literal(value)
        values[f"{key}_yaml"] = json.dumps(str(value))
    return string.Template(path.read_text()).substitute(values)


#: Transformers with fewer parameters than this are tiny test/demo checkpoints, not released models (19 B / 22 B).
TINY_TRANSFORMER_PARAMS = 1_000_000_000


def _card_fields(
    model_version,
    variant,
    repo_id,
    checkpoint_path,
    distilled_lora,
    scale,
    dtype,
    has_gemma,
    has_upsampler,
    fp8,
    transformer_params: int | None = None,
) -> dict:
    """Raw field values (escaped by `render_model_card`). `transformer_params` below `TINY_TRANSFORMER_PARAMS`
    labels the card as a tiny test/demo checkpoint."""
    is_23 = model_version.startswith("2.3")
    family, size = ("LTX-2.3", "22B") if is_23 else ("LTX-2", "19B")
    base_model = f"Lightricks/{family}"
    tiny = transformer_params is not None and transformer_params < TINY_TRANSFORMER_PARAMS
    if tiny:
        model_name = f"{family} tiny test/demo {variant}"
        title = f"{model_name} for diffusers (not the released {family} {size} weights)"
        description = (
            f"This folder is a tiny test/demo checkpoint, NOT the released {family} {size} model: its transformer has "
            f"{transformer_params:,} parameters (the released one about {size[:-1]} billion), typically random "
            "weights, so what it generates is noise (it exists to exercise the code)"
        )
    else:
        model_name = f"{family} {size} {variant}"
        title = f"{model_name} for diffusers ({family} ({size}) {variant})"
        if fp8:
            description = (
                "This folder is an fp8 build: the transformer's block linears are stored as float8_e4m3fn (half the "
                "memory of bf16)"
            )
        elif variant == "distilled":
            description = f"This folder is the step-distilled {family} {size} model (8 + 3 steps, no guidance needed)"
        else:
            description = (
                f"This folder is the full-quality {family} {size} model; use it with the two-stage recipe (stage 1 "
                "with guidance, stage 2 with the distilled LoRA)"
            )
    if fp8:
        title = f"{model_name} for diffusers (LTX-2 / LTX-2.3 float8)"
    return {
        "repo_id": repo_id,
        "model_version": model_version,
        "variant": variant,
        "base_model": base_model,
        "license_link": f"https://huggingface.co/{base_model}/blob/main/LICENSE",
        "model_name": model_name,
        "title": title,
        "description": description,
        "source_checkpoint": Path(os.fspath(checkpoint_path)).name,
        "distilled_lora": Path(os.fspath(distilled_lora)).name if distilled_lora is not None else "none",
        "distilled_lora_scale": f"{float(scale):g}",
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else "source dtypes (unchanged)",
        "text_encoder": "included (text_encoder/, tokenizer/)" if has_gemma else "not included",
        "latent_upsampler": "included" if has_upsampler else "not included",
        "quantization": "float8_e4m3fn transformer weights" if fp8 else "none",
        "torch_dtype": "torch.bfloat16",
    }
