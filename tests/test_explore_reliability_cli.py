"""``sohes explore`` misuse and interruptions through the real process (issue 15, items 10-12).

Each test builds the fault itself (shards of two configurations, two processes on one shard, a
killed run's leftovers) and runs the ``sohes`` command in a subprocess, where the user meets it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sohes_hf.modeling.testing_utils import tiny_dino_vit

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SHARD = "pseudo_labels.shard-00000-of-00001"


def _sohes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # as the ``sohes`` console script does (``-m`` would make a second CliError class)
        [sys.executable, "-c", "import sys; from sohes_hf.cli.main import main; sys.exit(main())", *args],
        capture_output=True, text=True, check=False, timeout=300, env=ENV,
    )  # fmt: skip


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("sohes: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "tiny-dino"
    tiny_dino_vit().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(4):
        image = np.full((48, 56, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        image[8:30, 10:40] = rng.integers(0, 256, 3)
        Image.fromarray(image).save(root / f"img_{index}.png")
    return root


def _explore_args(vit_dir: Path, *extra: str) -> list[str]:
    return ["explore", "--backbone", str(vit_dir), "--refiner", "none", "--image-size", "32",
            "--no-progress", "--device", "cpu", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def mixed_shards(vit_dir: Path, image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shard 0 of 2 explored at 32 px, shard 1 at 64 px: a folder that must not merge."""
    out = tmp_path_factory.mktemp("mixed") / "out"
    for index, size in ((0, "32"), (1, "64")):
        result = _sohes(*_explore_args(vit_dir, str(image_dir), "--output", str(out)),
                        "--num-shards", "2", "--shard-index", str(index), "--image-size", size)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_merge_refuses_shards_of_different_configurations(mixed_shards: Path, tmp_path: Path) -> None:
    merged = tmp_path / "all.json"
    result = _sohes("explore", "--merge", str(mixed_shards), "--output", str(merged))
    _assert_one_line_error(
        result,
        "pseudo_labels.shard-00000-of-00002.json",
        "pseudo_labels.shard-00001-of-00002.json",
        "self_exploration.image_size: 32 vs 64",
    )
    assert not merged.exists()


def test_merge_refuses_to_overwrite_a_shard(mixed_shards: Path, tmp_path: Path) -> None:
    shard = mixed_shards / "pseudo_labels.shard-00000-of-00002.json"
    before = shard.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(shard)
    for target in (
        shard,  # the first shard: it was overwritten by the merged file
        mixed_shards / "pseudo_labels.shard-00000-of-00001.json",  # would pass for a shard later
        mixed_shards / "pseudo_labels.shard-00001-of-00002.jsonl",  # a journal
        link,
    ):
        result = _sohes("explore", "--merge", str(mixed_shards), "--output", str(target))
        _assert_one_line_error(result, "--output", str(target), "write the merged file elsewhere")
    assert shard.read_bytes() == before


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
    from sohes_hf.pseudo_labeling.explore_job import ExploreJobConfig, run_explore_job
    from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor
    from sohes_hf.pseudo_labeling.refinement import IdentityRefiner

    vit, images, out, release = sys.argv[1:]

    def wait(done):  # holds the shard (and its lock) after the first image until told to go on
        while done == 1 and not Path(release).exists():
            time.sleep(0.05)

    config = SelfExplorationConfig(image_size=32, refiner="none")
    job = ExploreJobConfig(inputs=(images,), output_dir=out, exploration=config, backbone=vit,
                           checkpoint_every=1)
    run_explore_job(job, DinoFeatureExtractor(vit, device="cpu"), IdentityRefiner(), wait, False)
    """
)


def _start_holder(vit_dir: Path, image_dir: Path, out: Path, release: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(vit_dir), str(image_dir), str(out), str(release)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    journal = out / f"{SHARD}.jsonl"
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_bytes().count(b"\n") >= 2):  # header + one image
        assert holder.poll() is None, holder.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the holder never journaled its first image"
        time.sleep(0.05)
    return holder


def _journal_keys(out: Path) -> list[str]:
    lines = (out / f"{SHARD}.jsonl").read_text().splitlines()[1:]
    return [json.loads(line)["key"] for line in lines]


def test_second_process_on_a_shard_is_refused_naming_the_first(
    vit_dir: Path, image_dir: Path, tmp_path: Path
) -> None:
    out, release = tmp_path / "out", tmp_path / "release"
    holder = _start_holder(vit_dir, image_dir, out, release)
    try:
        result = _sohes(*_explore_args(vit_dir, str(image_dir), "--output", str(out)))
        _assert_one_line_error(result, f"PID {holder.pid}", str(out), f"{SHARD}.lock")
    finally:
        release.touch()
        _, holder_err = holder.communicate(timeout=300)
    assert holder.returncode == 0, holder_err[-2000:]
    keys = _journal_keys(out)
    assert sorted(keys) == sorted(str(p) for p in image_dir.iterdir())  # each image once
    assert not (out / f"{SHARD}.lock").exists()  # removed on a normal exit
    again = _sohes(*_explore_args(vit_dir, str(image_dir), "--output", str(out)))
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["num_resumed"] == 4


def test_a_killed_run_leaves_no_lock_and_its_temporary_files_are_swept(
    vit_dir: Path, image_dir: Path, tmp_path: Path
) -> None:
    out, release = tmp_path / "out", tmp_path / "release"
    holder = _start_holder(vit_dir, image_dir, out, release)
    holder.send_signal(signal.SIGKILL)  # the kernel releases its flock; the lock file stays
    holder.communicate(timeout=60)
    assert (out / f"{SHARD}.lock").read_text().strip() == str(holder.pid)
    stale = out / f".{SHARD}.json.k1ll3d_x.tmp"  # what a kill inside atomic_path leaves
    stale.write_bytes(b"x" * 1000)
    foreign = out / ".notes.txt.abcdefgh.tmp"  # not a temporary file of the shard: kept
    foreign.write_bytes(b"keep")
    result = _sohes("-v", *_explore_args(vit_dir, str(image_dir), "--output", str(out)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "removed 1 temporary files" in result.stderr
    assert not stale.exists() and foreign.exists()
    assert sorted(_journal_keys(out)) == sorted(str(p) for p in image_dir.iterdir())
    assert json.loads(result.stdout)["num_resumed"] >= 1


@pytest.fixture(scope="module")
def mixed_dir(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four images plus a text file named .png and a zero-byte .jpg (both skipped)."""
    root = tmp_path_factory.mktemp("mixed_images")
    for path in image_dir.iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    (root / "notes.png").write_text("not an image")
    (root / "empty.jpg").write_bytes(b"")
    return root


