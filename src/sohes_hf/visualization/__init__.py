"""Pictures of SOHES hierarchies: per-depth overlays, a tree diagram and a text tree.

SOHES segments an image into wholes, parts and subparts linked by parent-child relations (paper
section 3.2, ancestor prediction). These functions draw that result for notebooks, the
``sohes segment`` command and the demo; they use numpy and OpenCV only and return new
(H, W, 3) ``uint8`` RGB arrays, never modifying their input.

* :mod:`~sohes_hf.visualization.overlay`: tinted, outlined masks over the image, per depth
  level (:func:`overlay_entities`, :func:`depth_view`, :func:`depth_level_panel`);
* :mod:`~sohes_hf.visualization.tree`: the forest as thumbnails linked by lines
  (:func:`render_tree`) and as indented text (:func:`format_tree`).
"""

from __future__ import annotations

from sohes_hf.visualization.overlay import (
    DEPTH_NAMES,
    as_rgb_image,
    depth_level_panel,
    depth_name,
    depth_view,
    entity_color,
    entity_colors,
    max_depth,
    overlay_entities,
    save_image,
)
from sohes_hf.visualization.tree import format_tree, render_tree

__all__ = [
    "DEPTH_NAMES",
    "as_rgb_image",
    "depth_level_panel",
    "depth_name",
    "depth_view",
    "entity_color",
    "entity_colors",
    "format_tree",
    "max_depth",
    "overlay_entities",
    "render_tree",
    "save_image",
]
