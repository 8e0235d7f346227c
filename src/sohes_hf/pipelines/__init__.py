"""transformers pipelines for SOHES.

:func:`register_pipeline` adds the ``"hierarchical-segmentation"`` task to
``transformers.pipeline`` (importing this package calls it);
:class:`HierarchicalSegmentationPipeline` is the implementation and :func:`as_tree` nests its
flat output.
"""

from __future__ import annotations

from sohes_hf.pipelines.hierarchical_segmentation import (
    TASK_NAME,
    HierarchicalSegmentationPipeline,
    as_tree,
    load_image_input,
    register_pipeline,
)

register_pipeline()

__all__ = [
    "TASK_NAME",
    "HierarchicalSegmentationPipeline",
    "as_tree",
    "load_image_input",
    "register_pipeline",
]
