"""Image processor for SOHES: preprocessing, training targets and hierarchical post-processing.

Preprocessing (paper section 3.2 / appendix A: DINO ViT-B/8 + ViT-Adapter + Mask2Former):

* resize so the longest side is ``size["longest_edge"]`` (default 1024, bilinear, antialiased,
  aspect ratio kept, small images are enlarged);
* rescale to [0, 1] and normalise with the ImageNet mean/std (DINO's statistics);
* pad bottom/right with zeros to a fixed ``pad_size`` (default: ``longest_edge`` rounded up to a
  multiple of ``size_divisor`` = 32, square). ViT-Adapter needs sides divisible by 32 (the
  1/32 feature level) and the ViT-B/8 patch size 8; a fixed square lets batches stack and
  keeps post-processing geometry known. ``pixel_mask`` is 1 on real pixels, 0 on padding.

Training targets (``targets=``) are converted by :mod:`sohes_hf.modeling.targets`, and
predictions are turned into a forest of :class:`~sohes_hf.structures.SegmentedEntity` by
:meth:`SohesImageProcessor.post_process_hierarchical_segmentation` with
:mod:`sohes_hf.modeling.forest`. See ``docs/processing.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack

from .forest import build_forest
from .mask_postprocessing import binarize_mask_logits
from .structures import SegmentedEntity
from .targets import prepare_targets

# Same-folder relative imports only, and the standard library's logging (what
# ``sohes_hf.logging_utils.get_logger`` returns for a module under ``sohes_hf``): this file is
# copied flat into model repositories and must load with trust_remote_code=True without sohes-hf.
logger = logging.getLogger(__name__)


class SohesImageProcessorKwargs(ImagesKwargs, total=False):
    """Extra keyword arguments of :class:`SohesImageProcessor`.

    Attributes:
        size_divisor: The default padded side is ``longest_edge`` rounded up to a multiple of this
            (32: ViT-Adapter's coarsest level); an explicit ``pad_size`` must be divisible by it.
    """

    size_divisor: int


class SohesImageProcessor(TorchvisionBackend):
    """Prepares images (and optional hierarchy targets) for SOHES and post-processes predictions.

    Configuration (saved to ``preprocessor_config.json``):
        size: ``{"longest_edge": int}``, default 1024: the longest image side after resizing.
        pad_size: ``{"height": int, "width": int}`` or None (default): padded input size; None
            means a square of ``longest_edge`` rounded up to ``size_divisor``.
        size_divisor: 32.
        image_mean / image_std: ImageNet statistics.
        resample: bilinear.

    ``__call__(images, targets=None, return_tensors="pt")`` accepts PIL images, HWC uint8 numpy
    arrays or CHW torch tensors (one or a list) and returns a ``BatchFeature`` with
    ``pixel_values`` (B, 3, H_pad, W_pad) float32 and ``pixel_mask`` (B, H_pad, W_pad) int64; with
    ``targets`` (one ``{"masks": [RLE], "parents": [int]}`` per image, masks at the original image
    size) also ``mask_labels``, ``class_labels`` and ``ancestor_labels`` (lists, see
    :class:`~sohes_hf.modeling.targets.HierarchicalTargets`).
    """

    valid_kwargs = SohesImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]  # noqa: RUF012
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"longest_edge": 1024}  # noqa: RUF012
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_pad = True
    do_convert_rgb = True
    pad_size = None
    size_divisor = 32

    def __init__(self, **kwargs: Unpack[SohesImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)  # type: ignore[misc]
        self._check_geometry(_as_size_dict(self.size), self.pad_size, self.size_divisor)

    # ----------------------------------------------------------------------------- geometry

    @staticmethod
    def _check_geometry(size: SizeDict | None, pad_size: SizeDict | None, size_divisor: int | None) -> int:
        """Validates the resize/pad settings and returns ``size["longest_edge"]``."""
        if size is None or size.longest_edge is None or set(dict(size)) != {"longest_edge"}:
            raise ValueError(f"size: expected {{'longest_edge': int}}, got {dict(size) if size else size}")
        longest_edge = int(size.longest_edge)
        if longest_edge < 1:
            raise ValueError(f"size: longest_edge must be positive, got {longest_edge}")
        if not isinstance(size_divisor, int) or size_divisor < 1:
            raise ValueError(f"size_divisor: must be a positive int, got {size_divisor!r}")
        if pad_size is not None:
            if not (pad_size.height and pad_size.width):
                raise ValueError(f"pad_size: expected {{'height': int, 'width': int}}, got {dict(pad_size)}")
            if pad_size.height < longest_edge or pad_size.width < longest_edge:
                raise ValueError(
                    f"pad_size: {dict(pad_size)} is smaller than size['longest_edge']={longest_edge}"
                )
            if pad_size.height % size_divisor or pad_size.width % size_divisor:
                raise ValueError(
                    f"pad_size: {dict(pad_size)} is not divisible by size_divisor={size_divisor}"
                )
        return longest_edge

    def get_resized_size(self, height: int, width: int, longest_edge: int | None = None) -> tuple[int, int]:
        """(height, width) after resizing: longest side = ``longest_edge``, aspect kept, rounded."""
        target = int(longest_edge if longest_edge is not None else _as_size_dict(self.size).longest_edge or 0)
        if height < 1 or width < 1:
            raise ValueError(f"image size must be positive, got ({height}, {width})")
        scale = target / max(height, width)
        # floor(x + 0.5): round half up, independent of float banker's rounding.
        return max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5))

    def get_padded_size(self) -> tuple[int, int]:
        """(height, width) of the padded model input."""
        if self.pad_size is not None:
            return int(self.pad_size.height), int(self.pad_size.width)
        longest_edge = self._check_geometry(_as_size_dict(self.size), self.pad_size, self.size_divisor)
        side = int(math.ceil(longest_edge / self.size_divisor) * self.size_divisor)
        return side, side

    # ----------------------------------------------------------------------------- preprocess

    def preprocess(
        self,
        images: ImageInput,
        targets: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Unpack[SohesImageProcessorKwargs],
    ) -> BatchFeature:
        """Preprocesses images and optional hierarchy targets (see the class docstring)."""
        return super().preprocess(images, targets, **kwargs)

    def _preprocess_image_like_inputs(  # type: ignore[override]
        self,
        images: ImageInput,
        targets: Sequence[Mapping[str, Any]] | None,
        do_convert_rgb: bool,
        input_data_format: ChannelDimension | None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        prepared = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        return self._preprocess(prepared, targets, **kwargs)

    def _preprocess(  # type: ignore[override]
        self,
        images: list[torch.Tensor],
        targets: Sequence[Mapping[str, Any]] | None,
        size: SizeDict,
        pad_size: SizeDict | None,
        size_divisor: int,
        resample: Any,
        do_resize: bool,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: Any,
        image_std: Any,
        do_pad: bool,
        return_tensors: str | None,
        **kwargs: Any,
    ) -> BatchFeature:
        longest_edge = self._check_geometry(size, pad_size, size_divisor)
        if not do_resize or not do_pad:
            raise ValueError("do_resize/do_pad: SOHES needs every image resized and padded to one fixed size")
        if targets is not None:
            if isinstance(targets, Mapping):
                targets = [targets]
            if len(targets) != len(images):
                raise ValueError(f"targets: got {len(targets)} targets for {len(images)} images")
        if pad_size is not None:
            padded = (int(pad_size.height or 0), int(pad_size.width or 0))  # both checked above
        else:
            side = int(math.ceil(longest_edge / size_divisor) * size_divisor)
            padded = (side, side)

        pixel_values = []
        pixel_masks = []
        labels = []
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"images[{index}]: expected 3 channels after RGB conversion, got {image.shape}"
                )
            height, width = int(image.shape[-2]), int(image.shape[-1])
            resized_size = self.get_resized_size(height, width, longest_edge)
            resized = self.resize(
                image, SizeDict(height=resized_size[0], width=resized_size[1]), resample=resample
            )
            normalized = self.rescale_and_normalize(
                resized[None], do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )[0]
            canvas = torch.zeros((3, *padded), dtype=normalized.dtype, device=normalized.device)
            canvas[:, : resized_size[0], : resized_size[1]] = normalized
            mask = torch.zeros(padded, dtype=torch.int64, device=normalized.device)
            mask[: resized_size[0], : resized_size[1]] = 1
            pixel_values.append(canvas)
            pixel_masks.append(mask)
            if targets is not None:
                labels.append(
                    prepare_targets(
                        targets[index], (height, width), resized_size, padded, name=f"targets[{index}]"
                    )
                )

        encoded = BatchFeature(
            data={"pixel_values": torch.stack(pixel_values), "pixel_mask": torch.stack(pixel_masks)},
            tensor_type=return_tensors,
        )
        if targets is not None:
            encoded["mask_labels"] = [label.mask_labels for label in labels]
            encoded["class_labels"] = [label.class_labels for label in labels]
            encoded["ancestor_labels"] = [label.ancestor_labels for label in labels]
        return encoded

    # ----------------------------------------------------------------------------- post-process

    def post_process_hierarchical_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor,
        threshold: float = 0.5,
        max_instances: int = 1000,
        ancestor_threshold: float = 0.5,
    ) -> list[list[SegmentedEntity]]:
        """Turns model outputs into one hierarchy forest of entities per image (paper section 3.2).

        Scores follow Mask2Former's instance post-processing: ``score = softmax(class logits)
        [entity] * mean(sigmoid(mask logits) over the binarised mask)``, computed on masks at the
        target size. Masks are upsampled (bilinear) to the padded input size, cropped to the
        valid region this processor's resize produced for ``target_sizes[b]``, resized to the
        target size and binarised at probability 0.5 (logit > 0). Empty masks and scores below
        ``threshold`` are dropped, the best ``max_instances`` are kept, and their ancestor
        probabilities ``sigmoid(ancestor_logits)`` are turned into a forest by
        :func:`~sohes_hf.modeling.forest.build_forest` (NaN logits mean "no relation").

        Assumes the inputs were prepared by this processor with its current settings.

        Args:
            outputs: An object with ``class_queries_logits`` (B, N, 2), ``masks_queries_logits``
                (B, N, h, w) and ``ancestor_logits`` (B, N, N), e.g. ``SohesModelOutput``.
            target_sizes: (height, width) of each original image, B pairs or a (B, 2) tensor.
            threshold: Minimum score in [0, 1].
            max_instances: Keep at most this many entities per image (highest scores).
            ancestor_threshold: ``i`` is an ancestor of ``j`` when
                ``sigmoid(ancestor_logits[i, j]) > ancestor_threshold``.

        Returns:
            Per image, entities ordered so parents precede children (``id`` = list index).
        """
        class_logits, mask_logits, ancestor_logits = _unpack_outputs(outputs)
        sizes = _check_target_sizes(target_sizes, class_logits.shape[0])
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold: must lie in [0, 1], got {threshold}")
        if not 0.0 <= float(ancestor_threshold) <= 1.0:
            raise ValueError(f"ancestor_threshold: must lie in [0, 1], got {ancestor_threshold}")
        if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
            raise ValueError(f"max_instances: must be a positive int, got {max_instances!r}")
        padded = self.get_padded_size()
        results = []
        for batch_index, (height, width) in enumerate(sizes):
            results.append(
                self._entities_for_image(
                    class_logits[batch_index],
                    mask_logits[batch_index],
                    ancestor_logits[batch_index],
                    padded,
                    self.get_resized_size(height, width),
                    (height, width),
                    float(threshold),
                    max_instances,
                    float(ancestor_threshold),
                )
            )
        return results

    def _entities_for_image(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        ancestor_logits: torch.Tensor,
        padded_size: tuple[int, int],
        valid_size: tuple[int, int],
        target_size: tuple[int, int],
        threshold: float,
        max_instances: int,
        ancestor_threshold: float,
    ) -> list[SegmentedEntity]:
        class_probs = torch.softmax(class_logits.float(), dim=-1)[:, 0]
        # The final score is class prob x a mean of probabilities (<= 1), so queries whose class
        # probability is already below the threshold can be skipped without changing the result.
        candidates = torch.nonzero(class_probs >= threshold).flatten()
        # Each query is resized only inside the window that can hold positive pixels and its RLE
        # is built from that window (mask_postprocessing): the masks of the full-size
        # upsample_mask_logits path, x9-x55 faster (x2 when every mask spans the whole image;
        # benchmarks/benchmark_postprocess.py).
        masks = binarize_mask_logits(
            mask_logits[candidates], class_probs[candidates], padded_size, valid_size, target_size, threshold
        )
        if masks.query_indices.size == 0:
            return []
        # Highest score first; ties by query index (stable sort over ascending query order).
        ranking = np.argsort(-masks.scores, kind="stable")[:max_instances]
        query_index = torch.as_tensor(
            candidates.cpu().numpy()[masks.query_indices[ranking]], dtype=torch.long
        )
        scores_np = masks.scores[ranking].astype(np.float64)
        query_index = query_index.to(ancestor_logits.device)
        probs = torch.sigmoid(ancestor_logits.float()[query_index][:, query_index]).cpu().numpy()
        probs = probs.astype(np.float64)
        forest = build_forest(probs, scores_np, threshold=ancestor_threshold)
        ranked = _RankedMasks(
            rles=[masks.rles[i] for i in ranking],
            scores=scores_np,
            areas=masks.areas[ranking],
            boxes=masks.boxes[ranking],
        )
        return _entities_from_forest(forest.parents, forest.depths, forest.order, ranked)


@dataclass(frozen=True)
class _RankedMasks:
    """The kept masks in score order: RLEs at target size, scores, pixel counts, XYWH boxes."""

    rles: list[dict[str, Any]]
    scores: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray


def _entities_from_forest(
    parents: np.ndarray, depths: np.ndarray, order: np.ndarray, masks: _RankedMasks
) -> list[SegmentedEntity]:
    """Re-indexes a forest into list order (parents first) and builds the entities.

    Areas and boxes come from the binarisation (pixel counts and extents taken before
    encoding), so no RLE is decoded again here.
    """
    new_id = np.empty(order.shape[0], dtype=np.int64)
    new_id[order] = np.arange(order.shape[0])
    entities = []
    for position, node in enumerate(order):
        parent = int(parents[node])
        box = masks.boxes[node]
        entities.append(
            SegmentedEntity(
                id=position,
                mask=masks.rles[node],
                score=float(masks.scores[node]),
                bbox=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                area=int(masks.areas[node]),
                parent_id=None if parent < 0 else int(new_id[parent]),
                depth=int(depths[node]),
            )
        )
    for entity in entities:
        if entity.parent_id is not None:
            entities[entity.parent_id].children.append(entity.id)
    return entities


def _unpack_outputs(outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reads and shape-checks the three logits tensors of a ``SohesModelOutput``-like object."""
    tensors = []
    for name in ("class_queries_logits", "masks_queries_logits", "ancestor_logits"):
        value = getattr(outputs, name, None)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"outputs.{name}: expected a torch.Tensor, got {type(value).__name__}")
        tensors.append(value.detach())  # stays on its device: upsampling is the costly part
    class_logits, mask_logits, ancestor_logits = tensors
    if class_logits.ndim != 3 or class_logits.shape[-1] != 2:
        raise ValueError(f"outputs.class_queries_logits: expected (B, N, 2), got {tuple(class_logits.shape)}")
    batch, num_queries = class_logits.shape[:2]
    if mask_logits.ndim != 4 or tuple(mask_logits.shape[:2]) != (batch, num_queries):
        raise ValueError(
            f"outputs.masks_queries_logits: expected ({batch}, {num_queries}, h, w), "
            f"got {tuple(mask_logits.shape)}"
        )
    if tuple(ancestor_logits.shape) != (batch, num_queries, num_queries):
        raise ValueError(
            f"outputs.ancestor_logits: expected ({batch}, {num_queries}, {num_queries}), "
            f"got {tuple(ancestor_logits.shape)}"
        )
    return class_logits, mask_logits, ancestor_logits


