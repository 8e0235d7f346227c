"""Does the tiny CPU recipe learn? Mean best IoU and positive mask logits after phase 2.

    python benchmarks/benchmark_overfit.py                   # current init
    python benchmarks/benchmark_overfit.py --init legacy     # mask projection N(0, init_std): before the fix
    python benchmarks/benchmark_overfit.py --steps 300 --threads 2

Trains ``examples/configs/tiny_cpu.yaml`` (batch 2 in one forward pass) on the four nested-shape
images of ``tests/training/test_overfit.py`` with :class:`SelfInstructionTrainer` and prints,
before and after training: the number of mask logits > 0 over the four training images and the
mean over their 24 training masks of the best IoU with any predicted mask (public
post-processing, ``threshold=0``). ``--init legacy`` re-initialises the pixel decoder's mask
projection with transformers' generic ``N(0, init_std)``, the state before the fix described in
docs/training.md ("Empty masks"). Figures vary a little with the thread count.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the data builder and metric live with the CI test

from tests.training.test_overfit import mean_best_iou, nested_shape_images  # noqa: E402

from sohes_hf.training import SelfInstructionTrainer, load_training_config  # noqa: E402
from sohes_hf.training.self_instruction import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--init", choices=("mask2former", "legacy"), default="mask2former")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("sohes_hf").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        image_dir, labels, truth = nested_shape_images(root / "data")
        config = load_training_config(
            REPO / "examples/configs/tiny_cpu.yaml",
            "self-instruction",
            [
                f"train_annotations={labels}",
                f"image_root={image_dir}",
                f"output_dir={root / 'run'}",
                f"max_steps={args.steps}",
                "per_device_train_batch_size=2",
                f"logging_steps={args.steps}",
            ],
        )
        set_seed(config.seed)
        model = build_model(config)
        if args.init == "legacy":
            projection = model.pixel_decoder.mask_projection
            with torch.no_grad():
                projection.weight.normal_(0.0, model.config.init_std)
                projection.bias.zero_()
        model.save_pretrained(root / "initial")
        trainer = SelfInstructionTrainer(config, model=model, cpu=True)
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        # The initial model is scored with the trained run's image processor (same settings).
        (root / "initial" / "preprocessor_config.json").write_text(
            (Path(result.model_dir) / "preprocessor_config.json").read_text()
        )
        before = mean_best_iou(root / "initial", image_dir, truth)
        after = mean_best_iou(Path(result.model_dir), image_dir, truth)
    total = len(truth) * config.model_config["num_queries"] * (config.augmentation.image_size // 4) ** 2
    print(f"init={args.init} steps={args.steps} threads={args.threads} train_seconds={seconds:.1f}")
    print(f"final logged loss: {result.record.final_loss:.3f}")
    print(f"before training: mean best IoU {before[0]:.3f}, mask logits > 0: {before[1]} of {total}")
    print(f"after training:  mean best IoU {after[0]:.3f}, mask logits > 0: {after[1]} of {total}")


if __name__ == "__main__":
    main()
