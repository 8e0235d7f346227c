"""torchrun worker: each rank writes its normaliser and loss terms (used by test_distributed.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
from accelerate import PartialState
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from sohes_hf.modeling.modeling_sohes import num_masks_normaliser


def loss_terms(normaliser: torch.Tensor | Callable[[list[torch.Tensor]], torch.Tensor]) -> dict[str, float]:
    """Loss terms on one fixed image/targets (same seed on every rank)."""
    torch.manual_seed(0)
    criterion = Mask2FormerLoss(Mask2FormerConfig(num_labels=1, train_num_points=64), {})
    masks = torch.randn(1, 4, 16, 16)
    classes = torch.randn(1, 4, 2)
    mask_labels = [(torch.rand(3, 16, 16) > 0.5).float()]
    class_labels = [torch.zeros(3, dtype=torch.long)]
    indices = criterion.matcher(masks, classes, mask_labels, class_labels)
    num = normaliser(class_labels) if callable(normaliser) else normaliser
    terms = {
        **criterion.loss_masks(masks, mask_labels, indices, num),
        **criterion.loss_labels(classes, class_labels, indices),
    }
    return {k: float(v) for k, v in terms.items()}


def main() -> None:
    state = PartialState(cpu=True)  # initialises gloo; also what makes transformers' reduce active
    rank = state.process_index
    out = {"terms": loss_terms(lambda labels: num_masks_normaliser(labels, torch.device("cpu")))}
    counts = [2, 5]  # different mask counts per rank
    labels = [torch.zeros(counts[rank], dtype=torch.long), torch.zeros(1, dtype=torch.long)]
    out["normaliser"] = float(num_masks_normaliser(labels, torch.device("cpu")))
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as handle:
        json.dump(out, handle)
    dist.barrier()


if __name__ == "__main__":
    main()
