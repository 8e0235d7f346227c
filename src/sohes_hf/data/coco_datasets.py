"""COCO-style instance annotations as class-agnostic ground truth (paper section 4, appendix D).

SOHES is evaluated class-agnostically on COCO, LVIS, ADE20K, EntitySeg, SA-1B (entities) and
PartImageNet, PACO (parts): every annotated mask is ground truth whatever its category. This
module reads any COCO-style instance JSON plus its image folder into typed per-image records with
compressed RLE masks (polygons and uncompressed RLE converted with pycocotools). Crowd regions
keep ``iscrowd`` so the COCO evaluation can ignore detections matched to them.

LVIS/PACO image entries carry ``coco_url`` instead of ``file_name``; the file name is then taken as
the last two URL parts (``val2017/000000397133.jpg``), relative to a COCO root folder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from pycocotools import mask as mask_utils

from sohes_hf.data.strict_json import loads_finite
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

ENTITY_CATEGORY = {"id": 1, "name": "entity"}


@dataclass(frozen=True)
class GroundTruthImage:
    """Class-agnostic ground truth of one image.

    Attributes:
        image_path: where the image file is expected (``image_dir / file_name``).
        masks: COCO RLE ``{"size": [height, width], "counts": str}`` per annotation.
        iscrowd: per annotation, True for crowd regions (matched detections are ignored).
        annotation_ids: the source JSON's annotation ids, in the order of ``masks``.
    """

    image_id: int
    file_name: str
    image_path: Path
    width: int
    height: int
    masks: tuple[dict[str, Any], ...]
    iscrowd: tuple[bool, ...]
    annotation_ids: tuple[int, ...]


@dataclass
class CocoGroundTruth(Sequence[GroundTruthImage]):
    """A class-agnostic evaluation set: images in the JSON's order.

    Attributes:
        num_skipped_annotations: annotations dropped because their polygons were degenerate
            (fewer than 3 points), counted and logged.
    """

    annotation_file: Path
    image_dir: Path
    images: list[GroundTruthImage]
    num_skipped_annotations: int = 0

    def __len__(self) -> int:
        return len(self.images)

    @overload
    def __getitem__(self, index: int) -> GroundTruthImage: ...

    @overload
    def __getitem__(self, index: slice) -> list[GroundTruthImage]: ...

    def __getitem__(self, index: int | slice) -> GroundTruthImage | list[GroundTruthImage]:
        return self.images[index]

    def __iter__(self) -> Iterator[GroundTruthImage]:
        return iter(self.images)

    def to_coco_dict(self) -> dict[str, Any]:
        """The set as a class-agnostic COCO JSON dict (one ``entity`` category) for pycocotools."""
        return ground_truth_to_coco(self.images)


def ground_truth_to_coco(images: Sequence[GroundTruthImage]) -> dict[str, Any]:
    """COCO JSON dict of class-agnostic images: area and XYWH bbox computed from the RLE."""
    annotations = []
    for image in images:
        for rle, crowd, annotation_id in zip(image.masks, image.iscrowd, image.annotation_ids, strict=True):
            encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image.image_id,
                    "category_id": ENTITY_CATEGORY["id"],
                    "segmentation": rle,
                    "area": int(mask_utils.area(encoded)),
                    "bbox": [float(v) for v in mask_utils.toBbox(encoded)],
                    "iscrowd": int(crowd),
                }
            )
    return {
        "info": {"description": "class-agnostic ground truth (sohes-hf)"},
        "images": [
            {"id": im.image_id, "file_name": im.file_name, "width": im.width, "height": im.height}
            for im in images
        ],
        "categories": [dict(ENTITY_CATEGORY)],
        "annotations": annotations,
    }


def segmentation_to_rle(segmentation: Any, height: int, width: int, where: str) -> dict[str, Any] | None:
    """Compressed RLE (str counts) of a COCO ``segmentation`` of any of its three forms.

    Args:
        segmentation: polygons ``[[x0, y0, x1, y1, ...], ...]``, uncompressed RLE
            (``counts`` list) or compressed RLE (``counts`` str/bytes).
        where: names the annotation in error messages.

    Returns:
        The RLE, or None when every polygon has fewer than 3 points.

    Raises:
        ValueError: an unknown form, an RLE whose size differs from the image, or a polygon
            that pycocotools must not see (see :func:`check_polygon`).
    """
    if isinstance(segmentation, list):
        for number, polygon in enumerate(segmentation):
            check_polygon(polygon, height, width, f"{where}: polygon {number}")
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(s) for s in segmentation["size"]] != [height, width]:
            raise ValueError(
                f"{where}: RLE size {segmentation['size']} differs from image [{height}, {width}]"
            )
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {
                "size": [height, width],
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        else:
            raise ValueError(f"{where}: RLE counts must be a list, str or bytes")
    else:
        raise ValueError(f"{where}: segmentation must be polygons or an RLE dict")
    counts = rle["counts"]
    return {
        "size": [height, width],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def check_polygon(polygon: Any, height: int, width: int, where: str) -> None:
    """Refuses a polygon before pycocotools ``frPyObjects`` sees it.

    pycocotools casts coordinates to C doubles and rasterises unchecked: a coordinate of 1e308
    crashes the process (segfault) and NaN gives an arbitrary mask. A polygon must be a list of
    an even number of finite coordinates within ``[-size, 2 * size]`` of the image (a little
    outside the frame is legal COCO, far outside is corrupt). Fewer than 6 coordinates
    (degenerate, fewer than 3 points) pass here and are skipped and counted by the caller.

    Raises:
        ValueError: naming ``where`` and what is wrong.
    """
    if not isinstance(polygon, list):
        raise ValueError(f"{where}: a polygon must be a list of x, y numbers, got {type(polygon).__name__}")
    if len(polygon) % 2:
        raise ValueError(f"{where}: a polygon needs x, y pairs (an even count), got {len(polygon)} numbers")
    limit = 2 * max(height, width)
    for k, value in enumerate(polygon):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: coordinate {k} must be a number, got {value!r}; fix or drop it")
        if not math.isfinite(value) or not -limit / 2 <= value <= limit:
            raise ValueError(
                f"{where}: coordinate {k} = {value!r} is not finite or lies far outside the "
                f"{width}x{height} image (allowed [-{limit // 2}, {limit}]); fix or drop the polygon"
            )


def _file_name(image: dict[str, Any], where: str) -> str:
    if isinstance(image.get("file_name"), str):
        return str(image["file_name"])
    if isinstance(image.get("coco_url"), str):
        return "/".join(image["coco_url"].rstrip("/").split("/")[-2:])
    raise ValueError(f"{where}: needs 'file_name' or 'coco_url'")


def read_coco_json(path: Path, name: str) -> dict[str, Any]:
    """Parses a COCO-style JSON file; ValueError naming it (``name``) when it is not one."""
    data = loads_finite(path.read_text(encoding="utf-8"), name)  # 1e400 refused, not read as inf
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{name}: expected a COCO JSON object with an 'images' list")
    return data


def load_coco_ground_truth(
    annotation_file: str | Path, image_dir: str | Path, *, check_images_exist: bool = True
) -> CocoGroundTruth:
    """Reads a COCO-style instance JSON as class-agnostic ground truth.

    Args:
        annotation_file: COCO, LVIS, EntitySeg, PartImageNet or PACO JSON (or one written by
            :mod:`sohes_hf.data.converters`).
        image_dir: folder the images' ``file_name`` is relative to.
        check_images_exist: raise if an image file is missing (off to inspect annotations only).

    Raises:
        FileNotFoundError: the JSON, the folder or (with ``check_images_exist``) an image is missing.
        ValueError: the JSON is not COCO-style; the message names the image or annotation.
    """
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"annotation file {annotation_file} does not exist")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist")
    data = read_coco_json(annotation_file, str(annotation_file))
    sizes: dict[int, tuple[int, int]] = {}
    per_image: dict[int, list[tuple[dict[str, Any], bool, int]]] = {}
    for number, image in enumerate(data["images"]):
        where = f"{annotation_file}: images[{number}]"
        if not all(key in image for key in ("id", "width", "height")):
            raise ValueError(f"{where}: needs id, width and height")
        sizes[int(image["id"])] = (int(image["height"]), int(image["width"]))
        per_image[int(image["id"])] = []
    skipped = 0
    for number, annotation in enumerate(data.get("annotations", [])):
        where = f"{annotation_file}: annotations[{number}] (id {annotation.get('id')!r})"
        image_id = int(annotation.get("image_id", -1))
        if image_id not in sizes:
            raise ValueError(f"{where}: image_id {image_id} is not in 'images'")
        if "segmentation" not in annotation:
            raise ValueError(f"{where}: no 'segmentation'")
        rle = segmentation_to_rle(annotation["segmentation"], *sizes[image_id], where)
        if rle is None:
            skipped += 1
            continue
        annotation_id = int(annotation.get("id", number + 1))
        per_image[image_id].append((rle, bool(annotation.get("iscrowd", 0)), annotation_id))
    if skipped:
        logger.warning("%s: skipped %d annotations with degenerate polygons", annotation_file, skipped)
    images = []
    for number, image in enumerate(data["images"]):
        file_name = _file_name(image, f"{annotation_file}: images[{number}]")
        image_path = image_dir / file_name
        if check_images_exist and not image_path.is_file():
            raise FileNotFoundError(f"image {image_path} (image id {image['id']}) does not exist")
        entries = per_image[int(image["id"])]
        images.append(
            GroundTruthImage(
                image_id=int(image["id"]),
                file_name=file_name,
                image_path=image_path,
                width=int(image["width"]),
                height=int(image["height"]),
                masks=tuple(e[0] for e in entries),
                iscrowd=tuple(e[1] for e in entries),
                annotation_ids=tuple(e[2] for e in entries),
            )
        )
    return CocoGroundTruth(annotation_file, image_dir, images, num_skipped_annotations=skipped)
