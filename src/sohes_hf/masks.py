"""Mask toolkit: binary masks, COCO run-length encoding (RLE), areas, boxes, overlaps and NMS.

Every phase of SOHES handles large sets of masks: self-exploration pools hundreds of candidate
regions per image (paper section 3.1), the hierarchy tests pixel coverage between every pair
(section 3.1, step 4), and evaluation matches up to 1,000 predictions per image (section 4.1).
Everything works on COCO RLE through pycocotools' C routines and decodes only when asked.

Conventions:
    * An RLE is ``{"size": [height, width], "counts": str}``: compressed counts as a JSON-safe
      ``str`` (pycocotools uses ``bytes``; both are accepted as input, ``str`` is returned).
    * Binary masks are ``bool`` arrays of shape (H, W), or (N, H, W) for a stack.
    * Boxes are XYWH in pixels, float64, as COCO writes them.

This is the public import path. The implementation lives in :mod:`sohes_hf.modeling.masks`
because the image processor and the pipeline need it in the files that ``save_pretrained``
copies into a model repository for ``trust_remote_code=True`` (see ``docs/inference.md``);
importing it does not import torch or transformers.
"""

from __future__ import annotations

from sohes_hf.modeling.masks import (
    RLE,
    decode_mask,
    decode_masks,
    encode_mask,
    encode_masks,
    encode_rle_counts,
    intersection_areas,
    mask_areas,
    mask_boxes_xywh,
    mask_nms,
    normalize_rle,
    normalize_rles,
    pairwise_coverage,
    pairwise_iou,
)

__all__ = [
    "RLE",
    "decode_mask",
    "decode_masks",
    "encode_mask",
    "encode_masks",
    "encode_rle_counts",
    "intersection_areas",
    "mask_areas",
    "mask_boxes_xywh",
    "mask_nms",
    "normalize_rle",
    "normalize_rles",
    "pairwise_coverage",
    "pairwise_iou",
]
