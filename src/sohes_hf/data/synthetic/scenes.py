"""Scene composition: background, clutter, several entities, colour noise; exact visible masks.

A scene is a sky/ground background with unannotated clutter (pebbles, blades, specks close to
the background colour), then entities from :mod:`.entities` placed back to front (larger
``bottom``, i.e. nearer the viewer, drawn later), so nearer entities occlude farther ones. The
canvas's owner map is exact, so every node's mask is the set of pixels it still *shows*; a
node's mask is the union of its own pixels and its descendants', hence lies within its parent's.
Colour softening (Gaussian blur) and per-pixel noise are applied to the finished image only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from sohes_hf.data.synthetic.entities import TEMPLATES, NodeTree, Palette, Placement
from sohes_hf.data.synthetic.shapes import Canvas, Texture, jitter_lab, lab_to_rgb, random_texture


@dataclass(frozen=True)
class SceneConfig:
    """How synthetic scenes are drawn; invalid values raise ``ValueError`` naming the field.

    Attributes:
        image_size: side of the square images in pixels (>= 32).
        min_entities: fewest entities per scene (>= 1).
        max_entities: most entities per scene (>= min_entities).
        min_scale: smallest entity height as a fraction of the image side.
        max_scale: largest entity height as a fraction of the image side (<= 1).
        num_clutter: (low, high) number of unannotated clutter shapes per scene.
        entity_contrast: least Lab distance between an entity's base colour and the background.
        palette: Lab distances between a part and its entity, and a subpart and its part.
        noise_std: per-pixel Gaussian colour noise (RGB units, 0-255).
        blur_sigma: Gaussian blur of the colours before the noise (pixels; 0 for none).
        min_area: masks with fewer visible pixels are dropped with their descendants.
    """

    image_size: int = 256
    min_entities: int = 2
    max_entities: int = 5
    min_scale: float = 0.2
    max_scale: float = 0.65
    num_clutter: tuple[int, int] = (10, 40)
    entity_contrast: float = 40.0
    palette: Palette = field(default_factory=Palette)
    noise_std: float = 4.0
    blur_sigma: float = 0.6
    min_area: int = 16

    def __post_init__(self) -> None:
        for name, minimum in (("image_size", 32), ("min_entities", 1), ("min_area", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
        if self.max_entities < self.min_entities:
            raise ValueError(
                f"max_entities: must be >= min_entities ({self.min_entities}), got {self.max_entities}"
            )
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError(
                "min_scale/max_scale: need 0 < min_scale <= max_scale <= 1, "
                f"got {self.min_scale}, {self.max_scale}"
            )
        low, high = self.num_clutter
        if not 0 <= low <= high:
            raise ValueError(f"num_clutter: need 0 <= low <= high, got {self.num_clutter}")
        for name in ("entity_contrast", "noise_std", "blur_sigma"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SyntheticScene:
    """One rendered scene and its exact hierarchical ground truth, parents before children.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool visible masks.
        names: category name of each mask (``kind[:part[:subpart]]``).
        parents: index of each mask's parent in ``masks``, -1 for a whole entity.
        depths: 0 for a whole entity, 1 for a part, 2 for a subpart, ...
    """

    image: np.ndarray
    masks: np.ndarray
    names: tuple[str, ...]
    parents: np.ndarray
    depths: np.ndarray


def render_scene(config: SceneConfig, rng: np.random.Generator) -> SyntheticScene:
    """Draws one scene with ``rng`` (same generator state -> same scene, bit for bit)."""
    size = config.image_size
    background, sky, ground, horizon = _background(size, rng)
    canvas = Canvas(background)
    _clutter(canvas, rng, config, horizon)
    tree = NodeTree()
    num_entities = int(rng.integers(config.min_entities, config.max_entities + 1))
    placements = []
    for _ in range(num_entities):
        kind = str(rng.choice(sorted(TEMPLATES)))
        height = size * rng.uniform(config.min_scale, config.max_scale)
        aspect = TEMPLATES[kind][1]
        half_width = min(0.5 * aspect * height, 0.5 * size)
        x = rng.uniform(half_width, size - half_width)
        bottom = rng.uniform(max(horizon + 0.15 * height, height), size * 1.02)
        placements.append((bottom, kind, Placement(x=x, bottom=bottom, height=height)))
    placements.sort(key=lambda item: item[0])  # back to front
    for _, kind, placement in placements:
        base = _entity_color(rng, (sky, ground), config.entity_contrast)
        TEMPLATES[kind][0](canvas, tree, rng, placement, base, config.palette)
    image = _finish(canvas.lab, config, rng)
    masks, names, parents, depths = visible_hierarchy(canvas.owner, tree, config.min_area)
    return SyntheticScene(image=image, masks=masks, names=names, parents=parents, depths=depths)


def visible_hierarchy(
    owner: np.ndarray, tree: NodeTree, min_area: int
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, np.ndarray]:
    """Visible masks of the tree's nodes, pruned, in pre-order (parents first).

    A node's mask is every pixel owned by the node or a descendant. Nodes with fewer than
    ``min_area`` visible pixels are dropped with their subtree (a child is never larger than its
    parent). A node whose mask equals its parent's (the rest of the parent is hidden) is dropped
    and its children attach to the parent, so no two linked masks are identical.

    Returns:
        ``(masks (N, H, W) bool, names, parents (N,) int64, depths (N,) int64)``.
    """
    num_nodes = len(tree.names)
    children: list[list[int]] = [[] for _ in range(num_nodes)]
    roots: list[int] = []
    for node, parent in enumerate(tree.parents):
        (children[parent] if parent >= 0 else roots).append(node)
    counts = np.bincount(owner.ravel() + 1, minlength=num_nodes + 1)[1:]
    subtree: list[list[int]] = [[] for _ in range(num_nodes)]
    for node in reversed(range(num_nodes)):  # children have larger ids than their parents
        subtree[node] = [node, *(d for c in children[node] for d in subtree[c])]
    masks: list[np.ndarray] = []
    names: list[str] = []
    parents: list[int] = []
    depths: list[int] = []

    def visit(node: int, parent_index: int, parent_area: int) -> None:
        area = int(counts[subtree[node]].sum())
        if area < min_area:
            return
        index = parent_index
        if area != parent_area:  # same area as its parent and inside it: the same mask
            lookup = np.zeros(num_nodes + 1, dtype=bool)
            lookup[np.asarray(subtree[node]) + 1] = True
            masks.append(lookup[owner + 1])
            names.append(tree.names[node])
            parents.append(parent_index)
            depths.append(0 if parent_index < 0 else depths[parent_index] + 1)
            index = len(masks) - 1
        for child in children[node]:
            visit(child, index, area)

    for root in roots:
        visit(root, -1, -1)
    stack = np.stack(masks) if masks else np.zeros((0, *owner.shape), dtype=bool)
    return stack, tuple(names), np.asarray(parents, dtype=np.int64), np.asarray(depths, dtype=np.int64)


def _background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A sky-over-ground Lab background with gradients and textured ground; returns colours too."""
    sky = np.array([rng.uniform(55, 92), rng.uniform(-25, 15), rng.uniform(-45, 5)])
    ground = np.array([rng.uniform(25, 70), rng.uniform(-40, 25), rng.uniform(-5, 45)])
    horizon = float(rng.uniform(0.3, 0.6) * size)
    ys = np.arange(size, dtype=np.float32)[:, None, None]
    sky_gradient = sky + np.array([-12.0, 0.0, 6.0]) * (ys / size)
    ground_gradient = ground + np.array([8.0, 0.0, 0.0]) * ((ys - horizon) / size)
    lab = np.where(ys < horizon, sky_gradient, ground_gradient)
    lab = np.broadcast_to(lab, (size, size, 3)).astype(np.float32)
    noise_rng = np.random.default_rng(int(rng.integers(2**31)))
    coarse = noise_rng.normal(size=(size // 8 + 1, size // 8 + 1)).astype(np.float32)
    field_ = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    lab = lab.copy()
    lab[..., 0] += np.where(ys[..., 0] >= horizon, 4.0 * field_, 1.5 * field_)
    return lab, sky, ground, horizon


def _clutter(canvas: Canvas, rng: np.random.Generator, config: SceneConfig, horizon: float) -> None:
    """Unannotated clutter: small shapes a little off the local background colour."""
    size = config.image_size
    for _ in range(int(rng.integers(config.num_clutter[0], config.num_clutter[1] + 1))):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        local = canvas.lab[min(int(y), size - 1), min(int(x), size - 1)]
        color = jitter_lab(local, rng.uniform(6.0, 18.0), rng)
        extent = rng.uniform(0.008, 0.04) * size
        texture = random_texture(rng, 6.0) if rng.random() < 0.3 else Texture()
        if y >= horizon and rng.random() < 0.5:  # blades of grass / twigs
            angle = rng.uniform(-0.5, 0.5) - math.pi / 2
            end = (x + 2.5 * extent * math.cos(angle), y + 2.5 * extent * math.sin(angle))
            canvas.limb(-1, (x, y), end, 1.0, color, texture)
        else:  # pebbles, specks, clouds
            canvas.ellipse(
                -1, (x, y), (extent, extent * rng.uniform(0.4, 1.0)), rng.uniform(0, 180), color, texture
            )


def _entity_color(rng: np.random.Generator, avoid: tuple[np.ndarray, ...], contrast: float) -> np.ndarray:
    """A base Lab colour at least ``contrast`` away from the colours in ``avoid`` (20 tries)."""
    color = np.zeros(3)
    for _ in range(20):
        color = np.array([rng.uniform(25, 85), rng.uniform(-65, 65), rng.uniform(-65, 65)])
        if all(np.linalg.norm(color - other) >= contrast for other in avoid):
            break
    return color


def _finish(lab: np.ndarray, config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Lab canvas -> uint8 RGB with a slight blur and per-pixel noise."""
    rgb = lab_to_rgb(lab)
    if config.blur_sigma > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), config.blur_sigma)
    if config.noise_std > 0:
        rgb = rgb + np.float32(config.noise_std) * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
