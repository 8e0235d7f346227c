"""Joint image + mask + hierarchy augmentations for phases 2 and 3 (paper sections 3.2-3.3, appendix E).

All functions take tensors and an explicit ``torch.Generator`` so that a sample's augmentation
depends only on (seed, sample position): a resumed run redraws exactly the same augmentations
whatever the number of data-loader workers.

Shapes and formats: images are (3, H, W) float32 RGB in [0, 1]; masks are (M, H, W) bool;
``parents`` is (M,) int64 with the index of each mask's direct parent, -1 for roots, and
``valid`` is (H, W) bool, True where the canvas holds image content (False on padding).

How the hierarchy stays valid:
    * A mask whose visible area falls below ``min_mask_area`` after cropping or occlusion is
      dropped, and its children are re-linked to their nearest surviving ancestor (or become
      roots). Cropping and occlusion remove the same pixels from a parent and its parts, so a
      surviving part stays inside its surviving ancestor and ancestor links remain true.
    * Copy-paste (Ghiasi et al., 2021; appendix E uses it to simulate occlusion) pastes whole
      entity trees of another image: the selected roots with all their descendants, so the pasted
      parts keep their parents. The pasted pixels occlude the target image's masks (they are
      subtracted), and the pasted entities become new roots: they lie on top and are part of
      nothing in the target image.
    * Parents precede children in the output lists, as in the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as tvF

from sohes_hf.training.config import AugmentationConfig


@dataclass
class AugmentedSample:
    """One image with its masks and hierarchy after augmentation.

    Attributes:
        image: (3, S, S) float32 RGB in [0, 1]; zero on padding.
        masks: (M, S, S) bool.
        parents: (M,) int64 direct-parent indices, -1 for roots.
        valid: (S, S) bool, True on image content.
    """

    image: torch.Tensor
    masks: torch.Tensor
    parents: torch.Tensor
    valid: torch.Tensor


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _bernoulli(generator: torch.Generator, probability: float) -> bool:
    return probability > 0 and float(torch.rand((), generator=generator)) < probability


def drop_masks(
    masks: torch.Tensor, parents: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Removes masks and re-links the children of removed masks to their nearest kept ancestor.

    Args:
        masks: (M, H, W) masks.
        parents: (M,) int64 direct-parent indices, -1 for roots.
        keep: (M,) bool, which masks survive.

    Returns:
        The kept masks (K, H, W) in their original order and their (K,) parent indices in the
        new numbering (-1 where no ancestor survives).
    """
    keep_list = [bool(k) for k in keep.tolist()]
    parent_list = [int(p) for p in parents.tolist()]
    new_index: list[int] = []
    count = 0
    for kept in keep_list:
        new_index.append(count if kept else -1)
        count += int(kept)
    new_parents: list[int] = []
    for node, kept in enumerate(keep_list):
        if not kept:
            continue
        ancestor = parent_list[node]
        seen = 0
        while ancestor >= 0 and not keep_list[ancestor]:
            ancestor = parent_list[ancestor]
            seen += 1
            if seen > len(parent_list):
                raise ValueError("parents contain a cycle")
        new_parents.append(new_index[ancestor] if ancestor >= 0 else -1)
    keep_tensor = torch.as_tensor(keep_list, dtype=torch.bool)
    return masks[keep_tensor], torch.as_tensor(new_parents, dtype=torch.long)


def drop_small_masks(sample: AugmentedSample, min_mask_area: int) -> AugmentedSample:
    """Drops masks with fewer than ``min_mask_area`` pixels (re-linking children, see module doc)."""
    if sample.masks.shape[0] == 0:
        return sample
    keep = sample.masks.flatten(1).sum(dim=1) >= min_mask_area
    if bool(keep.all()):
        return sample
    masks, parents = drop_masks(sample.masks, sample.parents, keep)
    return AugmentedSample(sample.image, masks, parents, sample.valid)


