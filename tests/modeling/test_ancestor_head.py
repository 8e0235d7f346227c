"""Ancestor head and loss against equation (1) and BCE written out by hand (paper section 3.2)."""

from __future__ import annotations

import math

import pytest
import torch

from sohes_hf.modeling.ancestor_head import SohesAncestorHead, ancestor_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_head_is_equation_one() -> None:
    torch.manual_seed(0)
    head = SohesAncestorHead(hidden_dim=8)
    queries = torch.randn(2, 5, 8)
    w1 = head.ancestor_projection.weight.T  # Q W1 with nn.Linear storing W1^T
    w2 = head.descendant_projection.weight.T
    expected = torch.sigmoid((queries @ w1) @ (queries @ w2).transpose(1, 2) / math.sqrt(8))
    assert head.ancestor_projection.bias is None and head.descendant_projection.bias is None
    torch.testing.assert_close(torch.sigmoid(head(queries)), expected)
    # Asymmetric: P[i, j] != P[j, i] in general.
    assert not torch.allclose(expected, expected.transpose(1, 2))


def _bce(logit: float, label: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(label * math.log(p) + (1.0 - label) * math.log(1.0 - p))


def test_loss_uses_matched_pairs_off_the_diagonal() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 6)
    labels = [
        torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 0.0], [1.0, 0.0]]),
    ]
    indices = [
        (torch.tensor([4, 0, 2]), torch.tensor([2, 0, 1])),
        (torch.tensor([5, 1]), torch.tensor([0, 1])),
    ]
    total, count = 0.0, 0
    for b, (queries, targets) in enumerate(indices):
        for a in range(len(queries)):
            for c in range(len(queries)):
                if a != c:
                    label = labels[b][targets[a], targets[c]].item()
                    total += _bce(logits[b, queries[a], queries[c]].item(), label)
                    count += 1
    assert count == 6 + 2
    torch.testing.assert_close(ancestor_loss(logits, labels, indices), torch.tensor(total / count))


def test_images_with_fewer_than_two_matches_contribute_nothing() -> None:
    logits = torch.randn(2, 4, 4, requires_grad=True)
    labels = [torch.zeros(1, 1), torch.zeros(0, 0)]
    indices = [(torch.tensor([3]), torch.tensor([0])), (torch.zeros(0, dtype=torch.long),) * 2]
    loss = ancestor_loss(logits, labels, indices)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0
