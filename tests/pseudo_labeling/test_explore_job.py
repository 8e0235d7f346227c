"""Tests of the sharded, resumable self-exploration job and the ``sohes explore`` command."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from sohes_hf.cli import main as cli_main
from sohes_hf.data.image_sources import list_images
from sohes_hf.masks import decode_mask
from sohes_hf.modeling.testing_utils import tiny_dino_vit
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.explore_job import ExploreJobConfig, ShardPaths, merge_shards, run_explore_job
from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor
from sohes_hf.pseudo_labeling.hierarchy import build_hierarchy
from sohes_hf.pseudo_labeling.refinement import IdentityRefiner

CONFIG = SelfExplorationConfig(
    image_size=64, local_crop_size=32, small_region_area_ratio=1 / 64, refiner="none", feature_batch_size=2
)


class Crash(RuntimeError):
    """Raised to simulate a job killed after some images."""


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "tiny-dino"
    tiny_dino_vit().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def extractor(vit_dir: Path) -> DinoFeatureExtractor:
    return DinoFeatureExtractor(vit_dir, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six images with coloured shapes (one in a subfolder), a corrupt file and a tiny image."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        height, width = int(rng.integers(64, 97)), int(rng.integers(64, 97))
        image = np.full((height, width, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = int(rng.integers(0, height - 16)), int(rng.integers(0, width - 16))
            image[y : y + int(rng.integers(8, 32)), x : x + int(rng.integers(8, 32))] = rng.integers(
                0, 256, 3
            )
        name = f"sub/img_{index}.png" if index == 4 else f"img_{index}.png"
        Image.fromarray(image).save(root / name)
    (root / "img_3_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    Image.fromarray(np.zeros((8, 64, 3), dtype=np.uint8)).save(root / "tiny.png")
    return root


def _job(image_dir: Path, output: Path, **overrides: object) -> ExploreJobConfig:
    values: dict[str, object] = {
        "inputs": (str(image_dir),),
        "output_dir": str(output),
        "exploration": CONFIG,
        "checkpoint_every": 2,
    }
    values.update(overrides)
    return ExploreJobConfig(**values)  # type: ignore[arg-type]


def _run(job: ExploreJobConfig, extractor: DinoFeatureExtractor, crash_after: int | None = None) -> dict:
    def on_image_done(count: int) -> None:
        if crash_after is not None and count >= crash_after:
            raise Crash(f"simulated kill after {count} images")

    summary = run_explore_job(
        job, extractor, IdentityRefiner(), on_image_done=on_image_done, show_progress=False
    )
    return json.loads(summary.paths.annotations.read_text())


@pytest.fixture(scope="module")
def reference(
    image_dir: Path, extractor: DinoFeatureExtractor, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """One uninterrupted single-shard run."""
    return _run(_job(image_dir, tmp_path_factory.mktemp("reference")), extractor)


@pytest.fixture(scope="module")
def reference_bytes(reference: dict) -> bytes:
    """The reference run's file as written: ``json.dumps`` of the whole COCO dict plus a newline."""
    return (json.dumps(reference) + "\n").encode("utf-8")


def test_output_is_a_valid_coco_file_with_a_hierarchy(
    reference: dict, image_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(reference))
    coco = COCO(str(path))  # pycocotools loads it unchanged
    assert len(coco.getImgIds()) == 6  # the corrupt and the tiny image are skipped
    assert {img["file_name"] for img in reference["images"]} == {f"img_{i}.png" for i in (0, 1, 2, 3, 5)} | {
        "sub/img_4.png"
    }
    assert reference["categories"] == [{"id": 1, "name": "entity"}]
    annotations = reference["annotations"]
    assert len(annotations) > 0
    assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    position = {a["id"]: i for i, a in enumerate(annotations)}
    for image in reference["images"]:
        own = [a for a in annotations if a["image_id"] == image["id"]]
        masks = [a["segmentation"] for a in own]
        for ann in own:
            mask = coco.annToMask(ann)
            assert mask.shape == (image["height"], image["width"])
            assert ann["area"] == int(mask.sum()) and ann["iscrowd"] == 0 and ann["score"] == 1.0
            if ann["parent_id"] is not None:
                assert position[ann["parent_id"]] < position[ann["id"]]  # parents precede children
                parent = next(a for a in own if a["id"] == ann["parent_id"])
                assert ann["depth"] == parent["depth"] + 1
            else:
                assert ann["depth"] == 0
        local_parents = [
            -1 if a["parent_id"] is None else position[a["parent_id"]] - position[own[0]["id"]] for a in own
        ]
        np.testing.assert_array_equal(
            local_parents, build_hierarchy(masks, coverage=CONFIG.coverage_threshold)
        )
    assert decode_mask(annotations[0]["segmentation"]).dtype == bool


