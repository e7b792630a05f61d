"""Copying a Gemma 3 folder into a converted pipeline's `text_encoder/` and `tokenizer/` (`--gemma-root`)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path


def _gemma_files(gemma_root: Path) -> tuple[Path, list[Path], Path, list[Path]]:
    """(weights folder, its files to copy, tokenizer folder, its files) of a Gemma 3 folder, searched recursively."""
    if not gemma_root.is_dir():
        raise ValueError(f"gemma_root {os.fspath(gemma_root)!r} is not a folder")
    weights = sorted(gemma_root.rglob("model*.safetensors"))
    if not weights:
        raise ValueError(f"gemma_root {os.fspath(gemma_root)!r} holds no model*.safetensors")
    weights_dir = weights[0].parent
    if not (weights_dir / "config.json").is_file():
        raise ValueError(f"gemma_root: {os.fspath(weights_dir)!r} has the weights but no config.json")
    tokenizer_marks = sorted(
        p
        for pattern in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
        for p in gemma_root.rglob(pattern)
    )
    if not tokenizer_marks:
        raise ValueError(f"gemma_root {os.fspath(gemma_root)!r} holds no tokenizer (tokenizer.json / tokenizer.model)")
    tokenizer_dir = tokenizer_marks[0].parent
    tokenizer_names = re.compile(
        r"(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json))$"
    )
    te_files = [
        p
        for p in sorted(weights_dir.iterdir())
        if p.is_file()
        and (
            p.suffix == ".safetensors"
            or p.name in ("config.json", "generation_config.json")
            or p.name.endswith(".safetensors.index.json")
        )
    ]
    tok_files = [p for p in sorted(tokenizer_dir.iterdir()) if p.is_file() and tokenizer_names.fullmatch(p.name)]
    return weights_dir, te_files, tokenizer_dir, tok_files


def _transformers_class(name: str | None, fallback: str) -> str:
    import transformers

    return name if isinstance(name, str) and hasattr(transformers, name) else fallback


def _copy_gemma(gemma_root: Path, out: Path) -> dict[str, list[str]]:
    weights_dir, te_files, tokenizer_dir, tok_files = _gemma_files(gemma_root)
    for sub, files in (("text_encoder", te_files), ("tokenizer", tok_files)):
        (out / sub).mkdir()
        for path in files:
            shutil.copyfile(path, out / sub / path.name)
    te_config = json.loads((weights_dir / "config.json").read_text())
    te_class = _transformers_class((te_config.get("architectures") or [None])[0], "Gemma3ForConditionalGeneration")
    tok_config_path = tokenizer_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}
    tok_class = _transformers_class(tok_config.get("tokenizer_class"), "GemmaTokenizerFast")
    return {"text_encoder": ["transformers", te_class], "tokenizer": ["transformers", tok_class]}
