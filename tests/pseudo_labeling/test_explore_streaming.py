"""Bounded-memory COCO streaming of the exploration job: writer, reader, shard assembly and merge.

The memory tests run a 200-image job with a fake, fast segmenter (random RLE masks, no network)
and a merge of synthetic shards under ``tracemalloc``: the peak of Python allocations must stay
far below the size of the file written, which fails for any implementation that holds the
shard's records or the COCO dict in memory (those are several times the file size as objects).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sohes_hf.data.image_sources import list_images
from sohes_hf.masks import encode_masks
from sohes_hf.pseudo_labeling import explore_job
from sohes_hf.pseudo_labeling.coco_stream import CocoStreamWriter, iter_coco_members
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.explore_job import ExploreJobConfig, ShardPaths, merge_shards, run_explore_job
from sohes_hf.pseudo_labeling.refinement import IdentityRefiner
from sohes_hf.pseudo_labeling.self_exploration import (
    ExplorationCounts,
    ExplorationTimings,
    ImagePseudoLabels,
)

MASKS_PER_IMAGE = 24


def _random_coco(rng: np.random.Generator, num_images: int, first_image_id: int = 1) -> dict[str, Any]:
    """A COCO dict with random RLEs and a parent chain per image (parents first)."""
    images, annotations = [], []
    for image_id in range(first_image_id, first_image_id + num_images):
        images.append({"id": image_id, "file_name": f"é/{image_id}.png", "width": 40, "height": 30})
        first = len(annotations) + 1
        for index, rle in enumerate(encode_masks(rng.random((4, 30, 40)) < 0.5)):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": int(rng.integers(1, 1200)),
                    "bbox": [float(v) for v in rng.random(4) * 30],
                    "iscrowd": 0,
                    "score": 1.0,
                    "parent_id": None if index == 0 else first + index - 1,
                    "depth": index,
                }
            )
    info = {"description": "test", "nested": {"a": [1, 2.5, None, True]}}
    return {
        "info": info,
        "images": images,
        "categories": [{"id": 1, "name": "entity"}],
        "annotations": annotations,
    }


def _write_streamed(path: Path, coco: dict[str, Any]) -> None:
    with CocoStreamWriter(path, coco["info"]) as writer:
        for image in coco["images"]:
            writer.add_image(image)
        for annotation in coco["annotations"]:
            writer.add_annotation(annotation)


@pytest.mark.parametrize("num_images", [0, 1, 5])
def test_stream_writer_writes_the_bytes_of_json_dumps(tmp_path: Path, num_images: int) -> None:
    coco = _random_coco(np.random.default_rng(num_images), num_images)
    _write_streamed(tmp_path / "out.json", coco)
    assert (tmp_path / "out.json").read_text(encoding="utf-8") == json.dumps(coco) + "\n"
    if num_images:
        assert len(COCO(str(tmp_path / "out.json")).getAnnIds()) == 4 * num_images


def test_stream_writer_leaves_no_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), CocoStreamWriter(target, {}) as writer:
        writer.add_image({"id": 1})
        raise RuntimeError("boom")
    with pytest.raises(ValueError), CocoStreamWriter(target, {}) as writer:
        writer.add_annotation({"score": float("nan")})  # NaN is not JSON
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left


@pytest.mark.parametrize("chunk_chars", [1, 3, 17, 4096])
@pytest.mark.parametrize("indent", [None, 2])
def test_reader_streams_members_and_array_elements(
    tmp_path: Path, chunk_chars: int, indent: int | None
) -> None:
    coco = _random_coco(np.random.default_rng(1), 3)
    coco["empty"] = []
    coco["numbers"] = [12345, -0.5e-7, 7]  # numbers may be cut in two by a chunk end
    coco["count"] = 1234567
    path = tmp_path / "in.json"
    path.write_text(json.dumps(coco, indent=indent) + "\n", encoding="utf-8")
    rebuilt: dict[str, Any] = {}
    for name, value in iter_coco_members(path, chunk_chars=chunk_chars):
        if isinstance(coco[name], list):
            rebuilt.setdefault(name, []).append(value)
        else:
            rebuilt[name] = value
    assert rebuilt == {name: value for name, value in coco.items() if name != "empty"}


@pytest.mark.parametrize(
    "text", ['{"images": [{"id": 1}, {"id"', '{"images": [{"id": 1}]', '{"a": 1} extra', "[1, 2]", "{1: 2}"]
)
def test_reader_refuses_incomplete_or_corrupt_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.json"):
        list(iter_coco_members(path, chunk_chars=4))
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        list(iter_coco_members(tmp_path / "missing.json"))


# --- the job with a fake segmenter -----------------------------------------------------------


class _FakeExtractor:
    """Stands in for the backbone: zero features of the right shape."""

    patch_size = 8

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        return np.zeros((len(images), size // 8, size // 8, 4), dtype=np.float32)


def _fake_explore_image(image: np.ndarray, *args: object, **kwargs: object) -> ImagePseudoLabels:
    """Random noise masks seeded by the image content (deterministic, unique per image)."""
    height, width = image.shape[:2]
    rng = np.random.default_rng(int(image[0, 0, 0]) * 256 + int(image[0, 0, 1]))
    masks = encode_masks(rng.integers(0, 2, (MASKS_PER_IMAGE, height, width), dtype=np.uint8) > 0)
    parents = np.where(np.arange(MASKS_PER_IMAGE) % 3 == 0, -1, np.arange(MASKS_PER_IMAGE) - 1)
    depths = np.arange(MASKS_PER_IMAGE) % 3
    return ImagePseudoLabels(
        height=height,
        width=width,
        masks=masks,
        areas=rng.integers(1, height * width, MASKS_PER_IMAGE),
        boxes=rng.random((MASKS_PER_IMAGE, 4)) * 32,
        parents=parents,
        depths=depths,
        scores=np.ones(MASKS_PER_IMAGE),
        counts=ExplorationCounts(**{f.name: MASKS_PER_IMAGE for f in fields(ExplorationCounts)}),
        timings=ExplorationTimings(**{f.name: 0.0 for f in fields(ExplorationTimings)}),
    )


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 distinct 40 x 48 images (first pixel encodes the index) and one corrupt file."""
    root = tmp_path_factory.mktemp("many")
    for index in range(200):
        pixels = np.full((40, 48, 3), 7, dtype=np.uint8)
        pixels[0, 0, :2] = divmod(index, 256)
        Image.fromarray(pixels).save(root / f"im_{index:03d}.png")
    (root / "im_050_corrupt.jpg").write_bytes(b"not a jpeg")
    return root