def large_scale_jitter(
    image: torch.Tensor,
    masks: torch.Tensor,
    parents: torch.Tensor,
    output_size: int,
    min_scale: float,
    max_scale: float,
    flip_probability: float,
    generator: torch.Generator,
    min_mask_area: int = 1,
) -> AugmentedSample:
    """Large-scale jitter (Ghiasi et al., 2021): random resize, random crop/pad to S x S, flip.

    The longer image side is resized to ``output_size * scale`` with ``scale ~ U(min_scale,
    max_scale)``; a random S x S window is cropped when the result is larger, and the canvas is
    padded at the bottom/right when smaller. Masks follow with nearest-exact resizing.

    Args:
        image: (3, H, W) float in [0, 1].
        masks: (M, H, W) bool at the image size.
        parents: (M,) int64.
        output_size: canvas side S in pixels.
        min_scale, max_scale: jitter range.
        flip_probability: probability of a horizontal flip.
        generator: source of randomness.
        min_mask_area: masks with fewer visible pixels are dropped (children re-linked).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
        raise ValueError(f"masks must be (M, H, W) matching the image, got {tuple(masks.shape)}")
    height, width = image.shape[1:]
    scale = _uniform(generator, min_scale, max_scale)
    factor = output_size * scale / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    image = tvF.resize(image, [new_h, new_w], antialias=True).clamp_(0.0, 1.0)
    if masks.shape[0]:
        masks = tvF.resize(
            masks.to(torch.uint8), [new_h, new_w], interpolation=tvF.InterpolationMode.NEAREST_EXACT
        ).bool()
    else:
        masks = torch.zeros((0, new_h, new_w), dtype=torch.bool)
    top = (
        int(torch.randint(0, new_h - output_size + 1, (), generator=generator)) if new_h > output_size else 0
    )
    left = (
        int(torch.randint(0, new_w - output_size + 1, (), generator=generator)) if new_w > output_size else 0
    )
    crop_h, crop_w = min(new_h, output_size), min(new_w, output_size)
    canvas = torch.zeros((3, output_size, output_size), dtype=image.dtype)
    canvas[:, :crop_h, :crop_w] = image[:, top : top + crop_h, left : left + crop_w]
    mask_canvas = torch.zeros((masks.shape[0], output_size, output_size), dtype=torch.bool)
    mask_canvas[:, :crop_h, :crop_w] = masks[:, top : top + crop_h, left : left + crop_w]
    valid = torch.zeros((output_size, output_size), dtype=torch.bool)
    valid[:crop_h, :crop_w] = True
    if _bernoulli(generator, flip_probability):
        # Flip the content inside the valid window so padding stays bottom/right.
        canvas[:, :crop_h, :crop_w] = canvas[:, :crop_h, :crop_w].flip(-1)
        mask_canvas[:, :crop_h, :crop_w] = mask_canvas[:, :crop_h, :crop_w].flip(-1)
    sample = AugmentedSample(canvas, mask_canvas, parents.clone().long(), valid)
    return drop_small_masks(sample, min_mask_area)


def _subtree(parents: list[int], roots: list[int]) -> list[int]:
    """Indices of ``roots`` and all their descendants, in list order."""
    selected = set(roots)
    changed = True
    while changed:
        changed = False
        for node, parent in enumerate(parents):
            if parent in selected and node not in selected:
                selected.add(node)
                changed = True
    return sorted(selected)


def copy_paste(
    target: AugmentedSample,
    source: AugmentedSample,
    max_pasted_objects: int,
    generator: torch.Generator,
    min_mask_area: int = 1,
) -> AugmentedSample:
    """Pastes whole entity trees of ``source`` onto ``target`` (Ghiasi et al., 2021; appendix E).

    Between 1 and ``max_pasted_objects`` root entities of ``source`` (uniformly chosen) are pasted
    with all their descendants. The union of the pasted roots' and descendants' masks replaces the
    target pixels; target masks lose the occluded pixels and are dropped when fewer than
    ``min_mask_area`` remain (children re-linked). Pasted masks are appended after the target's,
    their roots become roots, their descendants keep their (renumbered) parents.

    Args:
        target, source: samples on canvases of the same size S x S.
        max_pasted_objects: at most this many source roots are pasted.
        generator: source of randomness.
        min_mask_area: see above.

    Returns:
        The composed sample. ``target`` is returned unchanged when ``source`` has no masks.
    """
    if target.image.shape != source.image.shape:
        raise ValueError(
            f"copy_paste needs canvases of one size, got {tuple(target.image.shape)} and "
            f"{tuple(source.image.shape)}"
        )
    source_parents = [int(p) for p in source.parents.tolist()]
    roots = [i for i, p in enumerate(source_parents) if p < 0]
    if not roots:
        return target
    order = torch.randperm(len(roots), generator=generator).tolist()
    count = int(torch.randint(1, min(max_pasted_objects, len(roots)) + 1, (), generator=generator))
    chosen = _subtree(source_parents, sorted(roots[i] for i in order[:count]))
    pasted_masks = source.masks[chosen]
    region = pasted_masks.any(dim=0)
    image = torch.where(region.unsqueeze(0), source.image, target.image)
    valid = target.valid | region
    occluded = target.masks & ~region.unsqueeze(0)
    kept = AugmentedSample(image, occluded, target.parents, valid)
    kept = drop_small_masks(kept, min_mask_area)
    renumber = {old: new for new, old in enumerate(chosen)}
    offset = kept.masks.shape[0]
    pasted_parents = [
        renumber[source_parents[i]] + offset if source_parents[i] in renumber else -1 for i in chosen
    ]
    masks = torch.cat([kept.masks, pasted_masks], dim=0)
    parents = torch.cat([kept.parents, torch.as_tensor(pasted_parents, dtype=torch.long)])
    return AugmentedSample(image, masks, parents, valid)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    kernel_size = 2 * radius + 1
    return tvF.gaussian_blur(image, [kernel_size, kernel_size], [sigma, sigma])


def photometric_strong(
    image: torch.Tensor,
    valid: torch.Tensor,
    color_jitter_strength: float,
    grayscale_probability: float,
    blur_probability: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The photometric half of the *strong* augmentation T_strong (paper section 3.3).

    Colour jitter (brightness, contrast, saturation, factors in [1 - s, 1 + s]), random grayscale
    and Gaussian blur (sigma in [0.1, 2.0]), the strong augmentation of Unbiased Teacher
    (Liu et al., 2021, cited by the paper). Geometry is left alone, so masks predicted on the
    weakly augmented image stay aligned (see docs/training.md). Padding stays zero.

    Args:
        image: (3, S, S) float in [0, 1].
        valid: (S, S) bool, True on image content.
        color_jitter_strength: s above; 0 disables jitter.
        grayscale_probability, blur_probability: probabilities of those two steps.
        generator: source of randomness.

    Returns:
        (3, S, S) float in [0, 1].
    """
    out = image
    if color_jitter_strength > 0:
        s = color_jitter_strength
        factors = [_uniform(generator, max(0.0, 1 - s), 1 + s) for _ in range(3)]
        for step in torch.randperm(3, generator=generator).tolist():
            if step == 0:
                out = tvF.adjust_brightness(out, factors[0])
            elif step == 1:
                out = tvF.adjust_contrast(out, factors[1])
            else:
                out = tvF.adjust_saturation(out, factors[2])
    if _bernoulli(generator, grayscale_probability):
        out = tvF.rgb_to_grayscale(out, num_output_channels=3)
    if _bernoulli(generator, blur_probability):
        out = _gaussian_blur(out, _uniform(generator, 0.1, 2.0))
    return (out.clamp(0.0, 1.0) * valid.unsqueeze(0)).to(image.dtype)


