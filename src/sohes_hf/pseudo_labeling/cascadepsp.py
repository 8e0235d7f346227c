"""CascadePSP's global and local refinement steps on many crops per network pass (section 3.1 step 3).

The algorithm is CascadePSP's (Cheng et al., "CascadePSP: Toward Class-Agnostic and Very
High-Resolution Segmentation via Global and Local Refinement", CVPR 2020) as its authors'
``segmentation-refinement`` package (v0.6, ``eval_helper.py``) runs it on one image and one mask:

* global step: image and mask resized so the longer side is ``L`` (area when shrinking, bicubic /
  bilinear when growing), padded to a multiple of 8 (image 0, mask -1), three cascaded passes of
  the network;
* local step (skipped in fast mode): at the crop's own resolution, ``L`` x ``L`` windows every
  ``L // 2 - 32`` pixels; a window whose global prediction is over 90 % or under 10 % foreground
  is skipped, the others go through the last two passes with the global prediction as the coarse
  input, and their outputs, less a 16 px margin on inner sides, are averaged; pixels no window
  covers keep the global prediction.

The package feeds one window of one mask to the network at a time. Here every resize, window, skip
rule, padding and average is the package's, per crop, but the network sees a batch of crops whose
padded inputs share one shape (eval-mode BatchNorm and pooling act per sample, so batching changes
nothing but float rounding inside batched convolutions). tests/pseudo_labeling/test_cascadepsp.py
checks the probabilities against ``segmentation_refinement.Refiner.refine``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LOCAL_MARGIN = 16  # pixels of a window's inner sides dropped before averaging
_FOREGROUND_HIGH = 0.9  # windows whose global prediction is above / below this are skipped
_FOREGROUND_LOW = 0.1


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 with ImageNet statistics, as the package's transform."""
    pixels = image.permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=image.device)[:, None, None]
    return pixels.sub(mean).div(std)


def mask_to_input(mask: torch.Tensor) -> torch.Tensor:
    """(h, w) bool -> (1, h, w) float32 in {-1, 1}, the package's mask encoding."""
    return mask.to(torch.float32).mul(2).sub(1).unsqueeze(0)


def binarize(probabilities: torch.Tensor) -> torch.Tensor:
    """Foreground where the package's uint8 output (``prob * 255`` truncated) exceeds 127."""
    return probabilities.mul(255).to(torch.uint8) > 127