def _check_target_sizes(
    target_sizes: Sequence[tuple[int, int]] | torch.Tensor, batch: int
) -> list[tuple[int, int]]:
    """Validates target sizes: ``batch`` positive (height, width) pairs."""
    pairs = target_sizes.tolist() if isinstance(target_sizes, torch.Tensor) else list(target_sizes)
    if len(pairs) != batch:
        raise ValueError(f"target_sizes: got {len(pairs)} sizes for a batch of {batch}")
    sizes = []
    for index, pair in enumerate(pairs):
        values = list(pair)
        if len(values) != 2 or any(int(v) != v or int(v) < 1 for v in values):
            raise ValueError(f"target_sizes[{index}]: expected positive (height, width), got {pair}")
        sizes.append((int(values[0]), int(values[1])))
    return sizes


def _as_size_dict(size: Any) -> SizeDict:
    """The class default ``size`` is a plain dict; instances hold a ``SizeDict``."""
    return size if isinstance(size, SizeDict) else SizeDict(**size)


def register_image_processor() -> None:
    """Registers :class:`SohesImageProcessor` with ``AutoImageProcessor`` for ``SohesConfig``.

    Registered as the ``"torchvision"`` backend (the positional form of ``register`` would
    register it as the PIL backend). Safe to call more than once.
    """
    from transformers import AutoImageProcessor

    from .configuration_sohes import SohesConfig

    AutoImageProcessor.register(
        SohesConfig, image_processor_classes={"torchvision": SohesImageProcessor}, exist_ok=True
    )


# ``save_pretrained`` then writes ``auto_map`` into ``preprocessor_config.json`` and copies this file
# with its same-folder imports, so ``AutoImageProcessor.from_pretrained(repo,
# trust_remote_code=True)`` works without sohes-hf. Done at import (it only sets a class attribute)
# so every way of importing the class saves loadable directories.
SohesImageProcessor.register_for_auto_class("AutoImageProcessor")