def test_skipped_images_are_reported(
    reference: dict, reference_bytes: bytes, image_dir: Path, extractor: DinoFeatureExtractor, tmp_path: Path
) -> None:
    summary = run_explore_job(_job(image_dir, tmp_path), extractor, IdentityRefiner(), show_progress=False)
    skipped = json.loads(summary.paths.skipped.read_text())["skipped"]
    reasons = {item["file_name"]: item["reason"] for item in skipped}
    assert set(reasons) == {"img_3_corrupt.jpg", "tiny.png"}
    assert "cannot decode" in reasons["img_3_corrupt.jpg"] and "too small" in reasons["tiny.png"]
    stats = json.loads(summary.paths.summary.read_text())
    assert stats["num_images"] == 8 and stats["num_skipped"] == 2 and stats["num_labeled"] == 6
    assert sum(stats["depth_histogram"].values()) == stats["num_masks"] == len(reference["annotations"])
    assert json.loads(summary.paths.annotations.read_text()) == reference  # deterministic
    assert summary.paths.annotations.read_bytes() == reference_bytes  # written as json.dumps would


@pytest.mark.parametrize("checkpoint_every", [1, 3])
def test_kill_and_resume_equals_an_uninterrupted_run(
    reference: dict,
    reference_bytes: bytes,
    image_dir: Path,
    extractor: DinoFeatureExtractor,
    tmp_path: Path,
    checkpoint_every: int,
) -> None:
    job = _job(image_dir, tmp_path, checkpoint_every=checkpoint_every)
    with pytest.raises(Crash):
        _run(job, extractor, crash_after=3)
    paths = ShardPaths.of(tmp_path, 0, 1)
    lines = paths.journal.read_text().splitlines()
    assert len(lines) == 1 + 3  # header + the 3 finished images, flushed when the job stopped
    assert not paths.annotations.exists()
    with pytest.raises(Crash):
        _run(job, extractor, crash_after=2)  # a second kill; resumes after the first 3
    with open(paths.journal, "a") as handle:
        handle.write('{"type": "image", "key": "torn li')  # a write cut short by a hard kill
    summary = run_explore_job(job, extractor, IdentityRefiner(), show_progress=False)
    assert summary.num_resumed == 5
    assert json.loads(paths.annotations.read_text()) == reference
    assert paths.annotations.read_bytes() == reference_bytes  # byte-identical, not only equal
    journal = paths.journal.read_text().splitlines()
    assert len(journal) == 1 + 8
    # The journal is in completion order (a batch journals its skipped images first, a resume
    # appends), not in listing order: the assembly must follow the listing, as checked above.
    listing = [entry.key for entry in list_images([str(image_dir)])]
    assert [json.loads(line)["key"] for line in journal[1:]] != listing


