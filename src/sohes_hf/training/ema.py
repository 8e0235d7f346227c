"""The EMA teacher of self-correction (paper section 3.3, appendix A: m = 0.9995).

After every optimizer step the teacher becomes ``m * teacher + (1 - m) * student``, parameter by
parameter (floating-point buffers alike). We use timm's ``ModelEmaV3`` with a fixed decay (no
warm-up, ``step`` not passed), which is exactly that update: ``teacher.lerp_(student, 1 - m)``.

The teacher has gradients off: it is never optimised, only averaged, so tracking gradients
through its forward pass would build an autograd graph (activations of a full ViT-B/8 model at
1024 px) for nothing, and a stray ``backward`` could never reach it by mistake. Its pseudo-labels
are targets, and targets must be constants for the student's loss. It also stays in eval mode
(dropout off) so its predictions are deterministic given its weights.

The teacher is created from the *unwrapped* student before ``accelerator.prepare`` wraps it, and
updated from the unwrapped student, so DDP's ``module.`` prefix never enters its state dict.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3


class EmaTeacher(ModelEmaV3):
    """``ModelEmaV3`` with a constant momentum and gradients off (see module doc).

    Args:
        student: the model to copy (deep copy) and then follow.
        momentum: m in (0, 1).

    Raises:
        ValueError: ``momentum`` outside (0, 1).
    """

    def __init__(self, student: torch.nn.Module, momentum: float) -> None:
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"ema_momentum must be in (0, 1), got {momentum}")
        super().__init__(student, decay=momentum, use_warmup=False)
        self.module.requires_grad_(False)
        self.module.eval()

    @property
    def momentum(self) -> float:
        """m of eq. teacher <- m teacher + (1 - m) student."""
        return float(self.decay)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int | None = None) -> None:
        """One EMA step with the constant momentum (``step`` is ignored on purpose: no warm-up)."""
        self.apply_update_(model, self.decay)

    def train(self, mode: bool = True) -> EmaTeacher:
        """Keeps the teacher in eval mode whatever the caller asks (dropout stays off)."""
        super().train(False)
        return self
