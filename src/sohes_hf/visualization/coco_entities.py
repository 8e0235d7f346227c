"""COCO annotations of one image as the entity dicts the drawing functions read.

Pseudo-labels from ``sohes explore`` (paper section 3.1), predictions saved by ``sohes evaluate``
and plain COCO ground truth all store masks as COCO ``segmentation`` (RLE or polygons), and a
hierarchy, when there is one, as ``parent_id`` links between annotation ids. The pictures of
:mod:`sohes_hf.visualization` want the pipeline's entity dicts with parents before children, so
:func:`entities_from_annotations` converts, measuring each entity's depth from its links (a file
without links draws every mask as a whole entity).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sohes_hf.data.coco_datasets import segmentation_to_rle


def entities_from_annotations(
    annotations: Sequence[Mapping[str, Any]], height: int, width: int
) -> list[dict[str, Any]]:
    """Entity dicts (``id``, ``mask``, ``score``, ``parent_id``, ``depth``) of one image, parents first.

    Args:
        annotations: the image's COCO annotations or results (``segmentation`` as compressed or
            uncompressed RLE, or polygons; ``id``, ``parent_id`` and ``score`` optional).
        height, width: the image size in pixels (polygons are rasterised at it).

    Returns:
        Entities ordered by depth, then file order; ``mask`` is a compressed RLE with ``str``
        counts. A ``parent_id`` naming no annotation of the image is dropped (the entity becomes
        a whole); ``score`` defaults to 1.0 (pseudo-labels are all equally confident).

    Raises:
        ValueError: an annotation has no or a malformed ``segmentation`` (see
            :func:`~sohes_hf.data.coco_datasets.segmentation_to_rle`), a mask of another size, an
            id used twice, or parent links that form a cycle; the message names the annotation.
    """
    by_id: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for index, annotation in enumerate(annotations):
        entity_id = int(annotation.get("id", index))
        if entity_id in by_id:
            raise ValueError(f"annotation id {entity_id} is used twice in one image")
        parent = annotation.get("parent_id")
        rle = segmentation_to_rle(annotation.get("segmentation"), height, width, f"annotation {entity_id}")
        if rle is None:  # only degenerate polygons (fewer than 3 points): nothing to draw
            continue
        by_id[entity_id] = {
            "id": entity_id,
            "mask": rle,
            "score": float(annotation.get("score", 1.0)),
            "parent_id": None if parent is None else int(parent),
        }
        order.append(entity_id)
    for entity in by_id.values():
        if entity["parent_id"] not in by_id:
            entity["parent_id"] = None
    depths = {entity_id: _depth(entity_id, by_id) for entity_id in order}
    ranked = sorted(range(len(order)), key=lambda position: (depths[order[position]], position))
    return [{**by_id[order[position]], "depth": depths[order[position]]} for position in ranked]


def _depth(entity_id: int, by_id: Mapping[int, Mapping[str, Any]]) -> int:
    """Number of ancestors of ``entity_id`` following ``parent_id``; ValueError on a cycle."""
    depth = 0
    seen = {entity_id}
    parent = by_id[entity_id]["parent_id"]
    while parent is not None:
        if parent in seen:
            raise ValueError(f"annotation {entity_id}: parent_id links form a cycle")
        seen.add(parent)
        depth += 1
        parent = by_id[parent]["parent_id"]
    return depth