def normalize_image(
    image: torch.Tensor, valid: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """(image - mean) / std on image content; padding is 0 after normalisation (as Mask2Former)."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype).view(3, 1, 1)
    return ((image - mean_t) / std_t) * valid.unsqueeze(0)


def weak_augmentation(
    image: torch.Tensor,
    masks: torch.Tensor,
    parents: torch.Tensor,
    config: AugmentationConfig,
    generator: torch.Generator,
) -> AugmentedSample:
    """T_weak of paper section 3.3: large-scale jitter + horizontal flip, nothing photometric.

    Args:
        image: (3, H, W) float in [0, 1].
        masks: (M, H, W) bool.
        parents: (M,) int64.
        config: jitter range, flip probability, canvas size, minimum mask area.
        generator: source of randomness.
    """
    return large_scale_jitter(
        image,
        masks,
        parents,
        config.image_size,
        config.min_scale,
        config.max_scale,
        config.horizontal_flip_probability,
        generator,
        config.min_mask_area,
    )


def strong_augmentation(
    weak: AugmentedSample, config: AugmentationConfig, generator: torch.Generator
) -> AugmentedSample:
    """T_strong of paper section 3.3 on top of a weak view: the same geometry, photometric changes.

    Keeping the geometry is what lets the teacher's masks on weak(I2) label strong(I2) directly.
    """
    image = photometric_strong(
        weak.image,
        weak.valid,
        config.color_jitter_strength,
        config.grayscale_probability,
        config.blur_probability,
        generator,
    )
    return AugmentedSample(image, weak.masks, weak.parents, weak.valid)
