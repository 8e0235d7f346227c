"""Entity templates of the synthetic scenes: wholes made of parts and subparts.

Each template paints one entity onto a :class:`~.shapes.Canvas` and records its hierarchy in a
:class:`NodeTree`: the entity is a root (depth 0), its parts are children (depth 1) and their
subparts grandchildren (depth 2, the house's door knob depth 3). Only leaf-level shapes own
pixels; a node's visible mask is the union of what its own shapes and its descendants' shapes
still show (see :mod:`.scenes`), so a child's mask always lies within its parent's.

Colours follow the hierarchy: an entity has a base Lab colour, each part is the base moved by a
random perceptual distance ``part_distance`` and each subpart its part moved by
``subpart_distance``. Real objects are often like this (a car's parts share its paint, a window
differs from its wall less than the house differs from the sky) and it is what lets appearance
features find wholes, parts and subparts at different merge thresholds (docs/data.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sohes_hf.data.synthetic.shapes import Canvas, jitter_lab, random_texture

#: Every category name a template can emit, ``kind[:part[:subpart]]``; ids are 1 + the index.
CATEGORY_NAMES: tuple[str, ...] = (
    "figure",
    "figure:head",
    "figure:head:eye",
    "figure:torso",
    "figure:torso:badge",
    "figure:arm",
    "figure:leg",
    "house",
    "house:roof",
    "house:chimney",
    "house:walls",
    "house:walls:window",
    "house:walls:door",
    "house:walls:door:knob",
    "tree",
    "tree:trunk",
    "tree:crown",
    "tree:crown:fruit",
    "vehicle",
    "vehicle:body",
    "vehicle:body:window",
    "vehicle:body:light",
    "vehicle:wheel",
    "vehicle:wheel:hubcap",
    "flower",
    "flower:stem",
    "flower:leaf",
    "flower:blossom",
    "flower:blossom:centre",
)


@dataclass
class NodeTree:
    """The hierarchy nodes drawn so far: category name and parent node (-1 for a root)."""

    names: list[str] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)

    def add(self, name: str, parent: int = -1) -> int:
        """Adds a node; returns its id (its index)."""
        if name not in CATEGORY_NAMES:
            raise ValueError(f"name: {name!r} is not in CATEGORY_NAMES")
        self.names.append(name)
        self.parents.append(parent)
        return len(self.names) - 1


@dataclass(frozen=True)
class Palette:
    """Perceptual (Lab) distances between the colours of a node and its parent."""

    part_distance: tuple[float, float] = (26.0, 40.0)
    subpart_distance: tuple[float, float] = (26.0, 40.0)
    max_texture_amplitude: float = 12.0

    def part(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return jitter_lab(base, rng.uniform(*self.part_distance), rng)

    def subpart(self, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return jitter_lab(part, rng.uniform(*self.subpart_distance), rng)


@dataclass(frozen=True)
class Placement:
    """Where an entity goes: horizontal centre and bottom (pixels), overall height (pixels)."""

    x: float
    bottom: float
    height: float


EntityTemplate = Callable[[Canvas, NodeTree, np.random.Generator, Placement, np.ndarray, Palette], int]


def draw_figure(
    canvas: Canvas,
    tree: NodeTree,
    rng: np.random.Generator,
    at: Placement,
    base: np.ndarray,
    palette: Palette,
) -> int:
    """A stick-and-blob figure: head (eyes), torso (badge), two arms, two legs."""
    h, x, b = at.height, at.x, at.bottom
    root = tree.add("figure")
    limb_color = palette.part(base, rng)
    thickness = max(2.0, 0.07 * h)
    for side in (-1, 1):
        leg = tree.add("figure:leg", root)
        canvas.limb(
            leg,
            (x + side * 0.06 * h, b - 0.4 * h),
            (x + side * rng.uniform(0.08, 0.16) * h, b),
            thickness,
            limb_color,
            random_texture(rng, palette.max_texture_amplitude),
        )
    for side in (-1, 1):
        arm = tree.add("figure:arm", root)
        angle = rng.uniform(-0.9, 0.9)
        shoulder = (x + side * 0.12 * h, b - 0.72 * h)
        hand = (shoulder[0] + side * 0.3 * h * math.cos(angle), shoulder[1] + 0.3 * h * math.sin(angle))
        canvas.limb(
            arm, shoulder, hand, thickness, limb_color, random_texture(rng, palette.max_texture_amplitude)
        )
    torso = tree.add("figure:torso", root)
    torso_color = palette.part(base, rng)
    canvas.ellipse(
        torso,
        (x, b - 0.58 * h),
        (0.15 * h, 0.2 * h),
        0.0,
        torso_color,
        random_texture(rng, palette.max_texture_amplitude),
    )
    if rng.random() < 0.5:
        badge = tree.add("figure:torso:badge", torso)
        canvas.box(
            badge,
            (x + rng.uniform(-0.05, 0.05) * h, b - 0.62 * h),
            (0.09 * h, 0.07 * h),
            0.0,
            palette.subpart(torso_color, rng),
            random_texture(rng, palette.max_texture_amplitude),
        )
    head = tree.add("figure:head", root)
    head_color = palette.part(base, rng)
    radius = 0.11 * h
    head_center = (x, b - h + radius)
    canvas.ellipse(
        head,
        head_center,
        (radius, radius),
        0.0,
        head_color,
        random_texture(rng, palette.max_texture_amplitude * 0.5),
    )
    if radius >= 6:
        eye_color = palette.subpart(head_color, rng)
        for side in (-1, 1):
            eye = tree.add("figure:head:eye", head)
            eye_r = max(1.5, 0.22 * radius)
            canvas.ellipse(
                eye,
                (head_center[0] + side * 0.4 * radius, head_center[1] - 0.1 * radius),
                (eye_r, eye_r),
                0.0,
                eye_color,
                random_texture(rng, 0.0),
            )
    return root


def draw_house(
    canvas: Canvas,
    tree: NodeTree,
    rng: np.random.Generator,
    at: Placement,
    base: np.ndarray,
    palette: Palette,
) -> int:
    """A house: walls (windows, a door with a knob), a roof and a chimney."""
    h, x, b = at.height, at.x, at.bottom
    width = rng.uniform(0.8, 1.3) * h
    wall_top = b - 0.58 * h
    root = tree.add("house")
    roof_color = palette.part(base, rng)
    if rng.random() < 0.6:
        chimney = tree.add("house:chimney", root)
        cx = x + rng.choice([-1, 1]) * 0.25 * width
        canvas.box(
            chimney,
            (cx, wall_top - 0.32 * h),
            (0.1 * h, 0.3 * h),
            0.0,
            palette.part(base, rng),
            random_texture(rng, palette.max_texture_amplitude),
        )
    roof = tree.add("house:roof", root)
    apex = (x + rng.uniform(-0.15, 0.15) * width, b - h)
    overhang = 0.07 * h
    canvas.polygon(
        roof,
        np.array([(x - width / 2 - overhang, wall_top), (x + width / 2 + overhang, wall_top), apex]),
        roof_color,
        random_texture(rng, palette.max_texture_amplitude),
    )
    walls = tree.add("house:walls", root)
    wall_color = palette.part(base, rng)
    canvas.box(
        walls,
        (x, (wall_top + b) / 2),
        (width, b - wall_top),
        0.0,
        wall_color,
        random_texture(rng, palette.max_texture_amplitude),
    )
    door_x = x + rng.uniform(-0.25, 0.25) * width
    door_w, door_h = 0.16 * h, 0.3 * h
    window_color = palette.subpart(wall_color, rng)
    num_windows = int(rng.integers(1, 5))
    slots = [x + (k + 0.5) / num_windows * width - width / 2 for k in range(num_windows)]
    window_side = min(0.14 * h, 0.7 * width / num_windows)
    for slot in slots:
        if abs(slot - door_x) < (door_w + window_side) / 2 + 1:
            continue
        window = tree.add("house:walls:window", walls)
        canvas.box(
            window,
            (slot, wall_top + 0.18 * h),
            (window_side, window_side),
            0.0,
            window_color,
            random_texture(rng, palette.max_texture_amplitude * 0.5),
        )
    door = tree.add("house:walls:door", walls)
    door_color = palette.subpart(wall_color, rng)
    canvas.box(
        door,
        (door_x, b - door_h / 2),
        (door_w, door_h),
        0.0,
        door_color,
        random_texture(rng, palette.max_texture_amplitude),
    )
    if door_w >= 10:
        knob = tree.add("house:walls:door:knob", door)
        knob_r = max(1.5, 0.12 * door_w)
        canvas.ellipse(
            knob,
            (door_x + 0.28 * door_w, b - 0.45 * door_h),
            (knob_r, knob_r),
            0.0,
            palette.subpart(door_color, rng),
            random_texture(rng, 0.0),
        )
    return root


def draw_tree(
    canvas: Canvas,
    tree: NodeTree,
    rng: np.random.Generator,
    at: Placement,
    base: np.ndarray,
    palette: Palette,
) -> int:
    """A tree: a trunk, a crown of one to three blobs, and fruits on the crown."""
    h, x, b = at.height, at.x, at.bottom
    root = tree.add("tree")
    trunk = tree.add("tree:trunk", root)
    canvas.box(
        trunk,
        (x, b - 0.25 * h),
        (rng.uniform(0.08, 0.14) * h, 0.5 * h),
        0.0,
        palette.part(base, rng),
        random_texture(rng, palette.max_texture_amplitude),
    )
    crown = tree.add("tree:crown", root)
    crown_color = palette.part(base, rng)
    crown_texture = random_texture(rng, palette.max_texture_amplitude)
    radius = rng.uniform(0.25, 0.32) * h
    center = (x, b - h + radius)
    blobs = [(center, (radius, radius * rng.uniform(0.8, 1.0)))]
    for _ in range(int(rng.integers(0, 3))):
        offset = rng.uniform(-0.6, 0.6) * radius
        blobs.append(((center[0] + offset, center[1] + abs(offset) * 0.4), (radius * 0.7, radius * 0.6)))
    for blob_center, axes in blobs:
        canvas.ellipse(crown, blob_center, axes, 0.0, crown_color, crown_texture)
    fruit_r = 0.05 * h
    if fruit_r >= 2:
        fruit_color = palette.subpart(crown_color, rng)
        for _ in range(int(rng.integers(0, 5))):
            angle, distance = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.7) * radius
            fruit = tree.add("tree:crown:fruit", crown)
            canvas.ellipse(
                fruit,
                (center[0] + distance * math.cos(angle), center[1] + distance * math.sin(angle)),
                (fruit_r, fruit_r),
                0.0,
                fruit_color,
                random_texture(rng, 0.0),
            )
    return root


def draw_vehicle(
    canvas: Canvas,
    tree: NodeTree,
    rng: np.random.Generator,
    at: Placement,
    base: np.ndarray,
    palette: Palette,
) -> int:
    """A vehicle: a body with a cabin (windows, a light) and two wheels with hubcaps."""
    h, x, b = at.height, at.x, at.bottom
    width = rng.uniform(1.5, 2.2) * h
    wheel_r = 0.22 * h
    direction = float(rng.choice([-1, 1]))
    root = tree.add("vehicle")
    body = tree.add("vehicle:body", root)
    body_color = palette.part(base, rng)
    body_texture = random_texture(rng, palette.max_texture_amplitude)
    top, sill = b - h, b - 0.6 * h
    canvas.box(body, (x, b - 0.4 * h), (width, 0.4 * h), 0.0, body_color, body_texture)
    cabin = np.array(
        [(x - 0.35 * width, sill), (x + 0.3 * width, sill), (x + 0.2 * width, top), (x - 0.25 * width, top)]
    )
    cabin[:, 0] = x + direction * (cabin[:, 0] - x)
    canvas.polygon(body, cabin, body_color, body_texture)
    window_color = palette.subpart(body_color, rng)
    for k in range(int(rng.integers(1, 3))):
        window = tree.add("vehicle:body:window", body)
        left = x + direction * (-0.22 + k * 0.24) * width
        canvas.box(
            window,
            (left + direction * 0.1 * width, (top + sill) / 2 + 0.02 * h),
            (0.19 * width, 0.26 * h),
            0.0,
            window_color,
            random_texture(rng, palette.max_texture_amplitude * 0.5),
        )
    light = tree.add("vehicle:body:light", body)
    canvas.box(
        light,
        (x + direction * 0.46 * width, b - 0.48 * h),
        (0.07 * width, 0.1 * h),
        0.0,
        palette.subpart(body_color, rng),
        random_texture(rng, 0.0),
    )
    wheel_color = palette.part(base, rng)
    hub_color = palette.subpart(wheel_color, rng)
    for side in (-1, 1):
        wheel = tree.add("vehicle:wheel", root)
        center = (x + side * 0.3 * width, b - wheel_r)
        canvas.ellipse(
            wheel,
            center,
            (wheel_r, wheel_r),
            0.0,
            wheel_color,
            random_texture(rng, palette.max_texture_amplitude * 0.5),
        )
        if wheel_r >= 4:
            hubcap = tree.add("vehicle:wheel:hubcap", wheel)
            canvas.ellipse(
                hubcap, center, (0.45 * wheel_r, 0.45 * wheel_r), 0.0, hub_color, random_texture(rng, 0.0)
            )
    return root


def draw_flower(
    canvas: Canvas,
    tree: NodeTree,
    rng: np.random.Generator,
    at: Placement,
    base: np.ndarray,
    palette: Palette,
) -> int:
    """A flower: a stem, a leaf, and a blossom of petals around a centre."""
    h, x, b = at.height, at.x, at.bottom
    root = tree.add("flower")
    radius = 0.22 * h
    head = (x + rng.uniform(-0.1, 0.1) * h, b - h + radius)
    stem_color = palette.part(base, rng)
    stem = tree.add("flower:stem", root)
    canvas.limb(stem, (x, b), head, max(2.0, 0.05 * h), stem_color, random_texture(rng, 0.0))
    leaf = tree.add("flower:leaf", root)
    side = float(rng.choice([-1, 1]))
    canvas.ellipse(
        leaf,
        (x + side * 0.12 * h, b - 0.35 * h),
        (0.13 * h, 0.05 * h),
        side * -30.0,
        palette.part(base, rng),
        random_texture(rng, palette.max_texture_amplitude * 0.5),
    )
    blossom = tree.add("flower:blossom", root)
    petal_color = palette.part(base, rng)
    petal_texture = random_texture(rng, palette.max_texture_amplitude * 0.5)
    num_petals = int(rng.integers(5, 8))
    phase = rng.uniform(0, 2 * math.pi)
    for k in range(num_petals):
        angle = phase + 2 * math.pi * k / num_petals
        canvas.ellipse(
            blossom,
            (head[0] + 0.55 * radius * math.cos(angle), head[1] + 0.55 * radius * math.sin(angle)),
            (0.5 * radius, 0.28 * radius),
            math.degrees(angle),
            petal_color,
            petal_texture,
        )
    if radius >= 5:
        centre = tree.add("flower:blossom:centre", blossom)
        canvas.ellipse(
            centre,
            head,
            (0.35 * radius, 0.35 * radius),
            0.0,
            palette.subpart(petal_color, rng),
            random_texture(rng, 0.0),
        )
    return root


#: kind -> (template, width / height ratio used to keep the entity inside the image).
TEMPLATES: dict[str, tuple[EntityTemplate, float]] = {
    "figure": (draw_figure, 0.6),
    "house": (draw_house, 1.2),
    "tree": (draw_tree, 0.65),
    "vehicle": (draw_vehicle, 2.0),
    "flower": (draw_flower, 0.5),
}
