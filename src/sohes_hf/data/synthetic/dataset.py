"""A synthetic hierarchical-scene dataset on disk: PNG images + COCO JSON with parent links.

``make_synthetic_dataset`` renders ``num_images`` scenes (:mod:`.scenes`) and writes

    DIR/train/images/000001.png ...    DIR/train/annotations.json
    DIR/val/images/000161.png ...      DIR/val/annotations.json

Each annotation file is class-agnostic-ready COCO: ``images`` (``id``, ``file_name``, ``width``,
``height``), ``categories`` (one per entity kind / part / subpart name, ``kind:part:subpart``, so
``sohes evaluate --category-name-contains :`` keeps parts only, as for PACO) and ``annotations``
with ``id``, ``image_id``, ``category_id``, RLE ``segmentation`` (``str`` counts), ``area``,
XYWH ``bbox``, ``iscrowd`` 0, ``parent_id`` (annotation id or null) and ``depth`` (0 = whole
entity), parents before children: the format ``sohes evaluate`` reads for its hierarchy metrics
and the one ``sohes explore`` writes. Image and annotation ids are unique across both splits.

Image ``k`` is drawn from ``SeedSequence([seed, k])``, so a seed fixes every byte of the output,
and an image does not depend on ``num_images`` or on the split sizes. The dataset is built in a
hidden folder inside ``DIR`` and moved into place only when complete (a failure leaves the
previous dataset as it was).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sohes_hf.data.synthetic.entities import CATEGORY_NAMES
from sohes_hf.data.synthetic.scenes import SceneConfig, SyntheticScene, render_scene
from sohes_hf.logging_utils import get_logger
from sohes_hf.masks import encode_masks, mask_areas, mask_boxes_xywh

logger = get_logger(__name__)

SPLITS = ("train", "val")


@dataclass(frozen=True)
class SyntheticSplit:
    """Where one written split lives and how big it is."""

    name: str
    image_dir: Path
    annotation_file: Path
    num_images: int
    num_annotations: int

    def evaluate_argument(self, name: str = "synthetic") -> str:
        """The ``sohes evaluate --dataset`` value for this split: ``NAME=GT_JSON:IMAGE_DIR``."""
        return f"{name}={self.annotation_file}:{self.image_dir}"


@dataclass(frozen=True)
class SyntheticDataset:
    """The written dataset: its folder and its ``train`` and ``val`` splits."""

    root: Path
    train: SyntheticSplit
    val: SyntheticSplit

    @property
    def splits(self) -> dict[str, SyntheticSplit]:
        return {"train": self.train, "val": self.val}


def scene_seed(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` (0-based) of a dataset made with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def split_sizes(num_images: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) image counts: val is ``round(num_images * val_fraction)``, at least 1 when the
    fraction is positive and ``num_images >= 2``, and train keeps at least one image."""
    if val_fraction <= 0 or num_images < 2:
        return num_images, 0
    num_val = min(num_images - 1, max(1, round(num_images * val_fraction)))
    return num_images - num_val, num_val


