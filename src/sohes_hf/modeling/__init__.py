"""The SOHES model (paper section 3.2): configuration, model and its output."""

from __future__ import annotations

from .configuration_sohes import SohesConfig
from .modeling_sohes import (
    SohesForHierarchicalSegmentation,
    SohesModelOutput,
    SohesPreTrainedModel,
    register_auto_classes,
)

__all__ = [
    "SohesConfig",
    "SohesForHierarchicalSegmentation",
    "SohesModelOutput",
    "SohesPreTrainedModel",
    "register_auto_classes",
]
from .image_processing_sohes import SohesImageProcessor as SohesImageProcessor
