"""Training throughput and peak memory of one self-instruction step (forward + backward + Adan).

    python benchmarks/benchmark_training.py                      # tiny model on CPU, 64 px
    python benchmarks/benchmark_training.py --model vit-b8 --image-size 1024 --batch-size 2  # GPU
    python benchmarks/benchmark_training.py --model vit-b8 --image-size 512 --batch-size 1 \
        --steps 1 --warmup-steps 0 --activation-checkpointing   # peak memory with checkpointing

Prints steps/s, images/s and peak memory (CUDA: max allocated; CPU: peak RSS of the process),
plus what the paper recipe (40,000 steps x 128 images, appendix A) would take at that rate on
one device. Synthetic inputs: random images and 20 random box masks per image with a two-level
hierarchy; the loss path is the real one (Hungarian matching, point sampling, ancestor BCE).
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass

import torch

from sohes_hf.modeling import SohesConfig, SohesForHierarchicalSegmentation
from sohes_hf.modeling.testing_utils import tiny_sohes_config
from sohes_hf.training.config import SelfInstructionConfig
from sohes_hf.training.self_instruction import build_optimizer

PAPER_STEPS = 40_000
PAPER_BATCH = 128


def tiny_training_config() -> SohesConfig:
    # The trimmed tiny model of tests/training (2-layer ViT, 2 decoder layers, 8 queries).
    return tiny_sohes_config(
        num_queries=8,
        train_num_points=64,
        decoder_layers=2,
        backbone_config={"num_hidden_layers": 2},
        interaction_indexes=[[0, 0], [1, 1]],
        adapter_add_vit_feature=False,  # the official per-stage addition needs four stages
    )


def _vit_b8_config() -> SohesConfig:
    # SohesConfig's defaults are the paper's ViT-B/8 + ViT-Adapter + Mask2Former model.
    return SohesConfig()


def _synthetic_batch(batch: int, size: int, num_masks: int, device: torch.device) -> dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    masks, ancestors = [], []
    for _ in range(batch):
        stack = torch.zeros(num_masks, size, size)
        relation = torch.zeros(num_masks, num_masks)
        for index in range(num_masks):
            top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            side = max(4, size // (4 if index % 2 == 0 else 8))
            stack[index, top : top + side, left : left + side] = 1
            if index % 2 == 1:
                relation[index - 1, index] = 1
        masks.append(stack.to(device))
        ancestors.append(relation.to(device))
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator).to(device),
        "mask_labels": masks,
        "class_labels": [torch.zeros(num_masks, dtype=torch.long, device=device) for _ in range(batch)],
        "ancestor_labels": ancestors,
    }


@dataclass(frozen=True)
class TrainingMeasurement:
    """Throughput of the timed steps and the peak memory (CUDA: max allocated; CPU: peak RSS)."""

    num_parameters: int
    seconds_per_step: float
    images_per_second: float
    peak_memory_bytes: int
    peak_memory_kind: str


def measure_training(
    config: SohesConfig,
    image_size: int,
    batch_size: int,
    device: torch.device,
    steps: int = 10,
    warmup_steps: int = 2,
    num_masks: int = 20,
    bf16: bool = False,
    activation_checkpointing: bool = False,
) -> TrainingMeasurement:
    """Times ``steps`` self-instruction steps (forward, backward, clipping, Adan) after a warm-up.

    ``bf16`` autocasts to bfloat16 on CUDA only (CPU autocast is not what a user trains with).
    """
    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(config).to(device).train()
    if activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(model, SelfInstructionConfig(train_annotations="unused"), 1e-4)
    batch = _synthetic_batch(batch_size, image_size, num_masks, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "CUDA max allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
    num_parameters = sum(p.numel() for p in model.parameters())
    return TrainingMeasurement(num_parameters, elapsed / steps, steps * batch_size / elapsed, peak, kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "vit-b8"), default="tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--num-masks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--bf16", action="store_true", help="CUDA autocast to bfloat16")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before timing")
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="model.activation_checkpointing_enable() (the recipe's activation_checkpointing: true)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = tiny_training_config() if args.model == "tiny" else _vit_b8_config()
    result = measure_training(
        config,
        args.image_size,
        args.batch_size,
        device,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        num_masks=args.num_masks,
        bf16=args.bf16,
        activation_checkpointing=args.activation_checkpointing,
    )
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    )
    params = result.num_parameters / 1e6
    print(f"model={args.model} ({params:.1f}M parameters) device={name} image={args.image_size}px")
    print(
        f"batch={args.batch_size} masks/image={args.num_masks} bf16={args.bf16 and device.type == 'cuda'} "
        f"activation_checkpointing={args.activation_checkpointing}"
    )
    print(
        f"steps/s={1 / result.seconds_per_step:.3f} images/s={result.images_per_second:.2f} "
        f"seconds/step={result.seconds_per_step:.3f}"
    )
    print(f"peak memory={result.peak_memory_bytes / 2**30:.2f} GiB ({result.peak_memory_kind})")
    hours = PAPER_STEPS * PAPER_BATCH / result.images_per_second / 3600
    print(
        f"paper recipe ({PAPER_STEPS} steps x {PAPER_BATCH} images) at this rate on one such device: "
        f"{hours:.1f} h = {hours / 24:.1f} days"
    )


if __name__ == "__main__":
    main()
