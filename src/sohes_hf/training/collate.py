"""Batching of training examples: stacked images, per-image target lists (paper section 3.2).

Mask2Former matches a different number of masks per image, so targets stay lists; images are
padded bottom/right to the largest size in the batch (with large-scale jitter they already share
the S x S canvas and no padding is added).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class TrainingExample:
    """One augmented image with its labels, in the model's input geometry.

    Attributes:
        pixel_values: (3, H, W) float32, normalised; 0 on padding.
        pixel_mask: (H, W) int64, 1 on image content, 0 on padding.
        mask_labels: (M, H, W) bool (converted to float on the device, see the trainers).
        class_labels: (M,) int64, all 0 (entity).
        ancestor_labels: (M, M) float32, [i, j] = 1 when mask i is an ancestor of mask j.
        substituted: file names of images that failed to decode and were replaced in this example.
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    mask_labels: torch.Tensor
    class_labels: torch.Tensor
    ancestor_labels: torch.Tensor
    substituted: tuple[str, ...] = ()


@dataclass
class SelfCorrectionExample:
    """One pair of phase-3 inputs (paper eq. 2).

    Attributes:
        initial: strong(I1) with its initial pseudo-labels.
        weak_pixel_values: (3, H, W) weak(I2), what the teacher sees.
        strong_pixel_values: (3, H, W) strong(I2): the same geometry as weak(I2) plus photometric
            changes, so the teacher's masks need no re-mapping.
        pixel_mask: (H, W) int64 valid region of I2.
        substituted: file names of images (I1, its copy-paste source, I2) that failed to decode
            and were replaced.
    """

    initial: TrainingExample
    weak_pixel_values: torch.Tensor
    strong_pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    substituted: tuple[str, ...] = ()


@dataclass
class TrainingBatch:
    """A batch of ``TrainingExample``.

    Attributes:
        pixel_values: (B, 3, H, W) float32.
        pixel_mask: (B, H, W) int64.
        mask_labels: B tensors (M_i, H, W) bool.
        class_labels: B tensors (M_i,) int64.
        ancestor_labels: B tensors (M_i, M_i) float32.
        substituted: file names of the images replaced in this batch (see ``TrainingExample``).
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    mask_labels: list[torch.Tensor]
    class_labels: list[torch.Tensor]
    ancestor_labels: list[torch.Tensor]
    substituted: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainingBatch:
        """Moves every tensor (used by Accelerate's device placement)."""
        return TrainingBatch(
            pixel_values=self.pixel_values.to(device, non_blocking=non_blocking),
            pixel_mask=self.pixel_mask.to(device, non_blocking=non_blocking),
            mask_labels=[t.to(device, non_blocking=non_blocking) for t in self.mask_labels],
            class_labels=[t.to(device, non_blocking=non_blocking) for t in self.class_labels],
            ancestor_labels=[t.to(device, non_blocking=non_blocking) for t in self.ancestor_labels],
            substituted=self.substituted,
        )

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])


@dataclass
class SelfCorrectionBatch:
    """A batch of ``SelfCorrectionExample``.

    Attributes:
        initial: the strong(I1) batch with initial pseudo-labels.
        weak_pixel_values, strong_pixel_values: (B, 3, H, W) views of I2.
        pixel_mask: (B, H, W) int64 valid region of I2.
        substituted: file names of the images replaced in this batch (I1 and I2 halves).
    """

    initial: TrainingBatch
    weak_pixel_values: torch.Tensor
    strong_pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    substituted: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SelfCorrectionBatch:
        """Moves every tensor (used by Accelerate's device placement)."""
        return SelfCorrectionBatch(
            initial=self.initial.to(device, non_blocking=non_blocking),
            weak_pixel_values=self.weak_pixel_values.to(device, non_blocking=non_blocking),
            strong_pixel_values=self.strong_pixel_values.to(device, non_blocking=non_blocking),
            pixel_mask=self.pixel_mask.to(device, non_blocking=non_blocking),
            substituted=self.substituted,
        )

    def __len__(self) -> int:
        return int(self.weak_pixel_values.shape[0])


def _pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    pad_h, pad_w = height - tensor.shape[-2], width - tensor.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h))


def _max_size(tensors: Sequence[torch.Tensor]) -> tuple[int, int]:
    return max(int(t.shape[-2]) for t in tensors), max(int(t.shape[-1]) for t in tensors)


def collate_training_examples(examples: Sequence[TrainingExample]) -> TrainingBatch:
    """Stacks images (padded bottom/right to the largest) and keeps targets as lists.

    Raises:
        ValueError: ``examples`` is empty.
    """
    if not examples:
        raise ValueError("examples: cannot collate an empty batch")
    height, width = _max_size([e.pixel_values for e in examples])
    return TrainingBatch(
        pixel_values=torch.stack([_pad_to(e.pixel_values, height, width) for e in examples]),
        pixel_mask=torch.stack([_pad_to(e.pixel_mask, height, width) for e in examples]),
        mask_labels=[_pad_to(e.mask_labels, height, width) for e in examples],
        class_labels=[e.class_labels for e in examples],
        ancestor_labels=[e.ancestor_labels for e in examples],
        substituted=[name for e in examples for name in e.substituted],
    )


def collate_self_correction_examples(examples: Sequence[SelfCorrectionExample]) -> SelfCorrectionBatch:
    """Collates phase-3 pairs: the I1 half like phase 2, the I2 views stacked (padded alike).

    Raises:
        ValueError: ``examples`` is empty.
    """
    if not examples:
        raise ValueError("examples: cannot collate an empty batch")
    height, width = _max_size([e.weak_pixel_values for e in examples])
    return SelfCorrectionBatch(
        initial=collate_training_examples([e.initial for e in examples]),
        weak_pixel_values=torch.stack([_pad_to(e.weak_pixel_values, height, width) for e in examples]),
        strong_pixel_values=torch.stack([_pad_to(e.strong_pixel_values, height, width) for e in examples]),
        pixel_mask=torch.stack([_pad_to(e.pixel_mask, height, width) for e in examples]),
        substituted=[name for e in examples for name in (*e.initial.substituted, *e.substituted)],
    )
