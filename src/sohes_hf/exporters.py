"""Exporters: SOHES entities as Segment Anything records and as COCO result JSON.

SOHES predicts a *hierarchy* of class-agnostic entities (paper section 3.2: wholes, parts and
subparts linked by the ancestor head). Two formats let existing tooling read them:

* **SAM automatic-mask-generator records** (:func:`to_sam_records`), the list of dicts that
  ``SamAutomaticMaskGenerator.generate`` returns, so scripts written for SAM masks (viewers, mask
  folders, SA-1B style files) consume SOHES output unchanged. Field by field:

  ==================  ==========================================================================
  ``segmentation``    the mask, as compressed COCO RLE (``"coco_rle"``), SAM's uncompressed
                      column-major RLE (``"uncompressed_rle"``) or a (H, W) bool array
                      (``"binary_mask"``), exactly SAM's three ``output_mode`` values.
  ``area``            pixel count of the mask (measured).
  ``bbox``            tight XYWH box in pixels, COCO convention (``w = x_max - x_min + 1``);
                      SAM writes ``x_max - x_min``, one pixel less.
  ``predicted_iou``   **synthesised**: the SOHES entity confidence (the classifier's entity
                      probability). SOHES has no IoU head, so this is a confidence, not an IoU.
  ``point_coords``    **synthesised**: ``[[x, y]]``, the centre of the mask pixel farthest from
                      the mask boundary. SAM reports the grid prompt that produced the mask;
                      SOHES uses no prompts, so an interior point is the closest meaning.
                      ``[]`` for an empty mask.
  ``crop_box``        ``[0, 0, W, H]``: SOHES predicts on the whole image, never on crops.
  ``stability_score`` **omitted**: SAM computes it from mask logits at two thresholds; the
                      pipeline returns binarised masks, so there is nothing honest to put here.
  ==================  ==========================================================================

  Every record also carries the hierarchy as extras: ``id``, ``parent_id``, ``depth``.

* **COCO result JSON** (:func:`to_coco_results`), the detections list that
  ``pycocotools.coco.COCO.loadRes`` and COCOeval read, with ``category_id`` 1 ("entity") and the
  hierarchy as extra keys ``entity_id``, ``parent_id`` (an ``entity_id`` of the same image) and
  ``depth``. No ``bbox`` key is written: with one, ``loadRes`` takes the *box* area as the mask
  area, which would put masks in the wrong AR_S/AR_M/AR_L bucket (paper section 4.1).

Entities may be given as the pipeline's dicts (``mask`` as RLE or bool array) or as
``sohes_hf.structures.SegmentedEntity`` objects; :func:`as_entity_records` reads both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sohes_hf.atomic_io import write_json_atomic
from sohes_hf.masks import decode_mask, encode_mask, mask_areas, mask_boxes_xywh, normalize_rle

SAM_OUTPUT_MODES = ("coco_rle", "uncompressed_rle", "binary_mask")
ENTITY_CATEGORY_ID = 1


@dataclass(frozen=True)
class EntityRecord:
    """One predicted entity in the form the exporters and drawing functions read.

    Attributes:
        id: index of the entity in its image's list.
        mask: compressed COCO RLE ``{"size": [H, W], "counts": str}`` at the original image size.
        score: entity confidence in [0, 1].
        bbox: tight XYWH box in pixels (COCO convention).
        area: mask area in pixels.
        parent_id: ``id`` of the direct parent entity, ``None`` for a whole entity (root).
        depth: 0 for wholes, 1 for parts, 2 for subparts, ... (paper sections 3.1-3.2).
    """

    id: int
    mask: dict[str, Any]
    score: float
    bbox: tuple[float, float, float, float]
    area: int
    parent_id: int | None
    depth: int

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the mask, i.e. of the original image."""
        height, width = self.mask["size"]
        return int(height), int(width)


def _field(entity: Any, name: str, index: int, default: Any = ...) -> Any:
    """Reads ``name`` from a mapping or an object; raises ValueError naming the entity."""
    if isinstance(entity, Mapping):
        if name in entity:
            return entity[name]
    elif hasattr(entity, name):
        return getattr(entity, name)
    if default is ...:
        raise ValueError(f"entities[{index}]: missing field {name!r}")
    return default


def _rle_of(mask: Any, index: int) -> dict[str, Any]:
    if isinstance(mask, Mapping):
        try:
            return normalize_rle(mask)
        except ValueError as error:
            raise ValueError(f"entities[{index}].mask: {error}") from error
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(
            f"entities[{index}].mask: expected an RLE dict or a (H, W) bool array, got shape {array.shape}"
        )
    return encode_mask(array.astype(bool))


