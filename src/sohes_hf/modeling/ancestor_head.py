"""Ancestor prediction head and its loss: SOHES paper section 3.2, Figure 4, equation (1).

    P_hat = sigmoid((Q W1) (Q W2)^T / sqrt(C))

``Q`` (N x C) are the decoder's query features; ``P_hat[i, j]`` is the probability that the
mask of query ``i`` is an ancestor of the mask of query ``j``. Two different maps ``W1``, ``W2``
make the relation asymmetric (an ancestor is not its descendant's descendant).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SohesAncestorHead(nn.Module):
    """Equation (1) without the sigmoid: returns logits so the loss can use the stable BCE.

    Args:
        hidden_dim: Query feature dimension ``C``.
    """

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        # Bias-free C x C maps, as in equation (1). nn.Linear computes Q @ weight.T, so W1 = weight.T.
        self.ancestor_projection = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.descendant_projection = nn.Linear(hidden_dim, hidden_dim, bias=False)

    def forward(self, query_features: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` query features -> ``(B, N, N)`` ancestor logits (pre-sigmoid)."""
        ancestors = self.ancestor_projection(query_features)
        descendants = self.descendant_projection(query_features)
        return ancestors @ descendants.transpose(-1, -2) / math.sqrt(self.hidden_dim)


def ancestor_loss(
    ancestor_logits: torch.Tensor,
    ancestor_labels: list[torch.Tensor],
    indices: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """BCE between predicted and target ancestor relations of matched queries (section 3.2).

    Only queries matched to a target by the Hungarian matcher are supervised: the relation
    between two queries is defined through the targets they stand for. For an image with
    matches ``(src_k, tgt_k)``, the predicted ``logits[src_a, src_b]`` is compared with
    ``ancestor_labels[tgt_a, tgt_b]`` for every ordered pair ``a != b``. The diagonal is left
    out (a mask is never its own ancestor, and inference never reads it), so an image with 0 or
    1 matched targets contributes no pairs. The BCE is averaged over all pairs of the batch; a
    batch without pairs gives 0 (still attached to the graph so backward works).

    Args:
        ancestor_logits: ``(B, N, N)`` pre-sigmoid predictions.
        ancestor_labels: per image ``(M_i, M_i)``, 1 where target ``i`` is an ancestor of ``j``.
        indices: per image ``(query_indices, target_indices)``, as returned by
            ``Mask2FormerHungarianMatcher``.

    Returns:
        Scalar loss.
    """
    predictions = []
    targets = []
    for logits, labels, (query_index, target_index) in zip(
        ancestor_logits, ancestor_labels, indices, strict=True
    ):
        num_matched = len(query_index)
        if num_matched < 2:
            continue
        query_index = query_index.to(logits.device)
        target_index = target_index.to(labels.device)
        off_diagonal = ~torch.eye(num_matched, dtype=torch.bool, device=logits.device)
        predictions.append(logits[query_index][:, query_index][off_diagonal])
        matched_labels = labels[target_index][:, target_index].to(logits.device, logits.dtype)
        targets.append(matched_labels[off_diagonal])
    if not predictions:
        return ancestor_logits.new_zeros(()) + 0.0 * ancestor_logits.sum()  # +0.0, keeps the graph
    return nn.functional.binary_cross_entropy_with_logits(torch.cat(predictions), torch.cat(targets))
