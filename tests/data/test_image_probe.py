"""Header checks in threads and across processes equal the one-by-one ``ImageReader.probe``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.data.fixtures import write_sa1b_tar

from sohes_hf.data import image_probe, image_sources
from sohes_hf.data.image_probe import _share, _tasks, probe_images
from sohes_hf.data.image_sources import ImageEntry, ImageReader, ImageReadError, list_images

REPO = Path(__file__).resolve().parents[2]


def write_mixed_inputs(root: Path) -> list[str]:
    """A folder (good images of several sizes, an empty file, a text file named .jpg) and two packs
    (one with a member that is not an image). Returns the input paths."""
    folder = root / "folder"
    folder.mkdir()
    for number in range(7):
        size = (20 + number, 30 + 2 * number)
        Image.fromarray(np.full((*size, 3), number * 30, dtype=np.uint8)).save(folder / f"img_{number}.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"not an image at all")
    write_sa1b_tar(root / "a.tar", [101, 102, 103, 104], extra_members=[("sa_150.jpg", b"\xff\xd8 cut")])
    write_sa1b_tar(root / "b.tar", [110, 111, 112], height=40, width=56, seed=1)
    return [str(folder), str(root / "a.tar"), str(root / "b.tar")]


def one_by_one(entries: list[ImageEntry]) -> list[tuple[int, int] | str]:
    results: list[tuple[int, int] | str] = []
    with ImageReader() as reader:
        for entry in entries:
            try:
                results.append(reader.probe(entry))
            except ImageReadError as error:
                results.append(error.reason)
    return results


@pytest.fixture()
def entries(tmp_path: Path) -> list[ImageEntry]:
    return list_images(write_mixed_inputs(tmp_path))


@pytest.mark.parametrize("num_threads", [1, 3, 8])
def test_threads_give_the_one_by_one_results_in_order(
    entries: list[ImageEntry], num_threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_probe, "_FILES_PER_TASK", 2)  # several file tasks, finishing out of order
    expected = one_by_one(entries)
    assert len(entries) == 17
    assert sum(isinstance(result, str) for result in expected) == 3  # empty, text, the cut member
    # the reasons name no file descriptor or buffer address (they would differ between runs)
    text_reason = expected[[entry.file_name for entry in entries].index("text.jpg")]
    assert "not an image format Pillow recognises" in str(text_reason)
    assert probe_images(entries, num_threads=num_threads) == expected


def test_each_pack_is_indexed_once(entries: list[ImageEntry], monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[str] = []
    scan_tar = image_sources.scan_tar

    def counting_scan(path: Path):  # type: ignore[no-untyped-def]
        scanned.append(str(path))
        return scan_tar(path)

    monkeypatch.setattr(image_sources, "scan_tar", counting_scan)
    probe_images(entries, num_threads=4)
    assert sorted(scanned) == sorted({entry.path for entry in entries if entry.member is not None})


def test_tasks_and_shares_cover_every_entry_once(entries: list[ImageEntry]) -> None:
    tasks = _tasks(entries)
    assert sorted(index for task in tasks for index in task) == list(range(len(entries)))
    for task in tasks:  # a task is one pack, or plain files only
        assert len({entries[i].path if entries[i].member else None for i in task}) == 1
    for world_size in (1, 2, 3, 5):
        shares = _share(tasks, world_size)
        assert sorted(i for share in shares for task in share for i in task) == list(range(len(entries)))
        assert shares == _share(tasks, world_size)  # the same on every process
    loads = [sum(len(task) for task in share) for share in _share(tasks, 2)]
    assert max(loads) - min(loads) <= max(len(task) for task in tasks)


def test_bad_thread_count_is_refused(entries: list[ImageEntry]) -> None:
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="num_threads"):
            probe_images(entries, num_threads=bad)  # type: ignore[arg-type]


def test_two_processes_share_the_checks_and_agree_with_one(tmp_path: Path) -> None:
    """torchrun, 2 processes over gloo: each probes a disjoint share, both get the whole list."""
    inputs = write_mixed_inputs(tmp_path)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None, "torchrun is installed with torch"
    worker = REPO / "tests/data/_probe_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    command = [torchrun, "--nproc_per_node", "2", "--standalone", str(worker), str(tmp_path), *inputs]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    entries = list_images(inputs)
    expected = [list(r) if isinstance(r, tuple) else r for r in one_by_one(entries)]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for result in ranks:
        assert result["results"] == expected
    probed = [set(result["probed"]) for result in ranks]
    assert probed[0].isdisjoint(probed[1]) and probed[0] | probed[1] == {e.key for e in entries}
    assert all(len(share) < len(entries) for share in probed)
