"""Speed of step 3 of self-exploration, CascadePSP refinement (paper section 3.1): prints figures.

Runs the public :class:`~sohes_hf.pseudo_labeling.refinement.CascadePSPRefiner` (the real
architecture with random weights saved in the package's checkpoint layout; nothing is
downloaded) on one synthetic image and its masks, and the official package's
``Refiner.refine`` on the same crops one mask at a time (what the refiner did before batching),
and prints masks/s, wall and CPU seconds (``time.process_time``; medians over ``--repeats``) and
whether the two agree on every mask. On a 2-core CPU keep ``--max-side`` small (one mask at the
package default L = 900 takes ~40 s there) but not below the image size: crops larger than L
are covered by local windows every ``L // 2 - 32`` px, 225 windows per 128 px crop at L = 72.
On a GPU use the defaults of the paper setting.

Usage::

    python benchmarks/benchmark_refiner.py --max-side 128 --image-size 128 --num-masks 8 --repeats 1
    python benchmarks/benchmark_refiner.py --device cuda --batch-sizes 1,8,16    # L = 900, 1024 px
    python benchmarks/benchmark_refiner.py --shapes-only                         # shapes at L = 900
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from sohes_hf.masks import decode_mask, encode_mask, mask_boxes_xywh
from sohes_hf.pseudo_labeling.refinement import CascadePSPRefiner, _crop_window


def synthetic_masks(size: int, num_masks: int, seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """An RGB image of ellipses and their masks, sizes spread over 1/32 .. 1/2 of the image side."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    masks = []
    for _ in range(num_masks):
        axes = tuple(int(size * 2.0 ** rng.uniform(-6, -2)) + 1 for _ in range(2))
        center = tuple(int(c) for c in rng.integers(0, size, 2))
        mask = np.zeros((size, size), dtype=np.uint8)
        cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
        color = rng.integers(0, 256, 3).astype(np.uint8)
        image[mask > 0] = color
        edge = cv2.dilate(mask, np.ones((5, 5), np.uint8)) > cv2.erode(mask, np.ones((5, 5), np.uint8))
        noisy = mask.astype(bool) ^ (edge & (rng.random((size, size)) < 0.2))  # a clustering-like ragged edge
        masks.append(encode_mask(noisy))
    return image, masks


def print_shapes(image: np.ndarray, masks: list[dict[str, Any]], max_side: int) -> None:
    """How many network input shapes the crops give (what can share a batch), square vs box crops."""
    from sohes_hf.pseudo_labeling.cascadepsp import _local_windows, _padded_size

    height, width = image.shape[:2]
    boxes = mask_boxes_xywh(masks)
    for step, name in ((32, "square crops, 32 px steps"), (0, "tight box crops")):
        global_shapes, window_shapes, num_windows = set(), set(), 0
        for box in boxes:
            x0, y0, x1, y1 = _crop_window(box, width, height, 0.5, 32, step)
            h, w = y1 - y0, x1 - x0
            ratio = max_side / max(h, w)
            resized = (h, w) if max(h, w) == max_side else (int(h * ratio), int(w * ratio))
            global_shapes.add(_padded_size(*resized))
            for window in _local_windows(h, w, max_side):
                num_windows += 1
                window_shapes.add(_padded_size(window.y1 - window.y0, window.x1 - window.x0))
        print(
            f"{name}: {len(boxes)} crops in {len(global_shapes)} global-step shapes, "
            f"{num_windows} local windows in {len(window_shapes)} shapes (before the skip rule)"
        )


def _timed(function: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """(last result, median wall seconds, median CPU seconds) over ``repeats`` calls."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        _synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        _synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, statistics.median(walls), statistics.median(cpus)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def package_refine(
    folder: Path, device: str, image: np.ndarray, masks: list[dict[str, Any]], refiner: CascadePSPRefiner
) -> Callable[[], list[np.ndarray]]:
    """The official package on each mask's crop, one call per mask (the unbatched baseline)."""
    from segmentation_refinement import Refiner

    package = Refiner(device=device, model_folder=str(folder), download_and_check_model=False)
    height, width = image.shape[:2]
    boxes = mask_boxes_xywh(masks)

    def run() -> list[np.ndarray]:
        outputs = []
        for rle, box in zip(masks, boxes, strict=True):
            mask = decode_mask(rle)
            x0, y0, x1, y1 = _crop_window(
                box, width, height, refiner.crop_margin, refiner.min_crop_side, refiner.square_crop_step
            )
            crop = mask[y0:y1, x0:x1].astype(np.uint8) * 255
            full = np.zeros_like(mask)
            full[y0:y1, x0:x1] = (
                package.refine(image[y0:y1, x0:x1], crop, fast=refiner.fast, L=refiner.max_side) > 127
            )
            outputs.append(full)
        return outputs

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-side", type=int, default=900, help="CascadePSP's L")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument(
        "--num-masks", type=int, default=100, help="masks of the image (~100 in the paper setting)"
    )
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated refiner batch sizes")
    parser.add_argument("--fast", action="store_true", help="global step only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-package", action="store_true", help="skip the one-mask-per-call baseline")
    parser.add_argument("--shapes-only", action="store_true", help="print the crop shapes, run nothing")
    args = parser.parse_args()

    from segmentation_refinement.models.psp.pspnet import RefinementModule

    torch.manual_seed(0)
    image, masks = synthetic_masks(args.image_size, args.num_masks, seed=0)
    print(
        f"device {args.device}, L = {args.max_side}, {args.image_size} px image, {len(masks)} masks, "
        f"fast={args.fast}, torch threads {torch.get_num_threads()}, medians of {args.repeats}"
    )
    print_shapes(image, masks, args.max_side)
    if args.shapes_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        state = {f"module.{k}": v for k, v in RefinementModule().state_dict().items()}
        torch.save(state, folder / "model")
        outputs: dict[int, list[np.ndarray]] = {}
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            refiner = CascadePSPRefiner(
                weights_folder=folder,
                device=args.device,
                max_side=args.max_side,
                fast=args.fast,
                batch_size=batch_size,
            )
            refiner.refine(image, masks[:1])  # warm-up (kernel selection, allocator)
            refined, wall, cpu = _timed(lambda r=refiner: r.refine(image, masks), args.repeats)
            decoded = [decode_mask(r) for r in refined]
            print(
                f"batched (batch_size={batch_size:3d}): {len(masks) / wall:8.3f} masks/s, "
                f"wall {wall:8.2f} s, CPU {cpu:8.2f} s"
            )
            outputs[batch_size] = decoded
        if not args.no_package:
            run = package_refine(folder, args.device, image, masks, refiner)
            expected, wall, cpu = _timed(run, args.repeats)
            same = ", ".join(
                f"{sum(bool(np.array_equal(a, b)) for a, b in zip(expected, decoded, strict=True))} of "
                f"{len(masks)} (batch_size={batch_size})"
                for batch_size, decoded in outputs.items()
            )
            print(
                f"package, one mask per call : {len(masks) / wall:8.3f} masks/s, wall {wall:8.2f} s, "
                f"CPU {cpu:8.2f} s; identical masks: {same}"
            )


if __name__ == "__main__":
    main()
