"""The ``"hierarchical-segmentation"`` pipeline: image in, forest of entities out.

SOHES predicts class-agnostic entities and their part-whole hierarchy (paper section 3.2: a
Mask2Former head with an ancestor prediction head). This pipeline wraps the model and its image
processor the transformers way:

* :meth:`HierarchicalSegmentationPipeline.preprocess` (I/O): loads a path, URL, PIL image or
  numpy array, remembers the original size and runs the image processor (resize to the model
  size, normalise, pad);
* :meth:`~HierarchicalSegmentationPipeline._forward` (model only);
* :meth:`~HierarchicalSegmentationPipeline.postprocess`: the processor's
  ``post_process_hierarchical_segmentation`` at the *original* image size, returned as plain
  dicts (the transformers convention for pipelines, and JSON-ready with ``output_format="rle"``).

This is the implementation; :mod:`sohes_hf.pipelines` is the public import path (it re-exports
these names and registers the task). The file lives in the ``modeling`` folder and imports only
same-folder modules, relatively, because ``save_pretrained`` copies it flat into every saved
model directory and names it in ``config.json`` (``custom_pipelines``, see
:func:`custom_pipeline_entry`): ``transformers.pipeline("hierarchical-segmentation", model=repo,
trust_remote_code=True)`` then works where sohes-hf is not installed.

Usage::

    import sohes_hf
    from transformers import pipeline

    segmenter = pipeline("hierarchical-segmentation", model="path/or/hub-id")
    entities = segmenter("photo.jpg", threshold=0.5)         # list[dict], parents first
    forest = as_tree(entities)                                # nested dicts, roots first

    # Without sohes-hf installed, from a directory written by save_pretrained:
    segmenter = pipeline("hierarchical-segmentation", model="path/or/hub-id", trust_remote_code=True)
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import Pipeline

from .masks import decode_mask

TASK_NAME = "hierarchical-segmentation"
OUTPUT_FORMATS = ("rle", "binary")


def load_image_input(image: Any, timeout: float | None = None) -> Image.Image:
    """Loads one pipeline input as an RGB PIL image in its stored pixel orientation.

    The EXIF ``Orientation`` tag is not applied, on purpose: COCO and SA-1B ground truth,
    ``sohes explore`` and training all use the pixels as stored, so masks predicted here line up
    with annotations and pseudo-labels of the same file (applying it would swap width and height
    of a rotated photo). To segment a photo as a viewer displays it, pass
    ``PIL.ImageOps.exif_transpose(Image.open(path))``; the masks then follow that image.

    Args:
        image: a local path (``str`` or ``Path``), an ``http(s)://`` URL, a PIL image, or a numpy
            array ((H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA, dtype uint8).
        timeout: seconds to wait for a URL.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file or URL that is not a readable image, or an array of another
            shape/dtype. Messages name the input.
        TypeError: any other input type.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _image_from_array(image)
    if isinstance(image, (str, Path)):
        text = str(image)
        if text.startswith(("http://", "https://")):
            return _open_image_bytes(_fetch_url(text, timeout), text)
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {text!r}")
        return _open_image_bytes(path.read_bytes(), text)
    raise TypeError(
        f"image input of type {type(image).__name__} is not supported; pass a path, an http(s) URL, "
        "a PIL image or a uint8 numpy array (H, W[, C])"
    )


def _fetch_url(url: str, timeout: float | None) -> bytes:
    """Downloads ``url`` with the standard library (no extra HTTP dependency)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except (urllib.error.URLError, TimeoutError, ValueError) as error:
        raise ValueError(f"could not download image {url!r}: {error}") from error


def _open_image_bytes(data: bytes, name: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return opened.convert("RGB")  # stored orientation: see load_image_input
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{name!r} is not a readable image file: {error}") from error


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(f"numpy image input: expected dtype uint8, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"numpy image input: empty image of shape {array.shape}")
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    raise ValueError(f"numpy image input: expected shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def as_tree(entities: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Nested view of one image's pipeline output: the roots, each with its subtree.

    Every node is a shallow copy of the entity dict whose ``children`` holds the child *nodes*
    (dicts) instead of ids, so ``for node in as_tree(result)`` walks wholes, then
    ``node["children"]`` their parts, and so on.

    Raises:
        ValueError: an entity's ``parent_id`` does not name an earlier entity.
    """
    nodes: dict[int, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for position, entity in enumerate(entities):
        node = {**entity, "children": []}
        parent = entity.get("parent_id")
        if parent is None:
            roots.append(node)
        elif parent in nodes:
            nodes[parent]["children"].append(node)
        else:
            raise ValueError(
                f"entities[{position}]: parent_id {parent} is not an earlier entity "
                "(parents must precede children)"
            )
        nodes[int(entity["id"])] = node
    return roots


class HierarchicalSegmentationPipeline(Pipeline):
    """Segments images into a forest of class-agnostic entities (wholes, parts, subparts).

    Call with one image or a list (or a (B, H, W, 3) uint8 array) of images. Parameters (given
    at construction or per call):

    * ``threshold`` (float in [0, 1], default 0.5): minimum entity score;
    * ``max_instances`` (int, default 1000): keep at most this many entities per image, the
      paper's evaluation budget (section 4.1);
    * ``ancestor_threshold`` (float in [0, 1], default 0.5): probability above which the
      ancestor head's relation ``i`` is-an-ancestor-of ``j`` is accepted;
    * ``output_format``: ``"rle"`` (default; COCO RLE with ``str`` counts, JSON-ready) or
      ``"binary"`` ((H, W) bool numpy arrays);
    * ``timeout``: seconds to wait for URL inputs.

    Returns:
        Per image, a ``list[dict]`` ordered so parents precede children, each with ``mask`` (at
        the original image size), ``score``, ``bbox`` (XYWH pixels), ``area``, ``id`` (list
        index), ``parent_id`` (``None`` for wholes), ``depth`` (0 wholes, 1 parts, ...) and
        ``children`` (ids). A list input gives a list of such lists. :func:`as_tree` nests one.
    """

    # Which components ``transformers.pipeline`` loads: the image processor only. (With the
    # default None it would also try a video processor, and the ``auto_map`` of the saved image
    # processor would make that attempt ask whether to run remote code.)
    _load_processor = False  # type: ignore[assignment]
    _load_image_processor = True  # type: ignore[assignment]
    _load_video_processor = False  # type: ignore[assignment]
    _load_feature_extractor = False  # type: ignore[assignment]
    _load_tokenizer = False  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_type = getattr(self.model.config, "model_type", None)
        if model_type != "sohes":
            raise TypeError(
                f"model: the {TASK_NAME} pipeline needs a SOHES model, got model_type={model_type!r}"
            )
        if not hasattr(self.image_processor, "post_process_hierarchical_segmentation"):
            raise TypeError(
                "image_processor: expected a SohesImageProcessor (with "
                f"post_process_hierarchical_segmentation), got {type(self.image_processor).__name__}"
            )

    def _sanitize_parameters(
        self,
        threshold: float | None = None,
        max_instances: int | None = None,
        ancestor_threshold: float | None = None,
        output_format: str | None = None,
        timeout: float | None = None,
        **unknown: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        # ``transformers.pipeline`` reads ``local_files_only`` for loading but leaves it in the
        # keyword arguments it passes on; it means nothing here.
        unknown.pop("local_files_only", None)
        if unknown:
            raise TypeError(f"{TASK_NAME} pipeline: unexpected parameter(s) {', '.join(sorted(unknown))}")
        preprocess: dict[str, Any] = {}
        postprocess: dict[str, Any] = {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        for name, value in (("threshold", threshold), ("ancestor_threshold", ancestor_threshold)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
                postprocess[name] = float(value)
        if max_instances is not None:
            if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
                raise ValueError(f"max_instances must be a positive int, got {max_instances!r}")
            postprocess["max_instances"] = max_instances
        if output_format is not None:
            if output_format not in OUTPUT_FORMATS:
                raise ValueError(
                    f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}"
                )
            postprocess["output_format"] = output_format
        return preprocess, {}, postprocess

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Segments one image or a batch; see the class docstring for inputs and parameters."""
        if (isinstance(inputs, np.ndarray) and inputs.ndim == 4) or isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def preprocess(self, image: Any, timeout: float | None = None) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Loads the image and prepares model inputs at the processor's size.

        Returns:
            ``pixel_values`` (1, 3, H_pad, W_pad), ``pixel_mask`` (1, H_pad, W_pad) and
            ``target_size`` (1, 2) int64 = original (height, width).
        """
        loaded = load_image_input(image, timeout=timeout)
        processor: Any = self.image_processor
        inputs = processor(images=[loaded], return_tensors="pt")
        pixel_values = inputs["pixel_values"]
        if self.dtype is not None and pixel_values.is_floating_point():
            pixel_values = pixel_values.to(self.dtype)
        prepared = {"pixel_values": pixel_values}
        if "pixel_mask" in inputs:
            prepared["pixel_mask"] = inputs["pixel_mask"]
        prepared["target_size"] = torch.tensor([[loaded.height, loaded.width]], dtype=torch.long)
        return prepared

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        target_size = model_inputs.pop("target_size")
        outputs = self.model(**model_inputs)
        return {
            "class_queries_logits": outputs.class_queries_logits,
            "masks_queries_logits": outputs.masks_queries_logits,
            "ancestor_logits": outputs.ancestor_logits,
            "target_size": target_size,
        }

    def postprocess(  # type: ignore[override]
        self,
        model_outputs: dict[str, torch.Tensor],
        threshold: float = 0.5,
        max_instances: int = 1000,
        ancestor_threshold: float = 0.5,
        output_format: str = "rle",
    ) -> list[dict[str, Any]]:
        """Builds the entity forest at the original image size (see the class docstring)."""
        outputs = SimpleNamespace(
            class_queries_logits=model_outputs["class_queries_logits"].float(),
            masks_queries_logits=model_outputs["masks_queries_logits"].float(),
            ancestor_logits=model_outputs["ancestor_logits"].float(),
        )
        target_sizes = [tuple(int(v) for v in size) for size in model_outputs["target_size"].tolist()]
        processor: Any = self.image_processor
        entities = processor.post_process_hierarchical_segmentation(
            outputs,
            target_sizes=target_sizes,
            threshold=threshold,
            max_instances=max_instances,
            ancestor_threshold=ancestor_threshold,
        )[0]
        results = [entity.to_dict() for entity in entities]
        if output_format == "binary":
            for result in results:
                result["mask"] = decode_mask(result["mask"])
        return results


def custom_pipeline_entry() -> dict[str, Any]:
    """The ``config.custom_pipelines`` entry that names this pipeline for ``trust_remote_code``.

    ``transformers.pipeline`` reads ``custom_pipelines[task]`` from a repository's ``config.json``:
    ``impl`` is ``"<module file>.<class>"`` in the repository (resolved with
    ``get_class_from_dynamic_module``), ``pt`` names the transformers classes that load the model
    (``AutoModel``, which follows the config's ``auto_map`` to the copied model code) and
    ``type`` the input modality. It has the same form ``Pipeline.save_pretrained`` writes for a
    pipeline registered with ``PIPELINE_REGISTRY.register_pipeline(..., pt_model=AutoModel)``.

    Returns:
        ``{"hierarchical-segmentation": {"impl": "pipeline_sohes.HierarchicalSegmentationPipeline",
        "pt": ["AutoModel"], "type": "image"}}``
    """
    module_file = HierarchicalSegmentationPipeline.__module__.rsplit(".", 1)[-1]
    return {
        TASK_NAME: {
            "impl": f"{module_file}.{HierarchicalSegmentationPipeline.__name__}",
            "pt": ["AutoModel"],
            "type": "image",
        }
    }
