"""sohes-hf: SOHES (Cao et al., ICLR 2024) as a Hugging Face-native package.

Self-supervised Open-world Hierarchical Entity Segmentation in three phases:
self-exploration (:mod:`sohes_hf.pseudo_labeling`), self-instruction and
self-correction (:mod:`sohes_hf.training`), with the model in :mod:`sohes_hf.modeling`
and the metric in :mod:`sohes_hf.evaluation`.
"""

from __future__ import annotations

__version__ = "0.1.0"
