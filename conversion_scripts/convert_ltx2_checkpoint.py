"""Convert original LTX-2 / LTX-2.3 checkpoints into a diffusers folder (same as `python -m ltx2_diffusers.convert`).

    python conversion_scripts/convert_ltx2_checkpoint.py --checkpoint-path ltx-2.3-22b-dev.safetensors \
        --spatial-upsampler-path ltx-2.3-spatial-upscaler-x2.safetensors \
        --distilled-lora ltx-2.3-22b-distilled-lora.safetensors 0.8 --output-dir ltx-2.3-22b-dev-diffusers

Run with `--help` for every flag.
"""

import sys

from ltx2_diffusers.convert import main


if __name__ == "__main__":
    sys.exit(main())
