"""The SOHES model (paper section 3.2): configuration, model, output and image processor.

Importing this package registers ``SohesConfig`` with transformers' ``AutoConfig``,
``AutoModel`` and ``AutoImageProcessor`` (idempotent), so ``from_pretrained`` of a saved SOHES
directory works through the Auto classes.
"""

from __future__ import annotations

from .configuration_sohes import SohesConfig
from .image_processing_sohes import SohesImageProcessor, register_image_processor
from .modeling_sohes import (
    SohesForHierarchicalSegmentation,
    SohesModelOutput,
    SohesPreTrainedModel,
    register_auto_classes,
)

register_auto_classes()
register_image_processor()

__all__ = [
    "SohesConfig",
    "SohesForHierarchicalSegmentation",
    "SohesImageProcessor",
    "SohesModelOutput",
    "SohesPreTrainedModel",
    "register_auto_classes",
    "register_image_processor",
]
