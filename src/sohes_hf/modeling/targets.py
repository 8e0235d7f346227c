"""Training targets for the self-instruction phase: RLE masks + parent links -> model labels.

Paper section 3.2: the segmentation head learns masks with a class ("entity" vs no-object) and
the ancestor head learns a binary matrix ``P`` where ``P[i, j] = 1`` when mask ``i`` is an
ancestor of mask ``j`` (any ancestor, not only the direct parent). The data layer hands over one
``{"masks": [RLE, ...], "parents": [int, ...]}`` per image (``parents[i]`` = index of mask i's
direct parent in the same list, -1 for a root, masks at the original image size); this module
turns it into tensors aligned with the resized and padded image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvF

from .masks import decode_masks

# Masks are decoded and resized this many at a time: SA-1B images carry hundreds of masks at
# ~1500x2250, and a full-resolution stack of them would need gigabytes.
_MASK_CHUNK = 32


@dataclass
class HierarchicalTargets:
    """Labels for one image, in the geometry of the processed (resized + padded) image.

    Attributes:
        mask_labels: (M, H_pad, W_pad) float32 in {0, 1}; zero in the padding.
        class_labels: (M,) int64, all 0 (the single "entity" class; 1 is no-object).
        ancestor_labels: (M, M) float32, ``[i, j] = 1`` when mask i is an ancestor of mask j.
    """

    mask_labels: torch.Tensor
    class_labels: torch.Tensor
    ancestor_labels: torch.Tensor


def validate_parents(
    parents: Sequence[int] | np.ndarray, num_masks: int, name: str = "parents"
) -> np.ndarray:
    """Checks parent links and returns them as an int64 array.

    Args:
        parents: ``parents[i]`` is the index of mask i's direct parent, -1 for a root.
        num_masks: Number of masks the links refer to.
        name: How the argument is named in error messages (e.g. ``"targets[3]['parents']"``).

    Returns:
        (M,) int64 parent indices.

    Raises:
        ValueError: wrong length, an index outside [-1, M), a self link or a cycle.
    """
    array = np.asarray(parents)
    if array.size == 0:
        array = array.reshape(0).astype(np.int64)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name}: expected a flat list of int, got {array.dtype} with shape {array.shape}")
    if array.shape[0] != num_masks:
        raise ValueError(f"{name}: has {array.shape[0]} entries for {num_masks} masks")
    array = array.astype(np.int64)
    bad = np.nonzero((array < -1) | (array >= num_masks))[0]
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {array[bad[0]]} is outside [-1, {num_masks})")
    selfish = np.nonzero(array == np.arange(num_masks))[0]
    if selfish.size:
        raise ValueError(f"{name}[{selfish[0]}] points to itself")
    _depths(array, name)  # raises on cycles
    return array


def _depths(parents: np.ndarray, name: str) -> np.ndarray:
    """Depth of each node (root = 0) by walking parent links with memoisation; raises on cycles."""
    num = parents.shape[0]
    depth = np.full(num, -1, dtype=np.int64)
    on_path = np.zeros(num, dtype=bool)
    for start in range(num):
        path: list[int] = []
        node = start
        while node != -1 and depth[node] < 0:
            if on_path[node]:
                raise ValueError(f"{name}: the parent links contain a cycle through mask {node}")
            on_path[node] = True
            path.append(node)
            node = int(parents[node])
        level = -1 if node == -1 else int(depth[node])
        for member in reversed(path):
            level += 1
            depth[member] = level
            on_path[member] = False
    return depth


def ancestor_matrix(parents: Sequence[int] | np.ndarray) -> np.ndarray:
    """Transitive closure of parent links: ``P[i, j]`` is True when i is an ancestor of j.

    Args:
        parents: Valid parent links (see :func:`validate_parents`), -1 for roots.

    Returns:
        (M, M) bool matrix with a False diagonal.
    """
    links = validate_parents(parents, len(parents))
    num = links.shape[0]
    matrix = np.zeros((num, num), dtype=bool)
    # Visiting nodes by increasing depth means a parent's column is complete before its children.
    for node in np.argsort(_depths(links, "parents"), kind="stable"):
        parent = links[node]
        if parent >= 0:
            matrix[:, node] = matrix[:, parent]
            matrix[parent, node] = True
    return matrix


def resize_masks(
    rles: Sequence[Mapping[str, Any]],
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    padded_size: tuple[int, int],
) -> torch.Tensor:
    """Decodes RLE masks, resizes them (nearest-exact) like the image, and pads bottom/right.

    Nearest-exact samples the source pixel whose centre is closest to each output pixel centre,
    the same half-pixel geometry as the bilinear image resize, so labels stay aligned with image
    content (Mask2Former's processor makes the same choice).

    Args:
        rles: M COCO RLEs of size ``image_size``.
        image_size: (height, width) of the original image.
        resized_size: (height, width) of the image after resizing.
        padded_size: (height, width) after padding; at least ``resized_size``.

    Returns:
        (M, H_pad, W_pad) float32 tensor in {0, 1}.
    """
    height, width = resized_size
    output = torch.zeros((len(rles), *padded_size), dtype=torch.float32)
    for start in range(0, len(rles), _MASK_CHUNK):
        chunk = decode_masks(rles[start : start + _MASK_CHUNK], *image_size)
        stack = torch.from_numpy(chunk.astype(np.uint8))
        if (height, width) != tuple(image_size):
            stack = tvF.resize(
                stack, [height, width], interpolation=tvF.InterpolationMode.NEAREST_EXACT, antialias=False
            )
        output[start : start + stack.shape[0], :height, :width] = stack.float()
    return output


def prepare_targets(
    target: Mapping[str, Any],
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    padded_size: tuple[int, int],
    name: str = "target",
) -> HierarchicalTargets:
    """Turns one image's ``{"masks": [RLE], "parents": [int]}`` into model labels.

    Args:
        target: Masks at the original image size and their direct-parent links (-1 = root).
        image_size: (height, width) of the original image; every RLE must have this size.
        resized_size: (height, width) after resizing.
        padded_size: (height, width) after padding.
        name: How the target is named in error messages (e.g. ``"targets[2]"``).

    Raises:
        TypeError: ``target`` is not a mapping.
        ValueError: missing keys, masks of the wrong size, or invalid parent links.
    """
    if not isinstance(target, Mapping):
        raise TypeError(f"{name}: expected a dict with 'masks' and 'parents', got {type(target).__name__}")
    missing = [key for key in ("masks", "parents") if key not in target]
    if missing:
        raise ValueError(f"{name}: missing key(s) {missing}; expected {{'masks': [RLE], 'parents': [int]}}")
    rles = list(target["masks"])
    parents = validate_parents(target["parents"], len(rles), name=f"{name}['parents']")
    for index, rle in enumerate(rles):
        size = rle.get("size") if isinstance(rle, Mapping) else None
        if size is None or [int(v) for v in size] != [int(v) for v in image_size]:
            raise ValueError(
                f"{name}['masks'][{index}]: RLE size {size} differs from the image size {list(image_size)}"
            )
    try:
        mask_labels = resize_masks(rles, image_size, resized_size, padded_size)
    except ValueError as error:
        raise ValueError(f"{name}['masks']: {error}") from error
    return HierarchicalTargets(
        mask_labels=mask_labels,
        class_labels=torch.zeros(len(rles), dtype=torch.long),
        ancestor_labels=torch.from_numpy(ancestor_matrix(parents).astype(np.float32)),
    )
