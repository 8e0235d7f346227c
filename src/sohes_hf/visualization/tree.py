"""The hierarchy of SOHES entities as a picture (mask thumbnails linked by lines) and as text.

Rows are depth levels (paper section 3.2: wholes, parts, subparts); every child is linked to its
parent. Entities are the pipeline's dicts or ``SegmentedEntity`` objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from sohes_hf.exporters import EntityRecord, as_entity_records
from sohes_hf.masks import decode_mask
from sohes_hf.visualization.overlay import FONT, as_rgb_image, draw_entity, entity_colors, records_for_image


def _select_nodes(records: Sequence[EntityRecord], max_nodes: int | None) -> list[EntityRecord]:
    """The ``max_nodes`` shallowest, then highest-scoring, entities; closed under parents.

    Sorting by depth first keeps every parent of a kept child (a parent is one level shallower).
    """
    if max_nodes is None or len(records) <= max_nodes:
        return list(records)
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    ranked = sorted(records, key=lambda r: (r.depth, -r.score, r.id))[:max_nodes]
    kept = {r.id for r in ranked}
    return [r for r in records if r.id in kept]


def _children_map(records: Sequence[EntityRecord]) -> tuple[list[int], dict[int, list[int]]]:
    ids = {r.id for r in records}
    roots: list[int] = []
    children: dict[int, list[int]] = {r.id: [] for r in records}
    for record in records:
        if record.parent_id is None or record.parent_id not in ids:
            roots.append(record.id)
        else:
            children[record.parent_id].append(record.id)
    return roots, children


def format_tree(entities: Iterable[Any], max_nodes: int | None = None) -> str:
    """The hierarchy as indented text, one entity per line, e.g.::

        #0 score=0.97 area=5120 bbox=[4, 8, 80, 64]
        ├── #2 score=0.88 area=900 bbox=[10, 12, 30, 30]
        │   └── #5 score=0.61 area=100 bbox=[14, 16, 10, 10]
        └── #3 score=0.75 area=400 bbox=[50, 20, 20, 20]

    Args:
        max_nodes: keep only this many entities (shallowest, then highest-scoring first).
    """
    records = _select_nodes(as_entity_records(entities), max_nodes)
    by_id = {r.id: r for r in records}
    roots, children = _children_map(records)
    lines: list[str] = []

    def describe(record: EntityRecord) -> str:
        box = ", ".join(f"{v:g}" for v in record.bbox)
        return f"#{record.id} score={record.score:.2f} area={record.area} bbox=[{box}]"

    def walk(node: int, prefix: str, is_last: bool, is_root: bool) -> None:
        connector = "" if is_root else ("└── " if is_last else "├── ")
        lines.append(prefix + connector + describe(by_id[node]))
        child_prefix = prefix if is_root else prefix + ("    " if is_last else "│   ")
        for position, child in enumerate(children[node]):
            walk(child, child_prefix, position == len(children[node]) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return "\n".join(lines)


def _thumbnail(image: np.ndarray, record: EntityRecord, color: tuple[int, int, int], size: int) -> np.ndarray:
    """A square crop around the entity's box with the mask tinted, resized to (size, size, 3)."""
    mask = decode_mask(record.mask)
    x, y, w, h = record.bbox
    side = max(int(np.ceil(max(w, h) * 1.15)) + 2, 4)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(np.floor(cx - side / 2.0)), int(np.floor(cy - side / 2.0))
    tinted = image.copy()
    draw_entity(tinted, mask, color, 0.45, max(1, side // 48))
    pad = side
    bordered = cv2.copyMakeBorder(tinted, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    crop = bordered[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _tidy_columns(roots: list[int], children: dict[int, list[int]]) -> dict[int, float]:
    """Horizontal slot of every node: leaves take consecutive slots, parents centre on children."""
    columns: dict[int, float] = {}
    next_leaf = 0

    def place(node: int) -> None:
        nonlocal next_leaf
        for child in children[node]:
            place(child)
        if children[node]:
            columns[node] = (columns[children[node][0]] + columns[children[node][-1]]) / 2.0
        else:
            columns[node] = float(next_leaf)
            next_leaf += 1

    for root in roots:
        place(root)
    return columns


def render_tree(
    image: Any,
    entities: Iterable[Any],
    thumbnail_size: int = 72,
    max_nodes: int | None = 48,
) -> np.ndarray:
    """Draws the hierarchy as a tree of mask thumbnails linked by lines.

    Each node is a crop of the image around the entity with its mask tinted, framed in the
    entity's colour and labelled ``#id score``; rows are depth levels (wholes on top) and every
    child is linked to its parent.

    Args:
        image: the original image.
        entities: entities with masks at the image's size.
        thumbnail_size: node size in pixels.
        max_nodes: draw at most this many entities (shallowest, then highest-scoring first).

    Returns:
        (H', W', 3) uint8 RGB on a white background.
    """
    if thumbnail_size < 16:
        raise ValueError(f"thumbnail_size must be >= 16, got {thumbnail_size}")
    canvas_image = as_rgb_image(image)
    records = _select_nodes(records_for_image(canvas_image, entities), max_nodes)
    if not records:
        blank = np.full((40, 200, 3), 255, dtype=np.uint8)
        cv2.putText(blank, "no entities", (10, 26), FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        return blank
    colors = entity_colors(records)
    roots, children = _children_map(records)
    columns = _tidy_columns(roots, children)
    rows = {r.id: r.depth for r in records}
    label_height, margin, vertical_gap = 16, 10, 28
    cell_width = thumbnail_size + margin
    row_height = thumbnail_size + label_height + vertical_gap
    width = int((max(columns.values()) + 1) * cell_width + margin)
    height = int((max(rows.values()) + 1) * row_height + margin)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)

    def top_left(node: int) -> tuple[int, int]:
        return int(margin + columns[node] * cell_width), int(margin + rows[node] * row_height)

    for record in records:  # lines first, so thumbnails cover their ends
        if record.parent_id is not None and record.parent_id in columns:
            px, py = top_left(record.parent_id)
            cx, cy = top_left(record.id)
            start = (px + thumbnail_size // 2, py + thumbnail_size + label_height)
            cv2.line(canvas, start, (cx + thumbnail_size // 2, cy), (120, 120, 120), 1, cv2.LINE_AA)
    for record in records:
        x, y = top_left(record.id)
        thumb = _thumbnail(canvas_image, record, colors[record.id], thumbnail_size)
        canvas[y : y + thumbnail_size, x : x + thumbnail_size] = thumb
        cv2.rectangle(canvas, (x, y), (x + thumbnail_size - 1, y + thumbnail_size - 1), colors[record.id], 2)
        label = f"#{record.id} {record.score:.2f}"
        cv2.putText(canvas, label, (x, y + thumbnail_size + 12), FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
