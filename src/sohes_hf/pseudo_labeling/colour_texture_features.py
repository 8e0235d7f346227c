"""Colour-texture patch features: an offline stand-in for DINO keys. NOT DINO.

Self-exploration (paper section 3.1) only needs, per 8 x 8 patch, a feature whose cosine
similarity is high inside an entity and falls off across boundaries, on the scale of the merge
thresholds theta_merge = 0.6 ... 0.1 (appendix A). Where DINO ViT-B/8 weights cannot be
downloaded, this extractor gives such features from appearance alone, so the whole method can
run and be measured on a domain where appearance decides the hierarchy (the synthetic scenes of
:mod:`sohes_hf.data.synthetic`). On real photographs it knows nothing of objects: it groups by
colour and texture, like a classical superpixel method.

Per patch it describes the input pixels that fall into the patch cell (computed at the image's
own resolution, so a zoomed-in local crop is described by its real pixels):

* colour: mean and standard deviation of CIELAB L, a, b (perceptual units);
* texture: mean gradient magnitude of L (local contrast) and the doubled-angle orientation
  vector of the gradients, the first harmonic of an orientation histogram (stripes vs. none);
* context: the colour mean over the surrounding 3 x 3 patches (a second scale, down-weighted),
  which, like the context a ViT mixes into every token, pulls the parts of one entity together
  (on the synthetic scenes AR 0.368 with it vs. 0.347 without, benchmarks/benchmark_synthetic.py
  --parts ablation).

The descriptor ``x`` (in Lab units) is mapped to ``C`` random Fourier features of the Laplacian
kernel (Rahimi and Recht, 2007): ``phi(x) = sqrt(2 / C) cos(W x + b)`` with ``W`` drawn once
from a fixed seed as multivariate Cauchy rows of scale ``1 / bandwidth``, so that
``phi(x) . phi(y) ~ exp(-|x - y| / bandwidth)`` (error about ``1 / sqrt(C)``). Every feature has
norm ~1, so the cosine the merge uses (:mod:`~sohes_hf.pseudo_labeling.merge`) is this kernel:
patches of one region score 0.7-0.95 as DINO keys of one object do, and two regions fall below
threshold ``t`` once their descriptors are ``bandwidth * ln(1 / t)`` apart: 15 Lab units at 0.6,
69 at 0.1 for the default bandwidth of 30. The merge's area-weighted mean of raw features is then
the kernel mean embedding of a region, and the cosine of two regions their normalised mean
kernel, so merged regions compare as distributions of appearance. The map is fixed and
data-independent; it is not a network and not learned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

#: The ``--backbone`` value that selects this extractor in ``sohes explore``.
COLOUR_TEXTURE_BACKBONE = "colour-texture"

_DESCRIPTOR_SIZE = 12  # Lab mean (3), Lab std (3), contrast (1), orientation (2), context Lab mean (3)


class ColourTextureFeatureExtractor:
    """Per-8-px-patch colour and texture statistics embedded for cosine merging (not DINO).

    Args:
        num_features: C, channels of the output (random Fourier features); more gives a closer
            kernel approximation (error ~ 1 / sqrt(C)) and a slower merge.
        bandwidth: Laplacian-kernel scale in Lab units: two descriptors this far apart have cosine
            similarity ~ 1/e.
        std_weight: weight of the colour standard deviations (texture strength) in the descriptor.
        texture_weight: weight of the gradient statistics (L units per pixel).
        context_weight: weight of the 3 x 3-patch context colour (0 turns it off).
        seed: seed of the fixed Fourier frequencies (part of the feature's definition).
        device: where a refiner placed beside this backbone should run (``sohes explore`` puts
            CascadePSP there); default CUDA when available, else CPU. The features themselves are
            always computed with NumPy/OpenCV on the CPU.

    Attributes:
        patch_size: 8, as DINO ViT-B/8.
        device: the ``device`` above, as a ``torch.device``.
    """

    patch_size = 8

    def __init__(
        self,
        num_features: int = 384,
        bandwidth: float = 30.0,
        std_weight: float = 1.0,
        texture_weight: float = 1.0,
        context_weight: float = 0.5,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 2:
            raise ValueError(f"num_features: must be an integer >= 2, got {num_features!r}")
        for name, value in (
            ("bandwidth", bandwidth),
            ("std_weight", std_weight),
            ("texture_weight", texture_weight),
            ("context_weight", context_weight),
        ):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        if bandwidth <= 0:
            raise ValueError(f"bandwidth: must be positive, got {bandwidth!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.feature_dim = num_features
        self.bandwidth = float(bandwidth)
        self.weights = np.array(
            [1.0] * 3 + [std_weight] * 3 + [texture_weight] * 3 + [context_weight] * 3, dtype=np.float64
        )
        rng = np.random.default_rng(seed)
        gaussian = rng.standard_normal((_DESCRIPTOR_SIZE, num_features))
        scale = np.abs(rng.standard_normal(num_features))  # Cauchy rows: N(0, I) / |N(0, 1)|
        self.frequencies = (gaussian / np.maximum(scale, 1e-6) / self.bandwidth).astype(np.float32)
        self.phases = rng.uniform(0.0, 2.0 * math.pi, num_features).astype(np.float32)

    def __call__(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        return self.extract(images, size)

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        """Features of the images as if resized to ``size`` x ``size``.

        Args:
            images: RGB images (H, W, 3) uint8, any sizes.
            size: side of the working image; a multiple of 8.

        Returns:
            (B, size/8, size/8, C) float32 features.
        """
        if size % self.patch_size != 0 or size < self.patch_size:
            raise ValueError(f"size: must be a positive multiple of the patch size 8, got {size}")
        grid = size // self.patch_size
        if len(images) == 0:
            return np.zeros((0, grid, grid, self.feature_dim), dtype=np.float32)
        return np.stack([self.embed(self.descriptors(image, grid)) for image in images])

    def descriptors(self, image: np.ndarray, grid: int) -> np.ndarray:
        """(grid, grid, 12) weighted descriptors of the patch cells of ``image`` (Lab units).

        The cell statistics are moments of per-pixel maps averaged over each cell (area
        interpolation); when a cell is smaller than a pixel (a zoomed crop) the maps are first
        averaged over 3 x 3 pixels and interpolated bilinearly, so a cell still sees a neighbourhood.
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"images: expected an (H, W, 3) uint8 array, got shape {getattr(image, 'shape', None)}"
            )
        lab = cv2.cvtColor(
            np.ascontiguousarray(image, dtype=np.uint8).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab
        )
        lightness = lab[..., 0]
        gx = cv2.Sobel(lightness, cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(lightness, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        magnitude = np.sqrt(gx * gx + gy * gy)
        # Doubled angle: a gradient and its opposite (both sides of a stripe) point the same way.
        cos2 = np.where(magnitude > 1e-6, (gx * gx - gy * gy) / np.maximum(magnitude, 1e-6), 0.0)
        sin2 = np.where(magnitude > 1e-6, 2.0 * gx * gy / np.maximum(magnitude, 1e-6), 0.0)
        maps = np.concatenate(
            [lab, lab * lab, magnitude[..., None], cos2[..., None], sin2[..., None]], axis=2
        ).astype(np.float32)
        height, width = lightness.shape
        if grid <= min(height, width):
            cells = cv2.resize(maps, (grid, grid), interpolation=cv2.INTER_AREA)
        else:
            cells = cv2.resize(cv2.blur(maps, (3, 3)), (grid, grid), interpolation=cv2.INTER_LINEAR)
        mean = cells[..., 0:3]
        std = np.sqrt(np.maximum(cells[..., 3:6] - mean * mean, 0.0))
        context = cv2.blur(mean, (3, 3), borderType=cv2.BORDER_REFLECT)
        descriptor = np.concatenate([mean, std, cells[..., 6:9], context], axis=2)
        return (descriptor * self.weights).astype(np.float32)

    def embed(self, descriptors: np.ndarray) -> np.ndarray:
        """Random Fourier features (..., C) of (..., 12) descriptors: cosine ~ Laplacian kernel."""
        projected = descriptors @ self.frequencies + self.phases
        return (math.sqrt(2.0 / self.feature_dim) * np.cos(projected)).astype(np.float32)
