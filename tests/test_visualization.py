"""Drawing functions of sohes_hf.visualization on synthetic entities with a known hierarchy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from sohes_hf.masks import encode_mask
from sohes_hf.structures import SegmentedEntity
from sohes_hf.visualization import (
    depth_level_panel,
    depth_view,
    entity_color,
    format_tree,
    max_depth,
    overlay_entities,
    render_tree,
    save_image,
)

HEIGHT, WIDTH = 48, 64


def _box(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


# id: (mask, parent, score). Whole 0 has part 1 with subpart 2; whole 3 has part 4.
_LAYOUT = {
    0: (_box(4, 4, 40, 36), None, 0.95),
    1: (_box(8, 8, 24, 24), 0, 0.80),
    2: (_box(10, 10, 16, 16), 1, 0.60),
    3: (_box(10, 40, 30, 60), None, 0.90),
    4: (_box(12, 44, 20, 56), 3, 0.70),
}


def synthetic_entities(binary: bool = False) -> list[dict[str, Any]]:
    entities = []
    for entity_id, (mask, parent, score) in _LAYOUT.items():
        depth = 0 if parent is None else entities[parent]["depth"] + 1
        entities.append(
            {
                "id": entity_id,
                "mask": mask if binary else encode_mask(mask),
                "score": score,
                "parent_id": parent,
                "depth": depth,
            }
        )
    return entities


def _grey() -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)


def test_overlay_changes_exactly_the_mask_pixels() -> None:
    image = _grey()
    union = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for mask, _, _ in _LAYOUT.values():
        union |= mask
    overlay = overlay_entities(image, synthetic_entities())
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    changed = (overlay != image).any(axis=2)
    np.testing.assert_array_equal(changed, union)
    np.testing.assert_array_equal(image, _grey())  # the input is not modified


def test_overlay_of_one_depth_level_and_input_types() -> None:
    parts_only = overlay_entities(Image.fromarray(_grey()), synthetic_entities(binary=True), depths=[1])
    changed = (parts_only != _grey()).any(axis=2)
    np.testing.assert_array_equal(changed, _LAYOUT[1][0] | _LAYOUT[4][0])
    as_dataclasses = [
        SegmentedEntity(
            id=e["id"],
            mask=e["mask"],
            score=e["score"],
            bbox=(0, 0, 0, 0),
            area=0,
            parent_id=e["parent_id"],
            depth=e["depth"],
        )
        for e in synthetic_entities()
    ]
    np.testing.assert_array_equal(overlay_entities(_grey(), as_dataclasses, depths=[1]), parts_only)


def test_depth_view_for_a_slider() -> None:
    entities = synthetic_entities()
    np.testing.assert_array_equal(depth_view(_grey(), entities, 1), overlay_entities(_grey(), entities, [1]))
    upto = depth_view(_grey(), entities, 1, cumulative=True)
    np.testing.assert_array_equal(upto, overlay_entities(_grey(), entities, [0, 1]))
    np.testing.assert_array_equal(depth_view(_grey(), entities, 5), _grey())  # no such level: unchanged
    with pytest.raises(ValueError, match="depth"):
        depth_view(_grey(), entities, -1)


def test_depth_levels_get_distinct_colour_families() -> None:
    wholes = {entity_color(0, rank) for rank in range(5)}
    parts = {entity_color(1, rank) for rank in range(5)}
    assert len(wholes) == 5 and len(parts) == 5 and not wholes & parts
    # Within-level colours stay far from mid-grey so tints are always visible.
    assert all(max(abs(c - 128) for c in colour) > 60 for colour in wholes | parts)


def test_depth_level_panel_layout() -> None:
    panel = depth_level_panel(_grey(), synthetic_entities(), gap=4)
    levels = max_depth(synthetic_entities()) + 1
    assert levels == 3
    assert panel.shape == (22 + HEIGHT, (levels + 1) * WIDTH + levels * 4, 3)
    first_tile = panel[22:, :WIDTH]
    np.testing.assert_array_equal(first_tile, _grey())
    subparts_tile = panel[22:, 3 * (WIDTH + 4) : 3 * (WIDTH + 4) + WIDTH]
    np.testing.assert_array_equal((subparts_tile != _grey()).any(axis=2), _LAYOUT[2][0])


def test_format_tree_follows_parent_links() -> None:
    lines = format_tree(synthetic_entities()).splitlines()
    assert [line.split(" score")[0] for line in lines] == [
        "#0",
        "└── #1",
        "    └── #2",
        "#3",
        "└── #4",
    ]
    assert "bbox=[4, 4, 32, 36]" in lines[0]
    short = format_tree(synthetic_entities(), max_nodes=3).splitlines()
    # Both wholes, then the best part (#1 scores 0.80 > #4's 0.70).
    assert [line.split(" score")[0] for line in short] == ["#0", "└── #1", "#3"]


def test_render_tree_draws_one_row_per_depth(tmp_path: Any) -> None:
    picture = render_tree(_grey(), synthetic_entities(), thumbnail_size=32)
    assert picture.dtype == np.uint8 and picture.ndim == 3
    # Leaves #2 and #4 take one column each; rows are depths 0, 1, 2.
    cell, row = 32 + 10, 32 + 16 + 28
    assert picture.shape[1] == 2 * cell + 10
    assert picture.shape[0] == 3 * row + 10
    assert (picture != 255).any()
    path = save_image(tmp_path / "tree.png", picture)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="image size"):
        overlay_entities(np.zeros((10, 10, 3), dtype=np.uint8), synthetic_entities())
    with pytest.raises(ValueError, match="alpha"):
        overlay_entities(_grey(), synthetic_entities(), alpha=2.0)
    with pytest.raises(TypeError, match="image"):
        overlay_entities("not an image", synthetic_entities())
    with pytest.raises(ValueError, match="parent_id 7"):
        overlay_entities(
            _grey(), [{"id": 0, "mask": encode_mask(_LAYOUT[0][0]), "score": 1.0, "parent_id": 7}]
        )
