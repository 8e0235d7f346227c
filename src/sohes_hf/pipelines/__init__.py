"""transformers pipelines for SOHES.

:func:`register_pipeline` adds the ``"hierarchical-segmentation"`` task to
``transformers.pipeline`` (importing this package calls it);
:class:`HierarchicalSegmentationPipeline` is the implementation and :func:`as_tree` nests its
flat output. The implementation lives in :mod:`sohes_hf.modeling.pipeline_sohes` so that saved
model directories carry it for ``trust_remote_code=True`` (:func:`custom_pipeline_entry`).
"""

from __future__ import annotations

from sohes_hf.pipelines.hierarchical_segmentation import (
    TASK_NAME,
    HierarchicalSegmentationPipeline,
    as_tree,
    custom_pipeline_entry,
    load_image_input,
    register_pipeline,
)

register_pipeline()

__all__ = [
    "TASK_NAME",
    "HierarchicalSegmentationPipeline",
    "as_tree",
    "custom_pipeline_entry",
    "load_image_input",
    "register_pipeline",
]
