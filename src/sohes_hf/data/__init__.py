"""Data layer: SA-1B packs, pseudo-label stores, training builders, COCO-style evaluation sets.

The names below are the public API. They are resolved on first access (PEP 562), so importing a
light submodule such as ``sohes_hf.data.image_sources`` does not import datasets or pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sohes_hf.data.builder import (
        PSEUDO_LABEL_FEATURES,
        ImageFolderPseudoLabelBuilder,
        ImageFolderPseudoLabelConfig,
        JoinStats,
        SA1BPseudoLabelBuilder,
        SA1BPseudoLabelConfig,
        example_targets,
    )
    from sohes_hf.data.coco_datasets import CocoGroundTruth, GroundTruthImage, load_coco_ground_truth
    from sohes_hf.data.converters import ade20k_instances_to_coco, make_sa1b_eval_split
    from sohes_hf.data.pseudo_label_store import (
        ArrowPseudoLabelStore,
        ImagePseudoLabels,
        JsonPseudoLabelStore,
        ParquetPseudoLabelStore,
        PseudoLabel,
        convert_pseudo_labels,
        open_pseudo_label_store,
        targets_for_image,
    )
    from sohes_hf.data.sa1b import (
        DEFAULT_MAX_IMAGE_PIXELS,
        DataIssue,
        ReadReport,
        SA1BFormatError,
        iter_sa1b_images,
        iter_sa1b_records,
        read_links_file,
    )
    from sohes_hf.data.synthetic import SyntheticDataset, make_synthetic_dataset

_EXPORTS = {
    "sohes_hf.data.builder": (
        "PSEUDO_LABEL_FEATURES",
        "ImageFolderPseudoLabelBuilder",
        "ImageFolderPseudoLabelConfig",
        "JoinStats",
        "SA1BPseudoLabelBuilder",
        "SA1BPseudoLabelConfig",
        "example_targets",
    ),
    "sohes_hf.data.coco_datasets": ("CocoGroundTruth", "GroundTruthImage", "load_coco_ground_truth"),
    "sohes_hf.data.converters": ("ade20k_instances_to_coco", "make_sa1b_eval_split"),
    "sohes_hf.data.pseudo_label_store": (
        "ArrowPseudoLabelStore",
        "ImagePseudoLabels",
        "JsonPseudoLabelStore",
        "ParquetPseudoLabelStore",
        "PseudoLabel",
        "convert_pseudo_labels",
        "open_pseudo_label_store",
        "targets_for_image",
    ),
    "sohes_hf.data.sa1b": (
        "DEFAULT_MAX_IMAGE_PIXELS",
        "DataIssue",
        "ReadReport",
        "SA1BFormatError",
        "iter_sa1b_images",
        "iter_sa1b_records",
        "read_links_file",
    ),
    "sohes_hf.data.synthetic": ("SyntheticDataset", "make_synthetic_dataset"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "PSEUDO_LABEL_FEATURES",
    "ArrowPseudoLabelStore",
    "CocoGroundTruth",
    "DataIssue",
    "GroundTruthImage",
    "ImageFolderPseudoLabelBuilder",
    "ImageFolderPseudoLabelConfig",
    "ImagePseudoLabels",
    "JoinStats",
    "JsonPseudoLabelStore",
    "ParquetPseudoLabelStore",
    "PseudoLabel",
    "ReadReport",
    "SA1BFormatError",
    "SA1BPseudoLabelBuilder",
    "SA1BPseudoLabelConfig",
    "SyntheticDataset",
    "ade20k_instances_to_coco",
    "convert_pseudo_labels",
    "example_targets",
    "iter_sa1b_images",
    "iter_sa1b_records",
    "load_coco_ground_truth",
    "make_sa1b_eval_split",
    "make_synthetic_dataset",
    "open_pseudo_label_store",
    "read_links_file",
    "targets_for_image",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'sohes_hf.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