def as_entity_records(entities: Iterable[Any]) -> list[EntityRecord]:
    """Reads pipeline dicts or ``SegmentedEntity`` objects into :class:`EntityRecord` objects.

    ``bbox`` and ``area`` are measured from the mask when absent; ``depth`` defaults to the
    parent's depth + 1.

    Raises:
        ValueError: a field is missing or malformed, ids repeat, masks differ in size, or a
            ``parent_id`` names an entity that does not come earlier in the list (parents must
            precede children, as in the pseudo-label files).
    """
    records: list[EntityRecord] = []
    depths: dict[int, int] = {}
    size: tuple[int, int] | None = None
    for index, entity in enumerate(entities):
        entity_id = int(_field(entity, "id", index, index))
        if entity_id in depths:
            raise ValueError(f"entities[{index}]: id {entity_id} is repeated")
        rle = _rle_of(_field(entity, "mask", index), index)
        mask_size = (int(rle["size"][0]), int(rle["size"][1]))
        if size is not None and mask_size != size:
            raise ValueError(f"entities[{index}].mask: size {mask_size} differs from the first mask's {size}")
        size = mask_size
        parent = _field(entity, "parent_id", index, None)
        parent_id = None if parent is None else int(parent)
        if parent_id is not None and parent_id not in depths:
            raise ValueError(
                f"entities[{index}]: parent_id {parent_id} is not the id of an earlier entity "
                "(parents must precede children)"
            )
        default_depth = 0 if parent_id is None else depths[parent_id] + 1
        depth = int(_field(entity, "depth", index, default_depth))
        bbox = _field(entity, "bbox", index, None)
        if bbox is None:
            bbox = mask_boxes_xywh([rle])[0]
        area = _field(entity, "area", index, None)
        if area is None:
            area = mask_areas([rle])[0]
        bbox_values = tuple(float(v) for v in bbox)
        if len(bbox_values) != 4:
            raise ValueError(f"entities[{index}].bbox: expected 4 numbers (XYWH), got {len(bbox_values)}")
        records.append(
            EntityRecord(
                id=entity_id,
                mask=rle,
                score=float(_field(entity, "score", index)),
                bbox=(bbox_values[0], bbox_values[1], bbox_values[2], bbox_values[3]),
                area=int(area),
                parent_id=parent_id,
                depth=depth,
            )
        )
        depths[entity_id] = depth
    return records


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """SAM's uncompressed RLE of a (H, W) bool mask.

    Returns:
        ``{"size": [H, W], "counts": [int, ...]}``: run lengths over the mask read in column-major
        (Fortran) order, starting with a run of zeros (possibly of length 0). This is what
        ``pycocotools.mask.frPyObjects`` accepts.
    """
    array = np.asarray(mask, dtype=bool)
    if array.ndim != 2:
        raise ValueError(f"mask: expected shape (H, W), got {array.shape}")
    flat = array.flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(boundaries).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(array.shape[0]), int(array.shape[1])], "counts": [int(c) for c in counts]}


def interior_point(mask: np.ndarray) -> list[float]:
    """Centre ``[x, y]`` (pixels) of the mask pixel farthest from the mask boundary; ``[]`` if empty.

    The image border counts as boundary, so the point sits well inside the entity.
    """
    array = np.asarray(mask, dtype=bool)
    if not array.any():
        return []
    padded = np.pad(array, 1).astype(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return [float(x) + 0.5, float(y) + 0.5]


def to_sam_records(entities: Iterable[Any], output_mode: str = "coco_rle") -> list[dict[str, Any]]:
    """Turns entities into SAM automatic-mask-generator records (see the module docstring).

    Args:
        entities: pipeline dicts or ``SegmentedEntity`` objects of one image.
        output_mode: ``"coco_rle"`` (JSON-safe), ``"uncompressed_rle"`` or ``"binary_mask"``.

    Returns:
        One dict per entity, in input order.
    """
    if output_mode not in SAM_OUTPUT_MODES:
        raise ValueError(f"output_mode={output_mode!r} is not one of {', '.join(SAM_OUTPUT_MODES)}")
    records = []
    for entity in as_entity_records(entities):
        binary = decode_mask(entity.mask)
        height, width = entity.size
        segmentation: Any
        if output_mode == "coco_rle":
            segmentation = dict(entity.mask)
        elif output_mode == "uncompressed_rle":
            segmentation = uncompressed_rle(binary)
        else:
            segmentation = binary
        records.append(
            {
                "segmentation": segmentation,
                "area": entity.area,
                "bbox": list(entity.bbox),
                "predicted_iou": entity.score,
                "point_coords": [interior_point(binary)] if entity.area > 0 else [],
                "crop_box": [0.0, 0.0, float(width), float(height)],
                "id": entity.id,
                "parent_id": entity.parent_id,
                "depth": entity.depth,
            }
        )
    return records


def to_coco_results(
    entities: Iterable[Any], image_id: int, category_id: int = ENTITY_CATEGORY_ID
) -> list[dict[str, Any]]:
    """Turns one image's entities into COCO segmentation results (see the module docstring).

    Args:
        entities: pipeline dicts or ``SegmentedEntity`` objects of one image.
        image_id: the ``id`` of the image in the ground-truth COCO file.
        category_id: 1, the single class-agnostic "entity" category of the pseudo-label files.

    Returns:
        One dict per entity: ``image_id``, ``category_id``, ``segmentation`` (compressed RLE with
        ``str`` counts), ``score``, ``area`` and the extras ``entity_id``, ``parent_id``, ``depth``.
    """
    if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
        raise TypeError(f"image_id: expected an int, got {type(image_id).__name__}")
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "segmentation": dict(entity.mask),
            "score": entity.score,
            "area": entity.area,
            "entity_id": entity.id,
            "parent_id": entity.parent_id,
            "depth": entity.depth,
        }
        for entity in as_entity_records(entities)
    ]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Writes ``payload`` as JSON atomically (see :func:`write_bytes_atomic`); returns the path.

    numpy arrays and scalars are converted (a ``binary_mask`` segmentation becomes nested lists).
    """
    return write_json_atomic(path, payload, indent=None, default=_json_default)
