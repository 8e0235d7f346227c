"""Overlays of SOHES entities on their image: per entity, per depth level, side by side.

SOHES segments an image into wholes, parts and subparts linked by parent-child relations (paper
section 3.2, ancestor prediction). These functions draw that result for notebooks, the
``sohes segment`` command and the demo; they use numpy and OpenCV only and return new
(H, W, 3) ``uint8`` RGB arrays, never modifying their input.

Colours: each depth level has its own hue family (wholes warm, parts cool, subparts green,
deeper levels violet), and entities within a level get distinct shades, so both the level and the
individual entity can be read off a picture. Overlays tint only mask pixels and draw outlines
*inside* the masks, so every pixel outside the drawn masks equals the input image.

Entities are the pipeline's dicts or ``SegmentedEntity`` objects (see
:func:`sohes_hf.exporters.as_entity_records`).
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sohes_hf.atomic_io import write_bytes_atomic
from sohes_hf.exporters import EntityRecord, as_entity_records
from sohes_hf.masks import decode_mask

DEPTH_NAMES = ("wholes", "parts", "subparts")
# Centre hue (in [0, 1)) of each depth level's colour family; deeper levels reuse the last one.
_DEPTH_HUES = (0.03, 0.58, 0.33, 0.80)
_HUE_SPREAD = 0.10
_GOLDEN_RATIO = 0.618033988749895
FONT = cv2.FONT_HERSHEY_SIMPLEX


def depth_name(depth: int) -> str:
    """Human name of a depth level: "wholes", "parts", "subparts", then "depth 3", ..."""
    return DEPTH_NAMES[depth] if 0 <= depth < len(DEPTH_NAMES) else f"depth {depth}"


def entity_color(depth: int, rank: int) -> tuple[int, int, int]:
    """RGB colour of the ``rank``-th entity of a depth level.

    Hues stay within ``±_HUE_SPREAD`` of the level's family hue and follow a golden-ratio
    sequence, so neighbours in a level differ; saturation >= 0.65 and value >= 0.8 keep every colour
    far from mid-grey.
    """
    if depth < 0 or rank < 0:
        raise ValueError(f"depth and rank must be >= 0, got depth={depth}, rank={rank}")
    base = _DEPTH_HUES[min(depth, len(_DEPTH_HUES) - 1)]
    offset = ((rank * _GOLDEN_RATIO) % 1.0 - 0.5) * 2.0 * _HUE_SPREAD
    saturation = 0.65 + 0.35 * ((rank * 0.37) % 1.0)
    value = 0.8 + 0.2 * ((rank * 0.53) % 1.0)
    red, green, blue = colorsys.hsv_to_rgb((base + offset) % 1.0, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def entity_colors(records: Sequence[EntityRecord]) -> dict[int, tuple[int, int, int]]:
    """Colour of every entity id, ranked by list order within its depth level."""
    ranks: dict[int, int] = {}
    colors = {}
    for record in records:
        rank = ranks.get(record.depth, 0)
        ranks[record.depth] = rank + 1
        colors[record.id] = entity_color(record.depth, rank)
    return colors


def as_rgb_image(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 RGB copy of a PIL image or an array ((H, W), (H, W, 3) or (H, W, 4)).

    Raises:
        TypeError: ``image`` is neither a PIL image nor an array.
        ValueError: the array has another shape or a non-uint8 dtype.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image: expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected dtype uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise ValueError(f"image: expected shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")


def records_for_image(image: np.ndarray, entities: Iterable[Any]) -> list[EntityRecord]:
    """Reads entities and checks that their masks have the image's (H, W) size."""
    records = as_entity_records(entities)
    for record in records:
        if record.size != image.shape[:2]:
            raise ValueError(
                f"entities: mask size {record.size} differs from the image size {image.shape[:2]}; "
                "masks must be at the original image size"
            )
    return records


def _inner_outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Mask pixels within ``thickness`` pixels of the mask's edge (the image border counts)."""
    padded = np.pad(mask, 1).astype(np.uint8)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=thickness)[1:-1, 1:-1]
    return mask & ~eroded.astype(bool)


