"""The ``"hierarchical-segmentation"`` pipeline: public import path and task registration.

The implementation, :class:`HierarchicalSegmentationPipeline` and its helpers, lives in
:mod:`sohes_hf.modeling.pipeline_sohes`: ``save_pretrained`` copies that file into every saved
model directory so the pipeline also loads with ``trust_remote_code=True`` where sohes-hf is not
installed (``docs/inference.md``). This module re-exports it and adds :func:`register_pipeline`.

Usage::

    import sohes_hf
    from transformers import pipeline

    segmenter = pipeline("hierarchical-segmentation", model="path/or/hub-id")
    entities = segmenter("photo.jpg", threshold=0.5)         # list[dict], parents first
    forest = as_tree(entities)                                # nested dicts, roots first
"""

from __future__ import annotations

from typing import Any

from sohes_hf.modeling.pipeline_sohes import (
    OUTPUT_FORMATS,
    TASK_NAME,
    HierarchicalSegmentationPipeline,
    as_tree,
    custom_pipeline_entry,
    load_image_input,
)


class _PackagePipelineServesTask:
    """``SohesConfig.custom_pipelines`` while sohes-hf's own pipeline is registered.

    Saved SOHES configs name the copied pipeline file in ``custom_pipelines`` (for users without
    the package). ``transformers.pipeline`` gives that entry precedence over registered tasks and
    then demands ``trust_remote_code=True``, even though the installed package serves the task.
    Reading the attribute through this descriptor returns ``{}``, so the registered
    :class:`HierarchicalSegmentationPipeline` is used, which is the rule transformers applies to
    the Auto classes (registered local code wins over a repository's copy). Writes still land in
    the instance ``__dict__``, so ``to_dict``/``save_pretrained`` keep the entry.
    """

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return {}

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__["custom_pipelines"] = value


def register_pipeline() -> None:
    """Registers the ``"hierarchical-segmentation"`` task with ``transformers.pipeline``.

    Also registers the SOHES config, model and image processor with the Auto classes, which
    ``pipeline(..., model=<dir or hub id>)`` needs to load them, and makes the installed pipeline
    serve SOHES configs that carry a ``custom_pipelines`` entry (see
    :class:`_PackagePipelineServesTask`). The model is loaded through ``AutoModel``, the form
    ``custom_pipelines`` needs (``pt`` names a transformers class). Safe to call more than once.
    """
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from sohes_hf.modeling import SohesConfig, register_auto_classes, register_image_processor

    register_auto_classes()
    register_image_processor()
    if not isinstance(SohesConfig.__dict__.get("custom_pipelines"), _PackagePipelineServesTask):
        SohesConfig.custom_pipelines = _PackagePipelineServesTask()  # type: ignore[attr-defined]
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK_NAME)
    if current is not None and current.get("impl") is HierarchicalSegmentationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK_NAME, pipeline_class=HierarchicalSegmentationPipeline, pt_model=AutoModel, type="image"
    )


__all__ = [
    "OUTPUT_FORMATS",
    "TASK_NAME",
    "HierarchicalSegmentationPipeline",
    "as_tree",
    "custom_pipeline_entry",
    "load_image_input",
    "register_pipeline",
]