def _peak_during(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_job_memory_is_bounded_by_one_image(
    many_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(explore_job, "explore_image", _fake_explore_image)
    config = SelfExplorationConfig(image_size=32, local_crop_size=16, refiner="none", feature_batch_size=4)
    job = ExploreJobConfig(
        inputs=(str(many_images),), output_dir=str(tmp_path), exploration=config, checkpoint_every=2
    )

    def crash(count: int) -> None:
        if count == 120:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_explore_job(job, _FakeExtractor(), IdentityRefiner(), on_image_done=crash, show_progress=False)
    summary, peak = _peak_during(
        run_explore_job, job, _FakeExtractor(), IdentityRefiner(), show_progress=False
    )
    size = summary.paths.annotations.stat().st_size
    assert size > 5_000_000  # 200 images x 24 noise masks of 40 x 48 px
    # Resume (journal index), 81 images, assembly of all 200: one image's records at a time
    # (measured ~0.06 x the file; holding the records, as before, peaked at ~5 x the file).
    assert peak < size / 8, (peak, size)
    assert (summary.num_resumed, summary.num_labeled, summary.num_skipped) == (120, 200, 1)
    assert summary.num_masks == 200 * MASKS_PER_IMAGE
    assert summary.depth_histogram == dict.fromkeys(range(3), 200 * MASKS_PER_IMAGE // 3)

    # The streamed file equals the COCO dict assembled in memory from the journal (brute force).
    lines = [json.loads(line) for line in summary.paths.journal.read_text().splitlines()[1:]]
    by_key = {record["key"]: record for record in lines}
    images, annotations = [], []
    for key in [entry.key for entry in list_images([str(many_images)])]:
        record = by_key[key]
        if record["type"] == "image":
            image = record["image"]
            images.append({k: image[k] for k in ("id", "file_name", "width", "height")})
            first = len(annotations) + 1
            for ann in record["annotations"]:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image["id"],
                        "category_id": 1,
                        "segmentation": {
                            "size": ann["segmentation"]["size"],
                            "counts": ann["segmentation"]["counts"],
                        },
                        "area": ann["area"],
                        "bbox": ann["bbox"],
                        "iscrowd": 0,
                        "score": ann["score"],
                        "parent_id": None if ann["parent"] < 0 else first + ann["parent"],
                        "depth": ann["depth"],
                    }
                )
    info = json.loads(summary.paths.annotations.read_text())["info"]
    expected = {
        "info": info,
        "images": images,
        "categories": [{"id": 1, "name": "entity"}],
        "annotations": annotations,
    }
    assert summary.paths.annotations.read_text() == json.dumps(expected) + "\n"


def _brute_force_merge(shards: list[dict[str, Any]]) -> dict[str, Any]:
    images, annotations = [], []
    for shard in shards:
        images.extend(shard["images"])
        new_ids = {ann["id"]: len(annotations) + i + 1 for i, ann in enumerate(shard["annotations"])}
        for ann in shard["annotations"]:
            parent = ann["parent_id"]
            annotations.append(
                {**ann, "id": new_ids[ann["id"]], "parent_id": None if parent is None else new_ids[parent]}
            )
    info = {**shards[0]["info"], "num_shards": len(shards)}
    return {
        "info": info,
        "images": images,
        "categories": [{"id": 1, "name": "entity"}],
        "annotations": annotations,
    }


def test_merge_streams_and_equals_an_in_memory_merge(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shards = [_random_coco(rng, 300, first_image_id=1 + 1000 * k) for k in range(3)]
    for k, shard in enumerate(shards):
        _write_streamed(ShardPaths.of(tmp_path, k, 3).annotations, shard)
    output = tmp_path / "merged.json"
    result, peak = _peak_during(merge_shards, tmp_path, output)
    size = output.stat().st_size
    assert size > 2_000_000
    assert peak < size / 10, (peak, size)
    assert (result.num_shards, result.num_images, result.num_annotations) == (3, 900, 3600)
    assert output.read_text(encoding="utf-8") == json.dumps(_brute_force_merge(shards)) + "\n"


def test_merge_refuses_repeated_image_ids_and_misplaced_parents(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    first, second = _random_coco(rng, 2, first_image_id=1), _random_coco(rng, 2, first_image_id=2)
    _write_streamed(ShardPaths.of(tmp_path, 0, 2).annotations, first)
    _write_streamed(ShardPaths.of(tmp_path, 1, 2).annotations, second)
    output = tmp_path / "merged.json"
    with pytest.raises(ValueError, match=r"image id 2 appears twice .*00000-of-00002.*00001-of-00002"):
        merge_shards(tmp_path, output)
    second = _random_coco(rng, 2, first_image_id=3)
    second["annotations"][1]["parent_id"] = second["annotations"][3]["id"]  # a child before its parent
    _write_streamed(ShardPaths.of(tmp_path, 1, 2).annotations, second)
    with pytest.raises(ValueError, match="is not an earlier annotation of image 3"):
        merge_shards(tmp_path, output)
    assert not output.exists()
