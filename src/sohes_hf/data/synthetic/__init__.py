"""Synthetic hierarchical scenes with exact ground truth: a miniature domain for the whole method.

Entities (figures, houses, trees, vehicles, flowers) made of parts and subparts, textured and
noisy, overlapping on cluttered backgrounds; ground-truth masks are the visible pixels and every
child's mask lies within its parent's. See docs/data.md ("Synthetic hierarchical scenes").

Modules: :mod:`.shapes` (textured shapes with an owner map), :mod:`.entities` (templates),
:mod:`.scenes` (composition, visible hierarchy), :mod:`.dataset` (PNG + COCO writing).
"""

from __future__ import annotations

from sohes_hf.data.synthetic.dataset import (
    SyntheticDataset,
    SyntheticSplit,
    make_synthetic_dataset,
    scene_annotations,
)
from sohes_hf.data.synthetic.entities import CATEGORY_NAMES, Palette
from sohes_hf.data.synthetic.scenes import SceneConfig, SyntheticScene, render_scene

__all__ = [
    "CATEGORY_NAMES",
    "Palette",
    "SceneConfig",
    "SyntheticDataset",
    "SyntheticScene",
    "SyntheticSplit",
    "make_synthetic_dataset",
    "render_scene",
    "scene_annotations",
]
