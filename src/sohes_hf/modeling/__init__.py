"""The SOHES model (paper section 3.2): configuration, model, output and image processor.

The names below are imported on first use, and that first use registers ``SohesConfig`` with
transformers' ``AutoConfig``, ``AutoModel`` and ``AutoImageProcessor`` (idempotent), so
``from_pretrained`` of a saved SOHES directory works through the Auto classes.

Importing a submodule alone (``sohes_hf.modeling.masks``, ``.structures``, ``.forest``,
``.targets``) stays cheap: it loads neither torch nor transformers. Those modules live here, not
at the package top level, because ``save_pretrained`` copies the model, processor and pipeline
code *with their same-folder imports* flat into the saved directory, so it loads with
``trust_remote_code=True`` where sohes-hf is not installed (``docs/inference.md``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> submodule that defines it.
_LAZY_EXPORTS: dict[str, str] = {
    "SohesConfig": "configuration_sohes",
    "SohesForHierarchicalSegmentation": "modeling_sohes",
    "SohesImageProcessor": "image_processing_sohes",
    "SohesModelOutput": "modeling_sohes",
    "SohesPreTrainedModel": "modeling_sohes",
    "register_auto_classes": "modeling_sohes",
    "register_image_processor": "image_processing_sohes",
}

if TYPE_CHECKING:
    from .configuration_sohes import SohesConfig
    from .image_processing_sohes import SohesImageProcessor, register_image_processor
    from .modeling_sohes import (
        SohesForHierarchicalSegmentation,
        SohesModelOutput,
        SohesPreTrainedModel,
        register_auto_classes,
    )

__all__ = [
    "SohesConfig",
    "SohesForHierarchicalSegmentation",
    "SohesImageProcessor",
    "SohesModelOutput",
    "SohesPreTrainedModel",
    "register_auto_classes",
    "register_image_processor",
]

_registered = False


def _register() -> None:
    """Registers the SOHES classes with the transformers Auto classes, once."""
    global _registered
    if not _registered:
        importlib.import_module(f"{__name__}.modeling_sohes").register_auto_classes()
        importlib.import_module(f"{__name__}.image_processing_sohes").register_image_processor()
        _registered = True


def __getattr__(name: str) -> Any:
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _register()
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value