def test_workers_give_the_same_file_and_resume_each_other(
    reference_bytes: bytes, image_dir: Path, extractor: DinoFeatureExtractor, tmp_path: Path
) -> None:
    """Threads change the completion order only: the file is the single-threaded one, byte for byte."""
    parallel = tmp_path / "parallel"
    summary = run_explore_job(
        _job(image_dir, parallel, workers=3), extractor, IdentityRefiner(), show_progress=False
    )
    assert summary.paths.annotations.read_bytes() == reference_bytes
    # Killed with two workers, resumed with one (workers are not part of the configuration).
    resumed = tmp_path / "resumed"
    with pytest.raises(Crash):
        _run(_job(image_dir, resumed, workers=2, checkpoint_every=1), extractor, crash_after=4)
    journal = ShardPaths.of(resumed, 0, 1).journal.read_text().splitlines()
    assert len(journal) == 1 + 4  # the finished images only: results still in flight are not journaled
    summary = run_explore_job(_job(image_dir, resumed), extractor, IdentityRefiner(), show_progress=False)
    assert summary.num_resumed == 4
    assert summary.paths.annotations.read_bytes() == reference_bytes


class _FailingRefiner(IdentityRefiner):
    """The identity, except that its second call raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.num_calls = 0

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        self.num_calls += 1
        if self.num_calls == 2:
            raise self.error
        return super().refine(image, masks)


def test_an_image_that_runs_out_of_memory_is_skipped_and_reported(
    reference: dict, image_dir: Path, extractor: DinoFeatureExtractor, tmp_path: Path
) -> None:
    refiner = _FailingRefiner(MemoryError("cannot allocate 10.0 TiB"))
    summary = run_explore_job(_job(image_dir, tmp_path), extractor, refiner, show_progress=False)
    assert summary.num_skipped == 2 + 1 and summary.num_labeled == 6 - 1
    skipped = json.loads(summary.paths.skipped.read_text())["skipped"]
    reasons = [item["reason"] for item in skipped if "out of memory" in item["reason"]]
    assert reasons == ["out of memory while exploring it (MemoryError: cannot allocate 10.0 TiB)"]
    assert len(json.loads(summary.paths.annotations.read_text())["images"]) == len(reference["images"]) - 1


def test_other_errors_stop_the_job_and_keep_finished_images(
    image_dir: Path, extractor: DinoFeatureExtractor, tmp_path: Path
) -> None:
    refiner = _FailingRefiner(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        run_explore_job(
            _job(image_dir, tmp_path, checkpoint_every=100), extractor, refiner, show_progress=False
        )
    journal = ShardPaths.of(tmp_path, 0, 1).journal.read_text().splitlines()
    assert sum(json.loads(line)["type"] == "image" for line in journal[1:]) == 1  # flushed on the way out


def test_resume_with_another_configuration_is_refused(
    image_dir: Path, extractor: DinoFeatureExtractor, tmp_path: Path
) -> None:
    with pytest.raises(Crash):
        _run(_job(image_dir, tmp_path), extractor, crash_after=1)
    other = _job(
        image_dir,
        tmp_path,
        exploration=SelfExplorationConfig(image_size=64, local_crop_size=32, refiner="none"),
    )
    with pytest.raises(ValueError, match=r"self_exploration\.small_region_area_ratio: the journal has"):
        _run(other, extractor)


def test_shards_partition_the_images_and_merge(
    reference: dict, image_dir: Path, extractor: DinoFeatureExtractor, tmp_path: Path
) -> None:
    shards = [_run(_job(image_dir, tmp_path, num_shards=3, shard_index=k), extractor) for k in range(3)]
    ids = [img["id"] for shard in shards for img in shard["images"]]
    assert len(ids) == len(set(ids)) and set(ids) == {img["id"] for img in reference["images"]}
    result = merge_shards(tmp_path, tmp_path / "merged.json")
    assert (result.num_shards, result.num_images, result.num_annotations) == (
        3,
        6,
        len(reference["annotations"]),
    )
    merged = json.loads((tmp_path / "merged.json").read_text())
    COCO(str(tmp_path / "merged.json"))

    def per_image(coco: dict) -> dict[int, list[tuple]]:
        position = {a["id"]: i for i, a in enumerate(coco["annotations"])}
        out: dict[int, list[tuple]] = {}
        for a in coco["annotations"]:
            parent = None if a["parent_id"] is None else position[a["id"]] - position[a["parent_id"]]
            out.setdefault(a["image_id"], []).append((a["segmentation"]["counts"], parent, a["depth"]))
        return out

    assert per_image(merged) == per_image(reference)  # same labels, parent links renumbered
    (tmp_path / ShardPaths.of(tmp_path, 1, 3).annotations.name).unlink()
    with pytest.raises(FileNotFoundError, match=r"shards \[1\]"):
        merge_shards(tmp_path, tmp_path / "again.json")


def test_job_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shard_index"):
        ExploreJobConfig(inputs=("x",), output_dir=str(tmp_path), num_shards=2, shard_index=2)
    with pytest.raises(ValueError, match="checkpoint_every"):
        ExploreJobConfig(inputs=("x",), output_dir=str(tmp_path), checkpoint_every=0)
    with pytest.raises(ValueError, match="inputs"):
        ExploreJobConfig(inputs=(), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="workers"):
        ExploreJobConfig(inputs=("x",), output_dir=str(tmp_path), workers=0)


@pytest.fixture
def sohes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(cli_main.SUBCOMMANDS, "explore", ("sohes_hf.cli.explore", "self-exploration"))
    return cli_main.main


@pytest.mark.parametrize(
    ("arguments", "flag"),
    [
        (["--refiner", "crf"], "--refiner"),
        (["--feature", "cls"], "--feature"),
        (["--batch-size", "0"], "--batch-size"),
        (["--refiner-batch-size", "0"], "--refiner-batch-size"),
        (["--refiner-precision", "int8"], "--refiner-precision"),
        (["--workers", "0"], "--workers"),
        (["--image-size", "60"], "--image-size"),
        (["--num-shards", "2"], "--num-shards/--shard-index"),
        (["--num-shards", "2", "--shard-index", "5"], "--shard-index"),
        (["--refiner-weights", "/nonexistent"], "--refiner-weights"),
    ],
)
def test_cli_bad_arguments_name_the_flag(
    sohes,
    image_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    flag: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sohes(["explore", str(image_dir), "--output", str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_runs_and_merges(
    sohes, vit_dir: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        sohes(["explore", "--output", str(tmp_path)])
    assert "IMAGES" in capsys.readouterr().err
    common = [
        "--backbone",
        str(vit_dir),
        "--refiner",
        "none",
        "--image-size",
        "64",
        "--no-progress",
        "--device",
        "cpu",
    ]
    for k in range(2):
        code = sohes(
            [
                "explore",
                str(image_dir),
                "--output",
                str(tmp_path / "out"),
                *common,
                "--num-shards",
                "2",
                "--shard-index",
                str(k),
            ]
        )
        assert code == 0
    printed = capsys.readouterr().out
    assert '"num_images": 4' in printed
    assert sohes(["explore", "--merge", str(tmp_path / "out"), "--output", str(tmp_path / "all.json")]) == 0
    assert len(COCO(str(tmp_path / "all.json")).getImgIds()) == 6


def test_shards_default_to_the_accelerate_process_layout() -> None:
    import argparse

    from sohes_hf.cli.explore import _resolve_shard

    args = argparse.Namespace(num_shards=None, shard_index=None)
    num_shards, shard_index, device = _resolve_shard(args, cli_main.CliError)
    assert (num_shards, shard_index) == (1, 0)  # a plain (non-launched) process is the only shard
    assert device is not None


def test_sa1b_tar_packs_keep_their_image_ids(extractor: DinoFeatureExtractor, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with tarfile.open(tmp_path / "sa_000000.tar", "w") as tar:
        for number in (17, 5):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            for name, data in ((f"sa_{number}.jpg", buffer.getvalue()), (f"sa_{number}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    coco = _run(_job(tmp_path / "sa_000000.tar", tmp_path / "out"), extractor)
    assert [(img["id"], img["file_name"], img["width"], img["height"]) for img in coco["images"]] == [
        (5, "sa_5.jpg", 80, 64),
        (17, "sa_17.jpg", 80, 64),
    ]
    assert {a["image_id"] for a in coco["annotations"]} <= {5, 17}