def refine_crops(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    max_side: int,
    fast: bool,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Refines each mask on its image crop; returns (h, w) float32 foreground probabilities.

    Args:
        model: CascadePSP's ``RefinementModule`` in eval mode, on the crops' device.
        images: N crops (3, h_i, w_i) from :func:`normalize_image`.
        masks: N masks (1, h_i, w_i) from :func:`mask_to_input`.
        max_side: ``L``, the side of the global step and of the local windows.
        fast: global step only.
        batch_size: most crops (or windows) per network pass.
        autocast_dtype: run the network under autocast in this dtype (``None``: float32, the
            package's arithmetic); everything around it stays float32.
    """
    if len(images) != len(masks):
        raise ValueError(f"masks: got {len(masks)} for {len(images)} images")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    with torch.inference_mode():
        network = _Network(model, batch_size, autocast_dtype)
        if fast:
            return _fast_step(network, images, masks, max_side)
        coarse = _global_step(network, images, masks, max_side)
        return _local_step(network, images, coarse, max_side)


@dataclass
class _Pass:
    """One network input: image (3, h, w), mask (1, h, w), optional coarse prediction (1, h, w)."""

    image: torch.Tensor
    mask: torch.Tensor
    coarse: torch.Tensor | None = None


@dataclass
class _Coarse:
    """A crop's global prediction at its own size, in {-1, 1} (``r_pred_224``) and [-1, 1] (``r_pred_56``)."""

    fine: torch.Tensor
    intermediate: torch.Tensor


@dataclass(frozen=True)
class _Window:
    """A local-step window ``[y0:y1, x0:x1]`` and where its output is pasted (margins removed)."""

    y0: int
    y1: int
    x0: int
    x1: int
    paste: tuple[slice, slice]
    source: tuple[slice, slice]


def _resize_max_side(tensor: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """(C, h, w) resized by ``side / max(h, w)`` with the scale factor itself, as the package does."""
    ratio = side / max(tensor.shape[-2:])
    batch = tensor.unsqueeze(0)
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(batch, scale_factor=ratio, mode=mode, align_corners=False)[0]
    return F.interpolate(batch, scale_factor=ratio, mode=mode)[0]


def _to_global_size(
    image: torch.Tensor, mask: torch.Tensor, max_side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and mask resized for the global step (longer side ``max_side``), as the package does."""
    longest = max(mask.shape[-2:])
    if longest > max_side:
        return _resize_max_side(image, max_side, "area"), _resize_max_side(mask, max_side, "area")
    if longest < max_side:
        return _resize_max_side(image, max_side, "bicubic"), _resize_max_side(mask, max_side, "bilinear")
    return image, mask


def _fast_step(
    network: _Network,
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    max_side: int,
) -> list[torch.Tensor]:
    passes = [
        _Pass(*_to_global_size(image, mask, max_side)) for image, mask in zip(images, masks, strict=True)
    ]
    results: list[torch.Tensor] = [torch.empty(0)] * len(passes)
    for index, outputs in network.run(passes, ("pred_224",)):
        prediction = outputs["pred_224"]
        size = tuple(masks[index].shape[-2:])
        longest = max(size)
        if longest < max_side:
            prediction = F.interpolate(prediction[None], size=size, mode="area")[0]
        elif longest > max_side:
            prediction = F.interpolate(prediction[None], size=size, mode="bilinear", align_corners=True)[0]
        results[index] = prediction[0]
    return results


def _global_step(
    network: _Network,
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    max_side: int,
) -> list[_Coarse]:
    passes = [
        _Pass(*_to_global_size(image, mask, max_side)) for image, mask in zip(images, masks, strict=True)
    ]
    coarse: list[_Coarse] = [_Coarse(torch.empty(0), torch.empty(0))] * len(passes)
    for index, outputs in network.run(passes, ("pred_224", "pred_56_2")):
        size = tuple(masks[index].shape[-2:])
        fine = F.interpolate(outputs["pred_224"][None], size=size, mode="bilinear", align_corners=False)[0]
        intermediate = F.interpolate(
            outputs["pred_56_2"][None], size=size, mode="bilinear", align_corners=False
        )[0]
        coarse[index] = _Coarse(fine=(fine > 0.5).float() * 2 - 1, intermediate=intermediate * 2 - 1)
    return coarse


def _local_step(
    network: _Network,
    images: Sequence[torch.Tensor],
    coarse: Sequence[_Coarse],
    max_side: int,
) -> list[torch.Tensor]:
    # The package's local step first resizes the crop to its own longest side (area, a no-op copy).
    crops = [_resize_max_side(image, max(image.shape[-2:]), "area") for image in images]
    windows = [_local_windows(crop.shape[-2], crop.shape[-1], max_side) for crop in crops]
    fractions = [
        (c.fine[:, w.y0 : w.y1, w.x0 : w.x1] > 0).float().mean()
        for c, crop_windows in zip(coarse, windows, strict=True)
        for w in crop_windows
    ]
    skipped: list[bool] = []
    if fractions:  # one device sync for every window of every crop
        stacked = torch.stack(fractions)
        skipped = ((stacked > _FOREGROUND_HIGH) | (stacked < _FOREGROUND_LOW)).tolist()
    keys: list[tuple[int, int]] = []
    passes: list[_Pass] = []
    flat = 0
    for crop_index, crop_windows in enumerate(windows):
        for window_index, w in enumerate(crop_windows):
            if not skipped[flat]:
                keys.append((crop_index, window_index))
                window = (slice(None), slice(w.y0, w.y1), slice(w.x0, w.x1))
                passes.append(
                    _Pass(
                        crops[crop_index][window],
                        coarse[crop_index].fine[window],
                        coarse[crop_index].intermediate[window],
                    )
                )
            flat += 1
    window_outputs: dict[tuple[int, int], torch.Tensor] = {}
    for index, outputs in network.run(passes, ("pred_224",)):
        window_outputs[keys[index]] = outputs["pred_224"]
    results = []
    for crop_index, (crop, crop_windows) in enumerate(zip(crops, windows, strict=True)):
        fine = coarse[crop_index].fine
        combined = torch.zeros_like(fine)
        weight = torch.zeros_like(fine)
        for window_index, w in enumerate(crop_windows):  # the package's order, so sums round alike
            output = window_outputs.get((crop_index, window_index))
            if output is None:
                continue
            combined[(slice(None), *w.paste)] += output[(slice(None), *w.source)]
            weight[(slice(None), *w.paste)] += 1
        averaged = torch.where(weight == 0, fine / 2 + 0.5, combined / weight)
        size = tuple(crop.shape[-2:])
        results.append(F.interpolate(averaged[None], size=size, mode="bilinear", align_corners=True)[0, 0])
    return results


def _local_windows(height: int, width: int, side: int) -> list[_Window]:
    """The package's local-step windows of a ``height`` x ``width`` crop, in its visiting order."""
    step = side // 2 - 2 * _LOCAL_MARGIN
    seen: set[tuple[int, int]] = set()
    windows = []
    for x_index in range(width // step + 1):
        for y_index in range(height // step + 1):
            y0, x0 = y_index * step, x_index * step
            y1, x1 = y0 + side, x0 + side
            if y1 > height:  # the last windows are shifted back inside the crop
                y0, y1 = height - side, height
            if x1 > width:
                x0, x1 = width - side, width
            y0, x0 = max(0, y0), max(0, x0)
            y1, x1 = min(height, y1), min(width, x1)
            if (y0, x0) in seen:
                continue
            seen.add((y0, x0))
            paste_y, source_y = _inner_span(y0, y1, height, side)
            paste_x, source_x = _inner_span(x0, x1, width, side)
            windows.append(_Window(y0, y1, x0, x1, (paste_y, paste_x), (source_y, source_x)))
    return windows


def _inner_span(start: int, end: int, length: int, side: int) -> tuple[slice, slice]:
    """Target and source slices of a window along one axis once the margin of inner sides is cut."""
    source_start, source_end = 0, side
    if start != 0:
        start += _LOCAL_MARGIN
        source_start += _LOCAL_MARGIN
    if end != length:
        end -= _LOCAL_MARGIN
        source_end -= _LOCAL_MARGIN
    return slice(start, end), slice(source_start, source_end)


def _padded_size(height: int, width: int) -> tuple[int, int]:
    """The package pads both sides to the next multiple of 8 when either side is not one."""
    if height % 8 == 0 and width % 8 == 0:
        return height, width
    return (height // 8 + 1) * 8, (width // 8 + 1) * 8


def _pad(tensor: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    if (height, width) == size:
        return tensor
    return F.pad(tensor, (0, size[1] - width, 0, size[0] - height), value=value)


@dataclass(frozen=True)
class _Network:
    """The refinement network, how many inputs it takes per pass and its autocast dtype."""

    model: nn.Module
    batch_size: int
    autocast_dtype: torch.dtype | None

    def run(
        self, passes: Sequence[_Pass], keys: tuple[str, ...]
    ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Runs passes in batches of one padded shape; yields (pass index, float32 outputs (1, h, w)).

        Padding is the package's: image 0, mask and coarse prediction -1; outputs are cropped back.
        """
        groups: dict[tuple[int, int, bool], list[int]] = defaultdict(list)
        for index, item in enumerate(passes):
            groups[(*_padded_size(*item.mask.shape[-2:]), item.coarse is None)].append(index)
        for (height, width, no_coarse), indices in groups.items():
            size = (height, width)
            for start in range(0, len(indices), self.batch_size):
                chunk = [passes[i] for i in indices[start : start + self.batch_size]]
                image = torch.stack([_pad(item.image, size, 0.0) for item in chunk])
                mask = torch.stack([_pad(item.mask, size, -1.0) for item in chunk])
                coarse = None
                if not no_coarse:
                    coarse = torch.stack([_pad(item.coarse, size, -1.0) for item in chunk])  # type: ignore[arg-type]
                outputs = self._forward(image, mask, coarse)
                for offset, item in enumerate(chunk):
                    h, w = item.mask.shape[-2:]
                    yield (
                        indices[start + offset],
                        {key: outputs[key][offset, :, :h, :w].float() for key in keys},
                    )

    def _forward(
        self, image: torch.Tensor, mask: torch.Tensor, coarse: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        if self.autocast_dtype is None:
            return self.model(image, mask, coarse, None)
        with torch.autocast(device_type=image.device.type, dtype=self.autocast_dtype):
            return self.model(image, mask, coarse, None)
