"""Train SOHES phase 2 (self-instruction) or phase 3 (self-correction) with Accelerate.

    accelerate launch examples/train.py --phase self-instruction \
        --config examples/configs/self_instruction.yaml
    accelerate launch examples/train.py --phase self-correction \
        --config examples/configs/self_correction.yaml -o model_name_or_path=outputs/self_instruction
    # CPU, two processes (what the tests run):
    torchrun --nproc_per_node 2 examples/train.py --phase self-instruction \
        --config examples/configs/tiny_cpu.yaml --cpu

Same as ``sohes train``; see docs/training.md for the recipe and its sources.
"""

from __future__ import annotations

import sys

from sohes_hf.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