def draw_entity(
    canvas: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int],
    alpha: float,
    outline_thickness: int,
) -> None:
    """Tints ``mask`` pixels of ``canvas`` in place and draws an opaque inner outline."""
    tint = np.asarray(color, dtype=np.float32)
    pixels = canvas[mask].astype(np.float32)
    canvas[mask] = np.clip((1.0 - alpha) * pixels + alpha * tint + 0.5, 0, 255).astype(np.uint8)
    if outline_thickness > 0:
        canvas[_inner_outline(mask, outline_thickness)] = np.asarray(color, dtype=np.uint8) // 2 + 64


def overlay_entities(
    image: Any,
    entities: Iterable[Any],
    depths: Iterable[int] | None = None,
    alpha: float = 0.5,
    outline_thickness: int = 1,
) -> np.ndarray:
    """Draws entities over the image: a translucent tint plus an outline per entity.

    Entities are drawn in list order (parents before children), so parts appear on top of the
    wholes that contain them.

    Args:
        image: the original image (PIL or (H, W, 3) uint8 RGB array).
        entities: entities with masks at the image's size.
        depths: draw only these depth levels (e.g. ``[1]`` for parts); ``None`` draws all.
        alpha: tint opacity in [0, 1].
        outline_thickness: outline width in pixels (0 for none).

    Returns:
        (H, W, 3) uint8 RGB; pixels outside the drawn masks equal the input.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if outline_thickness < 0:
        raise ValueError(f"outline_thickness must be >= 0, got {outline_thickness}")
    canvas = as_rgb_image(image)
    records = records_for_image(canvas, entities)
    wanted = None if depths is None else {int(d) for d in depths}
    return _overlay_records(canvas, records, wanted, alpha, outline_thickness)


def _overlay_records(
    image: np.ndarray,
    records: Sequence[EntityRecord],
    wanted: set[int] | None,
    alpha: float,
    outline_thickness: int,
) -> np.ndarray:
    canvas = image.copy()
    colors = entity_colors(records)
    for record in records:
        if wanted is None or record.depth in wanted:
            draw_entity(canvas, decode_mask(record.mask), colors[record.id], alpha, outline_thickness)
    return canvas


def depth_view(
    image: Any, entities: Iterable[Any], depth: int, cumulative: bool = False, alpha: float = 0.5
) -> np.ndarray:
    """Overlay for a depth slider: level ``depth`` only, or levels 0..``depth`` if ``cumulative``.

    Raises:
        ValueError: ``depth`` is negative.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    levels = range(depth + 1) if cumulative else [depth]
    return overlay_entities(image, entities, depths=levels, alpha=alpha)


def max_depth(entities: Iterable[Any]) -> int:
    """Deepest level present (0 when there are only wholes), -1 for no entities."""
    return max((record.depth for record in as_entity_records(entities)), default=-1)


def _with_header(tile: np.ndarray, text: str, height: int = 22) -> np.ndarray:
    header = np.full((height, tile.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(header, text, (4, height - 7), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, tile], axis=0)


def depth_level_panel(
    image: Any,
    entities: Iterable[Any],
    num_levels: int | None = None,
    alpha: float = 0.5,
    outline_thickness: int = 1,
    gap: int = 4,
) -> np.ndarray:
    """Side-by-side tiles: the image, then one overlay per depth level (wholes, parts, ...).

    Args:
        num_levels: how many levels to show; defaults to all levels present (at least one).
        gap: white pixels between tiles.

    Returns:
        (22 + H, (L + 1) * W + L * gap, 3) uint8 RGB, each tile under a labelled header.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    canvas = as_rgb_image(image)
    records = records_for_image(canvas, entities)
    levels = num_levels if num_levels is not None else max(1, max((r.depth for r in records), default=0) + 1)
    if levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {levels}")
    tiles = [_with_header(canvas, "image")]
    for depth in range(levels):
        count = sum(record.depth == depth for record in records)
        overlay = _overlay_records(canvas, records, {depth}, alpha, outline_thickness)
        tiles.append(_with_header(overlay, f"{depth_name(depth)} ({count})"))
    spacer = np.full((tiles[0].shape[0], gap, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        parts.extend([tile, spacer])
    return np.concatenate(parts[:-1], axis=1)


def save_image(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Writes an (H, W, 3) uint8 RGB array atomically; the format follows the suffix (.png, .jpg)."""
    target = Path(path)
    rgb = as_rgb_image(image)
    ok, encoded = cv2.imencode(target.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"path: cannot encode an image as {target.suffix!r} ({target})")
    return write_bytes_atomic(target, encoded.tobytes())
