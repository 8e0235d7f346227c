"""Configuration of the self-exploration phase (paper section 3.1, appendices A and D).

Every threshold of the phase is a named field with the paper's default, so a researcher can map
the code to the paper's symbols: ``merge_thresholds`` = {theta_merge,t}, ``small_region_area_ratio``
= theta_small, ``local_crop_size`` = S', ``coverage_threshold`` = theta_cover, ``image_size`` = S.
Steps the paper leaves open, or does not mention but HASSOD (the code SOHES builds on) takes
(``min_mask_area``, ``max_mask_corners``, ``use_hole_filling``), have fields with documented
defaults too; docs/self_exploration.md lists every deviation from the paper and HASSOD.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

FEATURE_KINDS = ("keys", "queries", "values", "tokens")
REFINER_BACKENDS = ("cascadepsp", "none")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
REFINER_PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class SelfExplorationConfig:
    """Hyper-parameters of self-exploration; invalid values raise ``ValueError`` naming the field.

    Attributes:
        image_size: S, the side (pixels) images are resized to for global clustering (appendix A:
            1,024). Must be a multiple of the backbone's patch size (8 for DINO ViT-B/8), giving an
            (S/8) x (S/8) patch grid.
        merge_thresholds: {theta_merge,1 > ... > theta_merge,m}, cosine-similarity levels at which the
            agglomerative merge records a segmentation (section 3.1 step 1; appendix A/D:
            0.6, 0.5, 0.4, 0.3, 0.2, 0.1, chosen to keep fewer than 200 pseudo-labels per image).
        nms_iou_threshold: mask IoU above which two candidate regions of the mixed pool count as
            duplicates; the more persistent one (present on more thresholds) is kept, then the one
            from the finer level, then the earlier in pool order (section 3.1 step 1 "NMS is
            applied to remove duplicate regions"; the paper gives no value, 0.9 removes
            near-identical regions only).
        small_region_area_ratio: theta_small, the fraction of the image area below which a region is
            re-clustered locally (section 3.1 step 2; appendix D: 1/1,024 = 32x32 px at 1,024 px).
        local_crop_size: S', the side (pixels) each local crop is resized to (appendix A: 256).
        local_crop_context: side of the square local crop divided by the larger side of the small
            region's box (the paper says only "crop a local image around it"; 2.0 gives as much
            context as region, so re-clustering can see where the entity ends).
        min_local_crop_side: smallest crop side in pixels of the S x S image, so a one-patch region
            still gets a crop of several patches (32 = the COCO "small" side at S=1,024).
        max_local_crops: at most this many small regions of an image are re-clustered, the largest
            first; the rest are dropped and logged (the paper has no limit). A bound on the time of
            an image: a region costs a crop through the backbone and a merge (~12 ms on CPU), and
            features that barely correlate (noise, textures, a random backbone) leave one-patch
            regions by the thousand (1,482 in one synthetic 1,024 px image) where a typical image has
            ~70 (docs/benchmarks.md).
        min_subregion_area: local subregions smaller than this many pixels of the S x S image are
            dropped (the paper has no limit; 0 keeps all). The smallest crop (32 px, zoomed to S'
            = 256) clusters 1-px cells, so noise-like crop features give one subregion per pixel:
            over a million masks in that same image, which no NMS can compare pairwise. 16 px is a
            4 x 4 entity at S = 1,024, smaller than the 4 x 4 cell of a Mask2Former mask logit at
            1/4 resolution, so nothing the model could learn from is lost.
        refinement_iou_threshold: masks whose IoU between before and after refinement is below this
            are dropped as noisy (section 3.1 step 3 "remove the ones that have poor IoUs"; the paper
            gives no value; 0.5 drops a mask when refinement moved most of it, i.e. when the
            refiner disagrees with the clustering about where the entity is).
        min_mask_area: masks with fewer pixels at the original resolution are dropped after
            refinement (not in the paper; HASSOD's ``hac/hac.py`` drops masks under 100 px; 0 keeps
            all). Pixels of the original image, as in HASSOD: 31 px at S = 1,024 for an SA-1B
            image (the paper's data), but 341 px at S for a 640 x 480 one, where it also removes
            the local subregions below that; lower it for small images. See
            :mod:`~sohes_hf.pseudo_labeling.mask_cleanup`.
        max_mask_corners: masks containing more of the four image-corner pixels are dropped after
            refinement (not in the paper; HASSOD drops masks touching 3 or 4 corners: 2; 4 keeps
            all). The lowest merging thresholds unite the whole frame, or all of it but one
            side, into one region that would otherwise be the single root of every hierarchy,
            making every entity a part, while roots are "whole entities" (section 3.1 step 4).
        use_hole_filling: fill the holes of every kept mask (background not 4-connected to the
            image border) before the hierarchy (not in the paper; HASSOD does, with
            ``scipy.ndimage.binary_fill_holes``). Off by default: a background region's holes are
            the entities in front of it, and filled, it becomes their ancestor, so the entities
            are no longer roots (section 3.1 step 4); spurious small holes are CascadePSP's to
            repair from the image.
        coverage_threshold: theta_cover, fraction of a mask that must lie inside another mask for the
            latter to be its ancestor (section 3.1 step 4; appendix D: 0.9).
        feature_kind: which last-layer ViT feature is clustered: "keys" (default, as HASSOD and
            CutLER), "queries", "values" (of the last self-attention) or "tokens" (last hidden
            states after the final LayerNorm).
        min_image_side: images whose shorter side is below this many pixels are skipped as tiny.
        feature_batch_size: images (or local crops) per backbone forward pass.
        refiner: mask refinement backend: "cascadepsp" (paper, section 3.1 step 3) or "none".
        refinement_max_side: CascadePSP's ``L``: the side its global step works at (package
            default 900).
        refinement_fast: use CascadePSP's global step only (faster, coarser).
        refinement_batch_size: most mask crops (or local windows) of one shape per CascadePSP pass;
            1 runs one mask at a time like the package. Outputs do not depend on it (up to float
            rounding in batched convolutions); memory does: ~0.6 GB per crop at L = 900 in fp32.
        refinement_precision: CascadePSP's precision: "fp32" (the package's arithmetic and masks),
            "bf16" or "fp16" (autocast: faster on GPU tensor cores, boundaries may move slightly).
        precision: backbone compute precision: "auto" (bf16 on a GPU that supports it, else fp16 on
            GPU, fp32 on CPU), "fp32", "fp16" or "bf16" (autocast).
    """

    image_size: int = 1024
    merge_thresholds: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    nms_iou_threshold: float = 0.9
    small_region_area_ratio: float = 1.0 / 1024.0
    local_crop_size: int = 256
    local_crop_context: float = 2.0
    min_local_crop_side: int = 32
    max_local_crops: int = 256
    min_subregion_area: int = 16
    refinement_iou_threshold: float = 0.5
    min_mask_area: int = 100
    max_mask_corners: int = 2
    use_hole_filling: bool = False
    coverage_threshold: float = 0.9
    feature_kind: str = "keys"
    min_image_side: int = 32
    feature_batch_size: int = 8
    refiner: str = "cascadepsp"
    refinement_max_side: int = 900
    refinement_fast: bool = False
    refinement_batch_size: int = 8
    refinement_precision: str = "fp32"
    precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "merge_thresholds", tuple(float(t) for t in self.merge_thresholds))
        _check_int(self, "image_size", minimum=8)
        _check_int(self, "local_crop_size", minimum=8)
        _check_int(self, "min_local_crop_side", minimum=1)
        _check_int(self, "max_local_crops", minimum=0)
        _check_int(self, "min_subregion_area", minimum=0)
        _check_int(self, "min_image_side", minimum=1)
        _check_int(self, "feature_batch_size", minimum=1)
        _check_int(self, "refinement_max_side", minimum=8)
        _check_int(self, "min_mask_area", minimum=0)
        _check_int(self, "max_mask_corners", minimum=0)
        if self.max_mask_corners > 4:
            raise ValueError(f"max_mask_corners: must be an integer in [0, 4], got {self.max_mask_corners!r}")
        _check_int(self, "refinement_batch_size", minimum=1)
        thresholds = self.merge_thresholds
        if not thresholds:
            raise ValueError("merge_thresholds: need at least one threshold")
        if any(not math.isfinite(t) or not -1.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"merge_thresholds: cosine similarities must lie in [-1, 1], got {thresholds}")
        if any(a <= b for a, b in itertools.pairwise(thresholds)):
            raise ValueError(f"merge_thresholds: must be strictly decreasing, got {thresholds}")
        _check_fraction(self, "nms_iou_threshold", allow_zero=False)
        _check_fraction(self, "small_region_area_ratio", allow_zero=True)
        _check_fraction(self, "refinement_iou_threshold", allow_zero=True)
        _check_fraction(self, "coverage_threshold", allow_zero=False)
        if not isinstance(self.local_crop_context, int | float) or not self.local_crop_context >= 1.0:
            raise ValueError(f"local_crop_context: must be a number >= 1.0, got {self.local_crop_context!r}")
        _check_choice(self, "feature_kind", FEATURE_KINDS)
        _check_choice(self, "refiner", REFINER_BACKENDS)
        _check_choice(self, "precision", PRECISIONS)
        _check_choice(self, "refinement_precision", REFINER_PRECISIONS)
        for name in ("refinement_fast", "use_hole_filling"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (written next to the pseudo-labels for provenance)."""
        values = dataclasses.asdict(self)
        values["merge_thresholds"] = list(self.merge_thresholds)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SelfExplorationConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SelfExplorationConfig fields: {', '.join(unknown)}")
        return cls(**values)


def _check_int(config: SelfExplorationConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _check_fraction(config: SelfExplorationConfig, name: str, allow_zero: bool) -> None:
    value = getattr(config, name)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low_ok and value <= 1.0):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name}: must be a number in {interval}, got {value!r}")


def _check_choice(config: SelfExplorationConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")
