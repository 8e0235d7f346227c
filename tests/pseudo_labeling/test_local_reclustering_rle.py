"""The grid-based RLE of a pasted crop mask equals pycocotools' encoding of the pasted array.

``local_reclustering.window_rle`` (paper section 3.1, step 2) builds the S x S RLE of a
subregion from its crop grid without the S x S array; pycocotools (through
``sohes_hf.masks.encode_mask``) encoding ``paste_grid_mask``'s array is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from sohes_hf.masks import encode_mask
from sohes_hf.pseudo_labeling.local_reclustering import CropWindow, paste_grid_mask, window_rle


@pytest.mark.parametrize("seed", range(6))
def test_window_rle_matches_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image_size = 96
    for _ in range(40):
        grid = int(rng.integers(1, 12))
        side = int(rng.integers(1, image_size + 1))  # also smaller than the grid
        x0 = int(rng.choice([0, image_size - side, int(rng.integers(0, image_size - side + 1))]))
        y0 = int(rng.choice([0, image_size - side, int(rng.integers(0, image_size - side + 1))]))
        window = CropWindow(x0=x0, y0=y0, side=side)
        grid_mask = rng.random((grid, grid)) < rng.uniform(0.05, 0.95)
        if rng.random() < 0.2:
            grid_mask[:] = rng.random() < 0.5  # all or nothing
        full = paste_grid_mask(grid_mask, window, image_size)
        got = window_rle(grid_mask, window, image_size)
        if not full.any():
            assert got is None
        else:
            assert got == encode_mask(full)
