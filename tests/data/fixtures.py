"""Writers of tiny SA-1B-format tar packs and pseudo-label files for the data tests.

The tar layout follows the official SA-1B release: flat members ``sa_<N>.jpg`` followed by
``sa_<N>.json``, where the JSON holds ``image`` (``image_id``, ``width``, ``height``,
``file_name``) and ``annotations`` (COCO RLE ``segmentation`` with ``str`` counts, XYWH ``bbox``,
``area``, ``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``, ``id``).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


@dataclass
class FixtureImage:
    """One generated SA-1B image: its id, size and the masks written for it."""

    image_id: int
    width: int
    height: int
    human_masks: list[np.ndarray] = field(default_factory=list)

    @property
    def file_name(self) -> str:
        return f"sa_{self.image_id}.jpg"


def encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE with ``str`` counts of an (H, W) bool mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _random_box_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    y1, x1 = int(rng.integers(y0 + 2, height + 1)), int(rng.integers(x0 + 2, width + 1))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def jpeg_bytes(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sa1b_annotation_json(image: FixtureImage, *, mix_number_types: bool) -> bytes:
    """The official per-image JSON; with ``mix_number_types`` some floats are written as ints."""
    annotations = []
    for index, mask in enumerate(image.human_masks):
        rle = encode(mask)
        area = int(mask.sum())
        ys, xs = np.nonzero(mask)
        bbox = [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ]
        mixed = mix_number_types and index % 2 == 0
        annotations.append(
            {
                "segmentation": rle,
                "bbox": [int(v) for v in bbox] if mixed else bbox,
                "area": area if mixed else float(area),
                "predicted_iou": 1 if mixed else 0.98,
                "point_coords": [[int(xs[0]), int(ys[0])]] if mixed else [[float(xs[0]) + 0.5, float(ys[0])]],
                "crop_box": [0, 0, image.width, image.height]
                if mixed
                else [0.0, 0.0, 1.0 * image.width, 1.0 * image.height],
                "id": image.image_id * 1000 + index,
                "stability_score": 1 if mixed else 0.95,
            }
        )
    record = {
        "image": {
            "image_id": image.image_id,
            "width": image.width,
            "height": image.height,
            "file_name": image.file_name,
        },
        "annotations": annotations,
    }
    return json.dumps(record).encode("utf-8")


def _add_member(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def write_sa1b_tar(
    path: Path,
    image_ids: list[int],
    *,
    height: int = 48,
    width: int = 64,
    masks_per_image: int = 3,
    mix_number_types: bool = True,
    extra_members: list[tuple[str, bytes]] | None = None,
    drop_images: tuple[int, ...] = (),
    seed: int = 0,
) -> list[FixtureImage]:
    """Writes an SA-1B pack at ``path`` and returns the images it holds (with their masks).

    Args:
        image_ids: N of each ``sa_N.jpg``/``sa_N.json`` pair, in member order.
        extra_members: (member name, bytes) appended after the pairs (hostile input tests).
        drop_images: ids whose ``.jpg`` is left out (their JSON is still written).
    """
    rng = np.random.default_rng(seed)
    images = []
    with tarfile.open(path, "w") as archive:
        for image_id in image_ids:
            image = FixtureImage(image_id=image_id, width=width, height=height)
            image.human_masks = [_random_box_mask(rng, height, width) for _ in range(masks_per_image)]
            if image_id not in drop_images:
                _add_member(archive, image.file_name, jpeg_bytes(height, width, seed=image_id))
                images.append(image)
            _add_member(
                archive, f"sa_{image_id}.json", sa1b_annotation_json(image, mix_number_types=mix_number_types)
            )
        for name, payload in extra_members or []:
            _add_member(archive, name, payload)
    return images


def pseudo_label_coco(
    images: list[FixtureImage], *, seed: int = 0, masks_per_image: int = 4
) -> dict[str, Any]:
    """A pseudo-label file (COCO JSON, COMMON.md contract) with a two-level hierarchy per image.

    For each image: one root entity (depth 0) and ``masks_per_image - 1`` children of it
    (depth 1) inside the root's box; parents precede children; annotation ids are global.
    """
    rng = np.random.default_rng(seed)
    annotations: list[dict[str, Any]] = []
    next_id = 1
    for image in images:
        root = _random_box_mask(rng, image.height, image.width)
        root_id = next_id
        masks = [(root, None, 0)]
        for _ in range(masks_per_image - 1):
            child = root & _random_box_mask(rng, image.height, image.width)
            if not child.any():
                child = root.copy()
            masks.append((child, root_id, 1))
        for mask, parent_id, depth in masks:
            ys, xs = np.nonzero(mask)
            annotations.append(
                {
                    "id": next_id,
                    "image_id": image.image_id,
                    "category_id": 1,
                    "segmentation": encode(mask),
                    "area": int(mask.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                    "iscrowd": 0,
                    "score": float(rng.uniform(0.5, 1.0)),
                    "parent_id": parent_id,
                    "depth": depth,
                }
            )
            next_id += 1
    return {
        "info": {"description": "sohes-hf test pseudo-labels"},
        "images": [
            {"id": im.image_id, "file_name": im.file_name, "width": im.width, "height": im.height}
            for im in images
        ],
        "categories": [{"id": 1, "name": "entity"}],
        "annotations": annotations,
    }


def write_pseudo_labels(path: Path, images: list[FixtureImage], **kwargs: Any) -> dict[str, Any]:
    """Writes :func:`pseudo_label_coco` to ``path`` and returns the written dict."""
    data = pseudo_label_coco(images, **kwargs)
    path.write_text(json.dumps(data))
    return data


def add_tar_member(
    tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> None:
    """Adds one member of any kind (regular file with ``data``, link to ``link``, device, FIFO)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
