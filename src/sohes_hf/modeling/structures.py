"""Shared result types: one segmented entity of a hierarchy forest, and helpers to walk the forest.

SOHES predicts a *forest* per image (paper section 3.2): roots are whole entities, their
descendants are parts and subparts. Post-processing returns a flat list of
:class:`SegmentedEntity` ordered so that every parent precedes its children; ``parent_id`` and
``children`` are indices into that same list. :func:`entity_tree` gives the nested view.

This is the implementation; :mod:`sohes_hf.structures` is its public import path and re-exports
it. It imports nothing from ``sohes_hf`` so that ``save_pretrained`` can copy it flat into a model
repository next to the image processor (``trust_remote_code=True`` without the package).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SegmentedEntity:
    """One predicted (or pseudo-labelled) entity of an image's hierarchy forest.

    Attributes:
        id: Index of this entity in its image's list (parents precede children).
        mask: COCO RLE ``{"size": [height, width], "counts": str}`` at the target (original
            image) size.
        score: Confidence in [0, 1] (Mask2Former instance score, see ``docs/processing.md``).
        bbox: Tight box ``(x, y, width, height)`` in pixels of the target size.
        area: Number of mask pixels.
        parent_id: ``id`` of the direct parent, ``None`` for a root (whole entity).
        depth: 0 for a root, parent's depth + 1 otherwise.
        children: ``id`` of the direct children, in list order.
    """

    id: int
    mask: dict[str, Any]
    score: float
    bbox: tuple[float, float, float, float]
    area: int
    parent_id: int | None = None
    depth: int = 0
    children: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (for writing results at an I/O boundary)."""
        return {
            "id": self.id,
            "mask": dict(self.mask),
            "score": float(self.score),
            "bbox": [float(v) for v in self.bbox],
            "area": int(self.area),
            "parent_id": self.parent_id,
            "depth": int(self.depth),
            "children": list(self.children),
        }


@dataclass
class EntityNode:
    """Nested view of one entity and its subtree (see :func:`entity_tree`)."""

    entity: SegmentedEntity
    children: list[EntityNode] = field(default_factory=list)


def entity_tree(entities: Sequence[SegmentedEntity]) -> list[EntityNode]:
    """Builds the nested forest view of a flat entity list.

    Args:
        entities: One image's entities, ``entities[k].id == k``, parents before children.

    Returns:
        The root nodes, in list order; each node's ``children`` follow ``entity.children``.

    Raises:
        ValueError: an ``id`` differs from its position, or a ``parent_id`` does not point to an
            earlier entity.
    """
    nodes: list[EntityNode] = []
    roots: list[EntityNode] = []
    for position, entity in enumerate(entities):
        if entity.id != position:
            raise ValueError(f"entities[{position}].id is {entity.id}, expected {position}")
        node = EntityNode(entity)
        nodes.append(node)
        if entity.parent_id is None:
            roots.append(node)
        elif 0 <= entity.parent_id < position:
            nodes[entity.parent_id].children.append(node)
        else:
            raise ValueError(
                f"entities[{position}].parent_id is {entity.parent_id}: parents must precede children"
            )
    return roots
