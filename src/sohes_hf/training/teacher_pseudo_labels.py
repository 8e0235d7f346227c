"""The teacher's pseudo-labels Y_teacher of self-correction (paper section 3.3, eqs. 2-3).

For each image of weak(I2) the teacher predicts N queries. A query becomes a pseudo-label when its
score exceeds the dynamic threshold of eq. (3) at its area ratio:

* **Masks and scores** follow Mask2Former's instance inference, as the image processor's
  post-processing does: the mask logits are upsampled (bilinear) to the S x S training canvas,
  binarised at logit 0 and cut to the image region (``pixel_mask``); the score is
  ``softmax(class)[entity] * mean(sigmoid(mask logits) over the binary mask)``.
* **Area ratio** ``a`` = mask pixels / image-region pixels (the padding of large-scale jitter is
  not part of "the whole image" of eq. 3).
* **Hierarchy**: from the teacher's own ancestor head. ``sigmoid(ancestor_logits)`` among the kept
  masks is decoded into a forest by :func:`sohes_hf.modeling.forest.build_forest`, the inference
  decoder of section 3.2. We prefer this to re-deriving parents with the coverage rule of
  self-exploration because the point of phase 3 is to let the better model correct the noisy
  phase-1 labels, relations included, and because the teacher's relations are what the student's
  ancestor head is asked to match; the coverage rule would also reintroduce phase 1's failure
  modes (an occluded part at <90 % coverage loses its parent).

Size buckets (logged; Table 3 is about them): COCO's small < 32^2, medium < 96^2, large >= 96^2
pixels, counted at the training canvas resolution (S = 1024 in the paper recipe), since that is
the resolution the student sees the labels at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from sohes_hf.modeling.forest import build_forest
from sohes_hf.modeling.targets import ancestor_matrix
from sohes_hf.training.dynamic_threshold import dynamic_score_threshold

SMALL_AREA = 32**2
"""COCO's small/medium boundary, pixels."""
MEDIUM_AREA = 96**2
"""COCO's medium/large boundary, pixels."""

# Queries upsampled to the full canvas at a time (Q x S x S floats; 16 x 1024^2 x 4 B = 64 MB).
_UPSAMPLE_CHUNK = 16


@dataclass
class TeacherPseudoLabels:
    """Targets for strong(I2) built from the teacher's predictions on weak(I2).

    Attributes:
        mask_labels: per image, (K_i, S, S) bool.
        class_labels: per image, (K_i,) int64 zeros (entity).
        ancestor_labels: per image, (K_i, K_i) float32, [i, j] = 1 when i is an ancestor of j.
        scores: per image, (K_i,) float32 teacher scores of the kept masks.
        num_small, num_medium, num_large: kept masks per COCO size bucket, summed over the batch.
        num_candidates: masks (non-empty, score >= theta_small) before the dynamic threshold.
    """

    mask_labels: list[torch.Tensor] = field(default_factory=list)
    class_labels: list[torch.Tensor] = field(default_factory=list)
    ancestor_labels: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    num_small: int = 0
    num_medium: int = 0
    num_large: int = 0
    num_candidates: int = 0

    @property
    def num_labels(self) -> int:
        """Kept masks over the batch."""
        return self.num_small + self.num_medium + self.num_large


def keep_by_dynamic_threshold(
    scores: torch.Tensor,
    area_ratios: torch.Tensor,
    theta_large: float,
    theta_small: float,
    gamma: float,
) -> torch.Tensor:
    """Eq. (3) filter: True where ``score > theta_score(area_ratio)``.

    Args:
        scores: (K,) teacher scores in [0, 1].
        area_ratios: (K,) mask area / image area in [0, 1].
        theta_large, theta_small, gamma: eq. (3)'s parameters.

    Returns:
        (K,) bool.
    """
    if scores.shape != area_ratios.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and area_ratios {tuple(area_ratios.shape)} differ")
    thresholds = dynamic_score_threshold(area_ratios.double(), theta_large, theta_small, gamma)
    return scores.double() > thresholds


