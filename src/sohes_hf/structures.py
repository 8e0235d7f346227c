"""Shared result types: one segmented entity of a hierarchy forest, and helpers to walk the forest.

SOHES predicts a *forest* per image (paper section 3.2): roots are whole entities, their
descendants are parts and subparts. Post-processing returns a flat list of
:class:`SegmentedEntity` ordered so that every parent precedes its children; ``parent_id`` and
``children`` are indices into that same list. :func:`entity_tree` gives the nested view.

This is the public import path. The implementation lives in :mod:`sohes_hf.modeling.structures`
so that ``save_pretrained`` can copy it next to the image processor for
``trust_remote_code=True`` (see ``docs/inference.md``).
"""

from __future__ import annotations

from sohes_hf.modeling.structures import EntityNode, SegmentedEntity, entity_tree

__all__ = ["EntityNode", "SegmentedEntity", "entity_tree"]
