"""Cost of validating a whole pseudo-label set when it is loaded (issue 15, item 8).

Builds N images x M masks of realistic RLEs (random boxes at SA-1B-like 1024 x 1536, a two-level
hierarchy), then times :func:`sohes_hf.data.pseudo_label_checks.check_label_columns` alone, the
JSON store's load (parse + check) and the Arrow store's open (check included), and prints
annotations per second.

Usage:
    python benchmarks/benchmark_label_checks.py [--images 100] [--masks-per-image 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from sohes_hf.data.pseudo_label_checks import check_label_columns
from sohes_hf.data.pseudo_label_store import (
    ArrowPseudoLabelStore,
    JsonPseudoLabelStore,
    _columns,
    convert_pseudo_labels,
)


def _labels(num_images: int, masks_per_image: int, height: int, width: int) -> dict:
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"sa_{image_id}.jpg", "width": width, "height": height})
        root_id = len(annotations) + 1
        for k in range(masks_per_image):
            mask = np.zeros((height, width), dtype=np.uint8)
            y, x = int(rng.integers(0, height - 64)), int(rng.integers(0, width - 64))
            mask[y : y + int(rng.integers(32, 400)), x : x + int(rng.integers(32, 400))] = 1
            rle = coco_mask.encode(np.asfortranarray(mask))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                "area": int(mask.sum()), "bbox": [x, y, 1, 1], "iscrowd": 0, "score": 1.0,
                "parent_id": None if k == 0 else root_id, "depth": 0 if k == 0 else 1,
            })  # fmt: skip
    return {"images": images, "categories": [{"id": 1, "name": "entity"}], "annotations": annotations}


def _best(function, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--masks-per-image", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = _labels(args.images, args.masks_per_image, 1024, 1536)
    num = len(data["annotations"])
    chars = sum(len(a["segmentation"]["counts"]) for a in data["annotations"])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.json"
        path.write_text(json.dumps(data))
        store = JsonPseudoLabelStore.from_files(path)
        columns = _columns([store.get(i) for i in range(1, args.images + 1)])  # type: ignore[misc]
        check = _best(lambda: check_label_columns(columns, "bench"), args.repeats)
        load = _best(lambda: JsonPseudoLabelStore.from_files(path), args.repeats)
        convert_pseudo_labels(path, Path(folder) / "labels.arrow")
        arrow = _best(lambda: ArrowPseudoLabelStore(Path(folder) / "labels.arrow"), args.repeats)
    print(f"annotations\t{num}\nrle_chars_per_mask\t{chars / num:.0f}")
    print(f"check_only_s\t{check:.3f}\t({num / check:,.0f} annotations/s)")
    print(f"json_load_with_check_s\t{load:.3f}\t(check is {100 * check / load:.0f}% of it)")
    print(f"arrow_open_with_check_s\t{arrow:.3f}\t({num / arrow:,.0f} annotations/s)")


if __name__ == "__main__":
    main()