def _candidate_masks(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, valid: torch.Tensor, min_score: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary masks (K, S, S), scores (K,) and query indices (K,) of non-empty queries >= min_score."""
    class_probs = torch.softmax(class_logits.float(), dim=-1)[:, 0]
    candidates = torch.nonzero(class_probs >= min_score).flatten()
    size = tuple(valid.shape)
    masks, scores, queries = [], [], []
    for start in range(0, candidates.numel(), _UPSAMPLE_CHUNK):
        chunk = candidates[start : start + _UPSAMPLE_CHUNK]
        logits = F.interpolate(
            mask_logits[chunk][None].float(), size=size, mode="bilinear", align_corners=False
        )[0]
        binary = (logits > 0) & valid
        counts = binary.flatten(1).sum(1)
        chunk_scores = (
            class_probs[chunk] * (torch.sigmoid(logits) * binary).flatten(1).sum(1) / counts.clamp(min=1)
        )
        keep = (counts > 0) & (chunk_scores >= min_score)
        masks.append(binary[keep])
        scores.append(chunk_scores[keep])
        queries.append(chunk[keep])
    if not masks:
        empty = torch.zeros((0, *size), dtype=torch.bool, device=valid.device)
        return empty, class_probs.new_zeros(0), candidates.new_zeros(0)
    return torch.cat(masks), torch.cat(scores), torch.cat(queries)


@torch.no_grad()
def teacher_pseudo_labels(
    class_queries_logits: torch.Tensor,
    masks_queries_logits: torch.Tensor,
    ancestor_logits: torch.Tensor,
    pixel_mask: torch.Tensor,
    theta_large: float = 0.7,
    theta_small: float = 0.3,
    gamma: float = 200.0,
    max_instances: int = 100,
    ancestor_threshold: float = 0.5,
) -> TeacherPseudoLabels:
    """Turns the teacher's outputs on weak(I2) into Y_teacher (see module doc).

    Args:
        class_queries_logits: (B, N, 2), index 0 = entity.
        masks_queries_logits: (B, N, h, w) at 1/4 of the canvas.
        ancestor_logits: (B, N, N) pre-sigmoid, [i, j] = logit(i is an ancestor of j).
        pixel_mask: (B, S, S), nonzero on image content; its size sets the label resolution.
        theta_large, theta_small, gamma: eq. (3) (paper A: 0.7, 0.3, 200).
        max_instances: keep at most this many masks per image, highest scores first.
        ancestor_threshold: edge threshold of the forest decoder.

    Returns:
        ``TeacherPseudoLabels`` on the device of the inputs (ancestor matrices are built on CPU
        and moved).
    """
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    batch = class_queries_logits.shape[0]
    if (
        masks_queries_logits.shape[0] != batch
        or ancestor_logits.shape[0] != batch
        or pixel_mask.shape[0] != batch
    ):
        raise ValueError("class/mask/ancestor logits and pixel_mask must share the batch size")
    result = TeacherPseudoLabels()
    for b in range(batch):
        valid = pixel_mask[b].bool()
        masks, scores, queries = _candidate_masks(
            class_queries_logits[b], masks_queries_logits[b], valid, theta_small
        )
        result.num_candidates += int(scores.numel())
        areas = masks.flatten(1).sum(1)
        valid_area = max(int(valid.sum()), 1)
        keep = keep_by_dynamic_threshold(scores, areas.double() / valid_area, theta_large, theta_small, gamma)
        order = torch.argsort(scores.masked_fill(~keep, -1.0), descending=True, stable=True)
        order = order[: min(int(keep.sum()), max_instances)]
        masks, scores, queries, areas = masks[order], scores[order], queries[order], areas[order]
        probs = (
            torch.sigmoid(ancestor_logits[b].float()[queries][:, queries]).cpu().numpy().astype(np.float64)
        )
        forest = build_forest(probs, scores.double().cpu().numpy(), threshold=ancestor_threshold)
        ancestors = torch.from_numpy(ancestor_matrix(forest.parents).astype(np.float32)).to(masks.device)
        result.mask_labels.append(masks)
        result.class_labels.append(torch.zeros(masks.shape[0], dtype=torch.long, device=masks.device))
        result.ancestor_labels.append(ancestors)
        result.scores.append(scores.float())
        result.num_small += int((areas < SMALL_AREA).sum())
        result.num_medium += int(((areas >= SMALL_AREA) & (areas < MEDIUM_AREA)).sum())
        result.num_large += int((areas >= MEDIUM_AREA).sum())
    return result