def _limited(max_file_bytes: int) -> Callable[[], None]:
    def limit() -> None:  # a disk that fills up: writes past max_file_bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return limit


def test_disk_full_mid_run_is_one_line_and_the_resumed_output_is_identical(
    vit_dir: Path, mixed_dir: Path, tmp_path: Path
) -> None:
    args = [*_explore_args(vit_dir, str(mixed_dir)), "--checkpoint-every", "1", "--batch-size", "1"]
    reference = _sohes(*args, "--output", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "out"
    full = subprocess.run(
        [sys.executable, "-c", "import sys; from sohes_hf.cli.main import main; sys.exit(main())", *args,
         "--output", str(out)],
        capture_output=True, text=True, check=False, timeout=300, env=ENV, preexec_fn=_limited(2000),
    )  # fmt: skip
    line = _assert_one_line_error(full, "File too large", "re-run the command")
    assert str(out) in line
    assert not (out / f"{SHARD}.json").exists()  # no half-written shard file
    resumed = _sohes(*args, "--output", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["num_resumed"] >= 1
    for suffix in (".json", ".skipped.json"):
        assert (out / f"{SHARD}{suffix}").read_bytes() == (
            tmp_path / "reference" / f"{SHARD}{suffix}"
        ).read_bytes()
    skipped = json.loads((out / f"{SHARD}.skipped.json").read_text())["skipped"]
    assert sorted(Path(s["key"]).name for s in skipped) == ["empty.jpg", "notes.png"]
    assert all(" at 0x" not in s["reason"] for s in skipped), skipped  # no object address: stable
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_backbone_folder_that_is_not_a_vit_is_one_line(
    vit_dir: Path, image_dir: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_bytes((vit_dir / "config.json").read_bytes())
    (truncated / "model.safetensors").write_bytes((vit_dir / "model.safetensors").read_bytes()[:1000])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((vit_dir / "config.json").read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 not a state dict")  # weights_only refuses it
    for backbone in (tmp_path / "nowhere", truncated, pickled):
        args = _explore_args(vit_dir, str(image_dir), "--output", str(tmp_path / "out"))
        args[args.index("--backbone") + 1] = str(backbone)
        _assert_one_line_error(_sohes(*args), "--backbone", str(backbone))


def test_an_input_that_cannot_be_listed_is_one_line_naming_it(
    vit_dir: Path, image_dir: Path, tmp_path: Path
) -> None:
    not_a_tar = tmp_path / "sa_000001.tar"
    not_a_tar.write_bytes(bytes(range(256)) * 12)
    binary_list = tmp_path / "images.txt"
    binary_list.write_bytes(b"\xff\xfe\x00garbage\x81\n")
    result = _sohes(
        *_explore_args(vit_dir, str(image_dir), str(not_a_tar), "--output", str(tmp_path / "out"))
    )
    _assert_one_line_error(result, "IMAGES", str(not_a_tar), "not a readable tar pack")
    # A list file's undecodable line is one bad item of a long job: skipped and reported, the
    # other inputs labelled (data/image_sources.py).
    out = tmp_path / "out_list"
    result = _sohes(*_explore_args(vit_dir, str(image_dir), str(binary_list), "--output", str(out)))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(next(out.glob("*.skipped.json")).read_text())
    assert any(
        problem["source"] == str(binary_list) and "not valid UTF-8" in problem["reason"]
        for problem in report["inputs"]
    ), report
