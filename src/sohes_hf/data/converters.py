"""Converters from native dataset formats to class-agnostic COCO JSON (paper section 4, appendix D).

* :func:`make_sa1b_eval_split`: an SA-1B pack -> images + COCO JSON whose ground truth is the
  human masks (the SA-1B evaluation split; those masks are never used for training).
* :func:`ade20k_instances_to_coco`: ADE20K instance PNGs (R channel = category, G channel =
  instance id, 0 = no instance) -> COCO JSON.

Both write atomically (temporary file + ``os.replace``) and name output images from validated
integers or existing local names, never from archive member names.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sohes_hf.atomic_io import write_bytes_atomic, write_json_atomic
from sohes_hf.data.coco_datasets import ENTITY_CATEGORY
from sohes_hf.data.sa1b import DEFAULT_MAX_IMAGE_PIXELS, ReadReport, iter_sa1b_records
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)


@dataclass(frozen=True)
class ConversionSummary:
    """What a converter wrote.

    Attributes:
        annotation_file: the COCO JSON written.
        image_dir: folder the JSON's ``file_name`` entries are relative to.
        report: skipped input (SA-1B only; None otherwise).
    """

    annotation_file: Path
    image_dir: Path
    num_images: int
    num_annotations: int
    report: ReadReport | None = None


def make_sa1b_eval_split(
    pack: str,
    output_dir: str | Path,
    *,
    num_images: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ConversionSummary:
    """Carves a class-agnostic COCO evaluation split out of one SA-1B pack.

    Bad records (NaN/negative ``area``, non-finite ``bbox``, RLE counts that do not describe
    height x width pixels) skip their image, reported with member and annotation id. The split
    is built in a hidden folder under ``output_dir`` and moved in only when complete, replacing
    a previous ``images/`` and ``annotations.json``; a failure leaves the previous split as it was.

    Writes ``output_dir/images/sa_<N>.jpg`` (name rebuilt from the validated integer id) and
    ``output_dir/annotations.json`` with the human masks as ground truth (``category_id`` 1,
    ``iscrowd`` 0, the SA-1B annotation ids, RLE ``segmentation``, ``area`` and XYWH ``bbox``
    from the JSON).

    Args:
        pack: path or URL of an ``sa_XXXXXX.tar`` that no training pack repeats.
        num_images: stop after this many valid images (None: the whole pack).

    Raises:
        ValueError: ``num_images`` is not positive, or the pack yields no valid image.
    """
    if num_images is not None and num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".sa1b-split-", dir=output_dir))
    try:
        num_images, num_annotations, report = _write_sa1b_split(
            pack, stage, num_images=num_images, max_image_pixels=max_image_pixels
        )
        _replace_split(stage, output_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if report.total_skipped:
        logger.warning("%s: skipped %d items: %s", pack, report.total_skipped, report.num_skipped)
    logger.info("wrote %d images and %d masks to %s", num_images, num_annotations, output_dir)
    return ConversionSummary(
        output_dir / "annotations.json", output_dir / "images", num_images, num_annotations, report
    )


def _replace_split(stage: Path, output_dir: Path) -> None:
    """Moves a finished split from ``stage`` into ``output_dir``, replacing a previous one.

    The old ``annotations.json`` goes first and the new one comes last, so a kill in between
    leaves no ``annotations.json`` (an unusable folder, rerun) rather than one describing other
    images.
    """
    (output_dir / "annotations.json").unlink(missing_ok=True)
    if (output_dir / "images").exists():
        (output_dir / "images").rename(stage / "old-images")
    (stage / "images").rename(output_dir / "images")
    (stage / "annotations.json").rename(output_dir / "annotations.json")


def _write_sa1b_split(
    pack: str, stage: Path, *, num_images: int | None, max_image_pixels: int
) -> tuple[int, int, ReadReport]:
    """Writes the whole split under ``stage``; returns (images, masks, read report)."""
    image_dir = stage / "images"
    image_dir.mkdir()
    report = ReadReport()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    records = iter_sa1b_records([pack], report, max_image_pixels=max_image_pixels)
    for record in tqdm(records, total=num_images, desc="SA-1B split", unit=" images"):
        image = record.image
        file_name = f"sa_{int(image.image_id)}.jpg"
        write_bytes_atomic(image_dir / file_name, image.image_bytes)
        images.append(
            {"id": image.image_id, "file_name": file_name, "width": image.width, "height": image.height}
        )
        for annotation in record.annotations:
            annotations.append(
                {
                    "id": annotation.id,
                    "image_id": image.image_id,
                    "category_id": ENTITY_CATEGORY["id"],
                    "segmentation": annotation.segmentation,
                    "area": annotation.area,
                    "bbox": list(annotation.bbox),
                    "iscrowd": 0,
                }
            )
        if num_images is not None and len(images) >= num_images:
            break
    if not images:
        raise ValueError(f"pack {pack} yielded no valid image ({report.total_skipped} items skipped)")
    write_json_atomic(
        stage / "annotations.json",
        {
            "info": {
                "description": f"SA-1B evaluation split from {Path(pack).name}, human masks as ground truth"
            },
            "images": images,
            "categories": [dict(ENTITY_CATEGORY)],
            "annotations": annotations,
        },
    )
    return len(images), len(annotations), report


def ade20k_instances_to_coco(
    image_dir: str | Path, instance_dir: str | Path, output_file: str | Path
) -> ConversionSummary:
    """Converts ADE20K instance PNGs into a class-agnostic COCO JSON.

    Each ``instance_dir/<stem>.png`` pairs with ``image_dir/<stem>.jpg``; every distinct
    (R, G) pair with G > 0 (R = category, G = instance id) becomes one mask.

    Raises:
        FileNotFoundError: a folder or an image paired with an instance PNG is missing.
        ValueError: no instance PNG was found, or a PNG is not RGB or differs from its image size.
    """
    from pycocotools import mask as mask_utils

    image_dir, instance_dir, output_file = Path(image_dir), Path(instance_dir), Path(output_file)
    for folder in (image_dir, instance_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist")
    pngs = sorted(instance_dir.glob("*.png"))
    if not pngs:
        raise ValueError(f"instance_dir: no .png under {instance_dir}")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, png in enumerate(tqdm(pngs, desc="ADE20K instances", unit=" images"), start=1):
        image_path = image_dir / f"{png.stem}.jpg"
        if not image_path.is_file():
            raise FileNotFoundError(f"image {image_path} for instance map {png} does not exist")
        with Image.open(png) as instance_map:
            if instance_map.mode not in ("RGB", "RGBA"):
                raise ValueError(
                    f"{png}: instance maps must be RGB (R = category, G = instance), got {instance_map.mode}"
                )
            pixels = np.asarray(instance_map)[..., :3]
        with Image.open(image_path) as image:
            width, height = image.size
        if pixels.shape[:2] != (height, width):
            raise ValueError(
                f"{png}: size {pixels.shape[1]}x{pixels.shape[0]} differs from {image_path} "
                f"({width}x{height})"
            )
        images.append({"id": image_id, "file_name": image_path.name, "width": width, "height": height})
        codes = pixels[..., 0].astype(np.int32) * 256 + pixels[..., 1].astype(np.int32)
        for code in np.unique(codes[pixels[..., 1] > 0]):
            rle = mask_utils.encode(np.asfortranarray(codes == code))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ENTITY_CATEGORY["id"],
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "area": int(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    output_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        output_file,
        {
            "info": {"description": f"ADE20K instances from {instance_dir}, class-agnostic"},
            "images": images,
            "categories": [dict(ENTITY_CATEGORY)],
            "annotations": annotations,
        },
    )
    return ConversionSummary(output_file, image_dir, len(images), len(annotations))
