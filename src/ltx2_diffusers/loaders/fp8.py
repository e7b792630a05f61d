"""float8 LTX-2 checkpoints (placeholder; completed below)."""

from __future__ import annotations


def check_fp8_conversion(checkpoint, dtype, fp8_cast: bool = False):
    return None