def make_synthetic_dataset(
    output_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: int = 256,
    val_fraction: float = 0.2,
    config: SceneConfig | None = None,
) -> SyntheticDataset:
    """Renders and writes a synthetic hierarchical-scene dataset (see the module docstring).

    Args:
        output_dir: folder receiving ``train/`` and ``val/`` (created; previous splits replaced).
        num_images: scenes in total (>= 1); the first ones go to ``train``, the rest to ``val``.
        seed: fixes every byte of the output.
        image_size: side of the square images in pixels; overrides ``config.image_size``.
        val_fraction: share of the images in ``val``, in [0, 1).
        config: how scenes are drawn (default :class:`SceneConfig`).

    Raises:
        ValueError: a bad ``num_images``, ``seed``, ``image_size`` or ``val_fraction``.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images: must be a positive integer, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    if not isinstance(val_fraction, int | float) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be a number in [0, 1), got {val_fraction!r}")
    config = dataclasses.replace(config or SceneConfig(), image_size=image_size)
    num_train, _ = split_sizes(num_images, val_fraction)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=output_dir))
    try:
        writers = {name: _SplitWriter(name, stage / name, config, seed) for name in SPLITS}
        from tqdm.auto import tqdm

        next_annotation_id = 1
        for index in tqdm(range(num_images), desc="rendering scenes", unit="image", disable=num_images < 50):
            scene = render_scene(config, scene_seed(seed, index))
            writer = writers["train" if index < num_train else "val"]
            next_annotation_id = writer.add(scene, image_id=index + 1, first_annotation_id=next_annotation_id)
        counts = {name: writer.finish() for name, writer in writers.items()}
        for name in SPLITS:
            _replace(stage / name, output_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    splits = {
        name: SyntheticSplit(
            name, output_dir / name / "images", output_dir / name / "annotations.json", *counts[name]
        )
        for name in SPLITS
    }
    logger.info(
        "wrote %d synthetic images (%d train, %d val) to %s",
        num_images,
        splits["train"].num_images,
        splits["val"].num_images,
        output_dir,
    )
    return SyntheticDataset(root=output_dir, train=splits["train"], val=splits["val"])


def scene_annotations(scene: SyntheticScene, image_id: int, first_annotation_id: int) -> list[dict[str, Any]]:
    """COCO annotations of one scene, ids from ``first_annotation_id``, parents first."""
    if len(scene.masks) == 0:
        return []
    rles = encode_masks(scene.masks)
    areas = mask_areas(rles)
    boxes = mask_boxes_xywh(rles)
    category_of = {name: k + 1 for k, name in enumerate(CATEGORY_NAMES)}
    annotations = []
    for k, (rle, name, parent, depth) in enumerate(
        zip(rles, scene.names, scene.parents, scene.depths, strict=True)
    ):
        annotations.append(
            {
                "id": first_annotation_id + k,
                "image_id": image_id,
                "category_id": category_of[name],
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
                "area": float(areas[k]),
                "bbox": [float(v) for v in boxes[k]],
                "iscrowd": 0,
                "parent_id": None if parent < 0 else first_annotation_id + int(parent),
                "depth": int(depth),
            }
        )
    return annotations


class _SplitWriter:
    """Writes one split's PNGs as they come and its annotation file at the end."""

    def __init__(self, name: str, folder: Path, config: SceneConfig, seed: int) -> None:
        self.folder = folder
        (folder / "images").mkdir(parents=True)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.info = {
            "description": f"sohes-hf synthetic hierarchical scenes, {name} split",
            "generator": "sohes_hf.data.synthetic",
            "seed": seed,
            "scene_config": _config_dict(config),
        }

    def add(self, scene: SyntheticScene, image_id: int, first_annotation_id: int) -> int:
        """Writes the scene's PNG and keeps its records; returns the next free annotation id."""
        file_name = f"{image_id:06d}.png"
        bgr = np.ascontiguousarray(scene.image[..., ::-1])
        # Fast PNG compression: the colour noise leaves little to compress, level 1 writes 4x faster.
        if not cv2.imwrite(str(self.folder / "images" / file_name), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"could not write {self.folder / 'images' / file_name}")
        height, width = scene.image.shape[:2]
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        annotations = scene_annotations(scene, image_id, first_annotation_id)
        self.annotations.extend(annotations)
        return first_annotation_id + len(annotations)

    def finish(self) -> tuple[int, int]:
        """Writes ``annotations.json``; returns (images, annotations)."""
        payload = {
            "info": self.info,
            "images": self.images,
            "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CATEGORY_NAMES)],
            "annotations": self.annotations,
        }
        (self.folder / "annotations.json").write_text(json.dumps(payload) + "\n", encoding="utf-8")
        return len(self.images), len(self.annotations)


def _config_dict(config: SceneConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["num_clutter"] = list(config.num_clutter)
    values["palette"] = {key: list(v) if isinstance(v, tuple) else v for key, v in values["palette"].items()}
    return values


def _replace(stage: Path, target: Path) -> None:
    """Moves a finished split folder onto ``target``; the old one is removed only afterwards.

    ``annotations.json`` of the old split goes first, so a kill in between leaves a folder
    without an annotation file (rerun) rather than one describing other images.
    """
    if target.exists():
        (target / "annotations.json").unlink(missing_ok=True)
        old = stage.parent / f"old-{target.name}"
        target.rename(old)
    stage.rename(target)
