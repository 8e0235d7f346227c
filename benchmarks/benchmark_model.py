"""Speed, memory and size of the SOHES model (DINO ViT-B/8 + ViT-Adapter + Mask2Former + ancestor head).

Prints parameter counts per module, then for each input size the time of an inference forward
pass and of a training step (forward + loss + backward) with random weights and synthetic
hierarchical labels, and the peak memory (CUDA: peak allocated; CPU: process peak RSS, which
only grows, so read it as "at most").

    python benchmarks/benchmark_model.py --sizes 512 --device cpu
    python benchmarks/benchmark_model.py --sizes 512 1024 --device cuda --repeats 5

``--tiny`` uses the test configuration (seconds on a laptop) to check the script itself.
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import time
from collections.abc import Callable

import torch

from sohes_hf.modeling import SohesConfig, SohesForHierarchicalSegmentation
from sohes_hf.modeling.testing_utils import tiny_sohes_config


def parameter_counts(model: SohesForHierarchicalSegmentation) -> dict[str, int]:
    """Parameters per part of the architecture (the adapter is the backbone minus its ViT)."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    vit = count(model.backbone.vit)
    return {
        "backbone (DINO ViT)": vit,
        "ViT-Adapter": count(model.backbone) - vit,
        "pixel decoder": count(model.pixel_decoder),
        "transformer decoder + class head": count(model.transformer_module) + count(model.class_predictor),
        "ancestor head": count(model.ancestor_head),
        "total": count(model),
    }


def synthetic_labels(
    size: int, num_roots: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """One image's targets: ``num_roots`` boxes, each with two halves as parts (3 levels of masks)."""
    masks, parents = [], []
    step = size // num_roots
    for root in range(num_roots):
        start = root * step
        whole = torch.zeros(size, size)
        whole[start : start + step, :] = 1
        left = whole.clone()
        left[:, size // 2 :] = 0
        right = whole - left
        root_index = len(masks)
        masks += [whole, left, right]
        parents += [-1, root_index, root_index]
    ancestors = torch.zeros(len(masks), len(masks))
    for child, parent in enumerate(parents):
        if parent >= 0:
            ancestors[parent, child] = 1
    return (
        [torch.stack(masks).to(device)],
        [torch.zeros(len(masks), dtype=torch.long, device=device)],
        [ancestors.to(device)],
    )


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(step: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of ``step`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _inference(model: SohesForHierarchicalSegmentation, pixels: torch.Tensor) -> object:
    with torch.no_grad():
        return model.eval()(pixels)


def _train_step(
    model: SohesForHierarchicalSegmentation,
    pixels: torch.Tensor,
    mask_labels: list[torch.Tensor],
    class_labels: list[torch.Tensor],
    ancestor_labels: list[torch.Tensor],
) -> object:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(
        pixels, mask_labels=mask_labels, class_labels=class_labels, ancestor_labels=ancestor_labels
    ).loss
    loss.backward()
    return loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[512], help="square input sizes (multiples of 32)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--num-queries", type=int, default=None, help="override config.num_queries")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny test configuration")
    args = parser.parse_args(argv)
    if any(size <= 0 or size % 32 for size in args.sizes):
        parser.error(f"--sizes: must be positive multiples of 32, got {args.sizes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {} if args.num_queries is None else {"num_queries": args.num_queries}
    config = tiny_sohes_config(**overrides) if args.tiny else SohesConfig(**overrides)
    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(config).to(device)

    print(f"device: {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}")
    print(
        f"num_queries={config.num_queries}, decoder_layers={config.decoder_layers}, batch={args.batch_size}"
    )
    print(f"{'module':<36}{'parameters':>14}")
    for name, value in parameter_counts(model).items():
        print(f"{name:<36}{value:>14,}")

    print(f"\n{'size':>6}{'forward s':>12}{'fwd+bwd s':>12}{'peak fwd MB':>14}{'peak train MB':>15}")
    for size in args.sizes:
        pixels = torch.randn(args.batch_size, 3, size, size, device=device)
        mask_labels, class_labels, ancestor_labels = synthetic_labels(size, 8, device)
        mask_labels *= args.batch_size
        class_labels *= args.batch_size
        ancestor_labels *= args.batch_size

        inference = functools.partial(_inference, model, pixels)
        train_step = functools.partial(_train_step, model, pixels, mask_labels, class_labels, ancestor_labels)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        forward_s = timed(inference, device, args.repeats, args.warmup)
        forward_mb = peak_memory_mb(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        train_s = timed(train_step, device, args.repeats, args.warmup)
        train_mb = peak_memory_mb(device)
        print(f"{size:>6}{forward_s:>12.2f}{train_s:>12.2f}{forward_mb:>14.0f}{train_mb:>15.0f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
