"""Shared fixtures of the training tests: tiny pseudo-labelled image folders and tiny recipes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sohes_hf.masks import encode_mask
from sohes_hf.modeling.testing_utils import tiny_sohes_config_kwargs

IMAGE_SIZE = 64


def tiny_model_config() -> dict[str, Any]:
    """SohesConfig kwargs of a 2-layer ViT / 2-layer decoder model that steps in well under a second."""
    return tiny_sohes_config_kwargs(
        backbone_config={"num_hidden_layers": 2},
        interaction_indexes=[[0, 0], [1, 1]],
        adapter_add_vit_feature=False,  # the official per-stage addition needs four stages
        decoder_layers=2,
        num_queries=8,
        train_num_points=64,
    )


def write_pseudo_labelled_folder(
    root: Path, num_images: int = 3, size: int = IMAGE_SIZE
) -> tuple[Path, Path]:
    """Writes ``num_images`` PNG images with nested-rectangle entities and their COCO pseudo-labels.

    Each image has two whole entities (bright rectangles on a dark background), the first with a
    part (a differently coloured sub-rectangle) and that part with a sub-part: depths 0, 1, 2.

    Returns:
        (image folder, pseudo-label JSON path).
    """
    rng = np.random.default_rng(0)
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    next_id = 1
    for number in range(1, num_images + 1):
        pixels = np.full((size, size, 3), 20, dtype=np.uint8)
        boxes = []
        y0, x0 = rng.integers(2, size // 4, size=2)
        boxes.append((y0, x0, y0 + size // 2, x0 + size // 2))  # entity A
        boxes.append((y0 + 4, x0 + 4, y0 + size // 4 + 4, x0 + size // 4 + 4))  # part of A
        boxes.append((y0 + 6, x0 + 6, y0 + 12, x0 + 12))  # sub-part
        y1 = int(rng.integers(size // 2 + 8, size - 12))
        boxes.append((y1, 4, y1 + 10, size - 4))  # entity B
        parents = [None, 0, 1, None]
        colours = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (220, 220, 40)]
        ids = []
        for index, ((top, left, bottom, right), colour) in enumerate(zip(boxes, colours, strict=True)):
            pixels[top:bottom, left:right] = colour
            mask = np.zeros((size, size), dtype=bool)
            mask[top:bottom, left:right] = True
            parent = parents[index]
            annotations.append(
                {
                    "id": next_id,
                    "image_id": number,
                    "category_id": 1,
                    "segmentation": encode_mask(mask),
                    "area": int(mask.sum()),
                    "bbox": [float(left), float(top), float(right - left), float(bottom - top)],
                    "iscrowd": 0,
                    "score": 1.0,
                    "parent_id": None if parent is None else ids[parent],
                    "depth": 0 if parent is None else (1 if parents[parent] is None else 2),
                }
            )
            ids.append(next_id)
            next_id += 1
        file_name = f"img_{number}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        images.append({"id": number, "file_name": file_name, "width": size, "height": size})
    labels = root / "pseudo_labels.json"
    labels.write_text(
        json.dumps(
            {
                "info": {},
                "images": images,
                "categories": [{"id": 1, "name": "entity"}],
                "annotations": annotations,
            }
        )
    )
    return image_dir, labels


def tiny_recipe(image_dir: Path, labels: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Values of a tiny CPU recipe (64 px, batch 2, a handful of steps)."""
    values: dict[str, Any] = {
        "train_annotations": str(labels),
        "image_root": str(image_dir),
        "output_dir": str(output_dir),
        "dino_backbone": None,
        "model_config": tiny_model_config(),
        "max_steps": 4,
        "global_batch_size": 2,
        "per_device_train_batch_size": 2,
        "base_learning_rate": 1e-3,
        "base_batch_size": 2,
        "warmup_steps": 1,
        "weight_decay": 0.0,
        "logging_steps": 1,
        "checkpointing_steps": 0,
        "augmentation": {
            "image_size": IMAGE_SIZE,
            "min_scale": 0.8,
            "max_scale": 1.2,
            "color_jitter_strength": 0.2,
        },
    }
    values.update(overrides)
    return values


def fixed_batch_dataset(example: Any, length: int = 1) -> Any:
    """A map-style dataset returning ``example`` at every stream position (a fixed batch)."""
    from torch.utils.data import Dataset

    class _Fixed(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return length

        def __getitem__(self, position: int) -> Any:
            return example

    return _Fixed()
