"""Fault injection: interrupts and misuses ``sohes`` and feeds it bad inputs; prints what survived.

Run: ``python benchmarks/fault_injection.py [--quick | --smoke] [--json FILE] [--seed 0]``

Everything runs through the real ``sohes`` command in subprocesses, on CPU, with a tiny random
DINO backbone (built here), ``--refiner none`` and 48 x 56 images at ``--image-size 32``.

Faults (each must be *survived*): ``kill -9`` at random moments of ``sohes explore`` then
resume, a disk that fills up mid-run (``RLIMIT_FSIZE`` in the child, then resume), a read-only
output folder (writes under it fail with EROFS in the child: the runner may be root), journal
corruption (torn tail, NUL block, foreign first line), two concurrent runs on one folder, and
merge misuse (``--output`` on a shard, shards of two configurations). Survived means: the
output is byte-identical to an uninterrupted run's (pseudo-label and skipped files), or, where
the command must refuse, one ``sohes: error:`` line, no traceback, and nothing overwritten.

Bad inputs (each must be *handled*): images (truncated, zero-byte, huge header, wrong extension,
text, EXIF-rotated), SA-1B tar packs, list files (missing entries, a FIFO, binary), label and
prediction JSON, checkpoints (``--backbone`` / ``--model`` folders). Handled means: a clean
one-line error, or for items inside a long job, skipped and reported with the run finishing;
*crashed* means a traceback, a signal or a hang; *wrong* means it ran but the result is wrong
(e.g. an EXIF-rotated image labelled in another orientation than its stored one).

``--smoke`` (seconds; what ``tests/test_fault_injection.py`` runs) tries only inputs that need
no model: label/prediction JSON and merge misuse. ``--quick`` makes two kills instead of six.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARD = "pseudo_labels.shard-00000-of-00001"
TIMEOUT_S = 240

# The child: ``sohes`` itself; SOHES_FAULT_READONLY=DIR makes writes under DIR fail with EROFS.
CHILD = """
import errno, io, os, sys
readonly = os.environ.get("SOHES_FAULT_READONLY")
if readonly:
    import builtins
    def _inside(path):
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        return os.path.abspath(os.fsdecode(path)).startswith(readonly)
    def _refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
    _os_open, _mkdir, _io_open = os.open, os.mkdir, io.open
    def _open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _inside(path):
            _refuse(path)
        return _os_open(path, flags, *args, **kwargs)
    def _make_dir(path, *args, **kwargs):
        if _inside(path):
            _refuse(path)
        return _mkdir(path, *args, **kwargs)
    def _file_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _inside(file):
            _refuse(file)
        return _io_open(file, mode, *args, **kwargs)
    os.open, os.mkdir, io.open, builtins.open = _open, _make_dir, _file_open, _file_open
from sohes_hf.cli.main import main
sys.exit(main())
"""


@dataclass
class Outcome:
    """One fault or bad input: its group, what was tried, and how it went."""

    group: str
    name: str
    verdict: str  # faults: survived / failed; inputs: handled / crashed / wrong
    detail: str = ""


@dataclass
class Report:
    faults: list[Outcome] = field(default_factory=list)
    inputs: list[Outcome] = field(default_factory=list)


# --- running the command -------------------------------------------------------------------------


def _env(readonly: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if readonly is not None:
        env["SOHES_FAULT_READONLY"] = str(readonly)
    return env


def _file_limit(max_bytes: int) -> Callable[[], None]:
    def limit() -> None:  # a disk that fills up: writes past max_bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def start(args: Sequence[str], readonly: Path | None = None, max_file_bytes: int | None = None) -> Any:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(readonly),
        preexec_fn=_file_limit(max_file_bytes) if max_file_bytes is not None else None,
    )


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    hung: bool = False
    timeout: float = TIMEOUT_S


def sohes(
    *args: str, readonly: Path | None = None, max_file_bytes: int | None = None, timeout: float = TIMEOUT_S
) -> Result:
    process = start(args, readonly, max_file_bytes)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return Result(-9, out, err, hung=True, timeout=timeout)
    return Result(process.returncode, out, err)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("sohes: error:")]


def clean_refusal(result: Result) -> bool:
    """Non-zero exit, exactly one ``sohes: error:`` line, no traceback."""
    return result.returncode in (1, 2) and len(error_lines(result)) == 1 and "Traceback" not in result.stderr


def classify(result: Result) -> tuple[str, str]:
    """(verdict, detail) of a bad input's run: handled (clean refusal or success) or crashed."""
    if result.hung:
        return "crashed", f"hung (killed after {result.timeout:.0f} s)"
    if result.returncode < 0:
        return "crashed", f"killed by signal {-result.returncode}"
    if "Traceback" in result.stderr:
        last = [line for line in result.stderr.strip().splitlines() if line.strip()][-1]
        return "crashed", f"traceback: {last[:150]}"
    if result.returncode == 0:
        return "handled", "ran"
    if clean_refusal(result):
        return "handled", error_lines(result)[0][:150]
    return "crashed", f"exit {result.returncode} without a one-line error"


# --- fixtures ------------------------------------------------------------------------------------


def _png(width: int, height: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    image[height // 6 : height // 2, width // 5 : width * 3 // 4] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(width: int, height: int, seed: int, orientation: int | None = None) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(_png(width, height, seed))).convert("RGB")
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format="JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def _png_with_header_size(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): a decompression bomb."""
    data = bytearray(_png(1, 1, 0))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = crc.to_bytes(4, "big")
    return bytes(data)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@dataclass
class Setup:
    root: Path
    vit: Path
    images: Path
    explore: list[str]
    reference: Path | None = None
    reference_seconds: float = 0.0


def make_setup(root: Path, with_model: bool) -> Setup:
    images = root / "images"
    images.mkdir()
    for index in range(6):
        (images / f"img_{index}.png").write_bytes(_png(56, 48, index))
    (images / "notes.png").write_text("not an image")  # one skipped image in every run
    vit = root / "vit"
    if with_model:
        import torch

        from sohes_hf.modeling.testing_utils import tiny_dino_vit

        torch.manual_seed(0)
        tiny_dino_vit().save_pretrained(vit)
    explore = [
        "explore",
        "--backbone",
        str(vit),
        "--refiner",
        "none",
        "--image-size",
        "32",
        "--no-progress",
        "--device",
        "cpu",
        "--checkpoint-every",
        "1",
        "--batch-size",
        "1",
    ]
    return Setup(root, vit, images, explore)


def labels_of(folder: Path) -> bytes | None:
    """The shard's pseudo-label and skipped files (what must be byte-identical), or None."""
    files = [folder / f"{SHARD}.json", folder / f"{SHARD}.skipped.json"]
    if not all(path.is_file() for path in files):
        return None
    return b"\0".join(path.read_bytes() for path in files)


def journal_duplicates(folder: Path) -> int:
    lines = (folder / f"{SHARD}.jsonl").read_text(errors="replace").splitlines()[1:]
    keys = [json.loads(line)["key"] for line in lines if line.startswith("{")]
    return len(keys) - len(set(keys))


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith((".tmp", ".lock")))


# --- faults --------------------------------------------------------------------------------------


def fault(report: Report, group: str, name: str, ok: bool, detail: str = "") -> None:
    report.faults.append(Outcome(group, name, "survived" if ok else "failed", detail))


def run_reference(setup: Setup) -> None:
    setup.reference = setup.root / "reference"
    began = time.monotonic()
    result = sohes(*setup.explore, str(setup.images), "--output", str(setup.reference))
    setup.reference_seconds = time.monotonic() - began
    if result.returncode != 0:
        raise SystemExit(f"the uninterrupted reference run failed:\n{result.stderr[-3000:]}")


def _same_as_reference(setup: Setup, folder: Path) -> tuple[bool, str]:
    assert setup.reference is not None
    if labels_of(folder) != labels_of(setup.reference):
        return False, "output differs from the uninterrupted run"
    if journal_duplicates(folder):
        return False, f"{journal_duplicates(folder)} duplicated journal records"
    if leftovers(folder):
        return False, f"left behind {leftovers(folder)}"
    return True, "identical"


def faults_kill(setup: Setup, report: Report, kills: int, rng: random.Random) -> None:
    for trial in range(kills):
        out = setup.root / f"kill_{trial}"
        moments = []
        for _ in range(3):  # up to three kills in one run's life, then let it finish
            process = start([*setup.explore, str(setup.images), "--output", str(out)])
            moment = rng.uniform(0.3, 1.0) * setup.reference_seconds
            try:
                process.communicate(timeout=moment)
                break  # finished before the kill
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.communicate()
                moments.append(f"{moment:.1f}s")
        final = sohes(*setup.explore, str(setup.images), "--output", str(out))
        ok, detail = _same_as_reference(setup, out) if final.returncode == 0 else (False, classify(final)[1])
        fault(report, "kill -9 during explore", f"killed at {', '.join(moments) or 'never'}", ok, detail)


def faults_disk(setup: Setup, report: Report) -> None:
    out = setup.root / "disk_full"
    full = sohes(*setup.explore, str(setup.images), "--output", str(out), max_file_bytes=2500)
    refused = clean_refusal(full) and not (out / f"{SHARD}.json").exists()
    resumed = sohes(*setup.explore, str(setup.images), "--output", str(out))
    ok, detail = _same_as_reference(setup, out) if resumed.returncode == 0 else (False, classify(resumed)[1])
    fault(
        report,
        "disk full",
        "writes fail past 2.5 kB, then resume",
        refused and ok,
        detail if refused else f"not one clean line: {classify(full)[1]}",
    )
    tiny = sohes(
        *setup.explore, str(setup.images), "--output", str(setup.root / "disk_full_0"), max_file_bytes=32
    )
    fault(report, "disk full", "full from the start", clean_refusal(tiny), classify(tiny)[1])


def faults_readonly(setup: Setup, report: Report) -> None:
    locked = setup.root / "readonly"
    locked.mkdir()
    for name, args in (
        ("explore", [*setup.explore, str(setup.images), "--output", str(locked / "out")]),
        ("merge", ["explore", "--merge", str(setup.reference), "--output", str(locked / "all.json")]),
    ):
        result = sohes(*args, readonly=locked)
        fault(
            report,
            "read-only output",
            name,
            clean_refusal(result) and not any(locked.iterdir()),
            classify(result)[1],
        )


def faults_journal(setup: Setup, report: Report) -> None:
    assert setup.reference is not None

    def damaged(name: str, damage: Callable[[bytes], bytes]) -> Path:
        out = setup.root / f"journal_{name}"
        shutil.copytree(setup.reference, out)
        journal = out / f"{SHARD}.jsonl"
        journal.write_bytes(damage(journal.read_bytes()))
        (out / f"{SHARD}.json").unlink()
        return out

    def nul_block(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines[2] = b"\0" * len(lines[2])
        return b"\n".join(lines)

    for name, damage in (("torn tail", lambda d: d[: len(d) - 37]), ("NUL block in line 3", nul_block)):
        out = damaged(name.split()[0], damage)
        result = sohes(*setup.explore, str(setup.images), "--output", str(out))
        ok, detail = (
            _same_as_reference(setup, out) if result.returncode == 0 else (False, classify(result)[1])
        )
        fault(report, "journal corruption", name, ok, detail)
    out = damaged("foreign", lambda d: b"garbage that is not a header\n" + d)
    result = sohes(*setup.explore, str(setup.images), "--output", str(out))
    fault(
        report,
        "journal corruption",
        "foreign first line (must refuse)",
        clean_refusal(result),
        classify(result)[1],
    )


def faults_concurrent(setup: Setup, report: Report) -> None:
    out = setup.root / "concurrent"
    first = start([*setup.explore, str(setup.images), "--output", str(out)])
    second = start([*setup.explore, str(setup.images), "--output", str(out)])
    results = []
    for process in (first, second):
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        results.append(Result(process.returncode, stdout, stderr))
    finished = [r for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode != 0]
    named_pid = all(clean_refusal(r) and "PID" in error_lines(r)[0] for r in refused)
    ok, detail = _same_as_reference(setup, out) if finished else (False, "neither run finished")
    fault(
        report,
        "concurrent runs",
        "two explore processes, one folder",
        ok and named_pid,
        detail if named_pid else f"the second run: {classify(refused[0])[1]}",
    )


def _fake_shards(root: Path, sizes: Sequence[int]) -> Path:
    """Shard files of a 2-shard job written directly (no model): ``sizes`` are their image sizes."""
    folder = root / f"shards_{'_'.join(map(str, sizes))}"
    folder.mkdir()
    for index, size in enumerate(sizes):
        coco = {
            "info": {
                "num_shards": len(sizes),
                "shard_index": index,
                "images_sha256": str(index),
                "self_exploration": {"image_size": size},
                "backbone": "tiny",
            },
            "images": [{"id": index + 1, "file_name": f"{index}.png", "width": 8, "height": 8}],
            "categories": [{"id": 1, "name": "entity"}],
            "annotations": [],
        }
        name = f"pseudo_labels.shard-{index:05d}-of-{len(sizes):05d}.json"
        (folder / name).write_text(json.dumps(coco))
    return folder


def faults_merge(root: Path, report: Report) -> None:
    folder = _fake_shards(root, (32, 32))
    shard = folder / "pseudo_labels.shard-00000-of-00002.json"
    before = shard.read_bytes()
    result = sohes("explore", "--merge", str(folder), "--output", str(shard))
    fault(
        report,
        "merge misuse",
        "--output is shard 0",
        clean_refusal(result) and shard.read_bytes() == before,
        classify(result)[1],
    )
    mixed = _fake_shards(root, (32, 64))
    result = sohes("explore", "--merge", str(mixed), "--output", str(root / "mixed.json"))
    fault(
        report,
        "merge misuse",
        "shards of 32 px and 64 px",
        clean_refusal(result) and not (root / "mixed.json").exists(),
        classify(result)[1],
    )


# --- bad inputs ----------------------------------------------------------------------------------


def tried(report: Report, group: str, name: str, result: Result) -> None:
    verdict, detail = classify(result)
    report.inputs.append(Outcome(group, name, verdict, detail))


def inputs_images(setup: Setup, report: Report) -> None:
    """All bad images in one folder: the run must finish, skipping and reporting each bad one."""
    folder = setup.root / "bad_images"
    folder.mkdir()
    good = _png(56, 48, 1)
    cases: dict[str, tuple[bytes, str]] = {  # file -> (bytes, expected: skipped / labelled)
        "truncated.png": (good[: len(good) // 2], "skipped"),
        "truncated.jpg": (_jpeg(56, 48, 2)[:300], "skipped"),
        "zero_byte.png": (b"", "skipped"),
        "huge_header.png": (_png_with_header_size(60000, 60000), "skipped"),
        "png_named.jpg": (good, "labelled"),
        "text.png": (b"hello, I am text\n" * 10, "skipped"),
        "html.jpg": (b"<html><body>404</body></html>", "skipped"),
        "exif_rotated.jpg": (_jpeg(56, 40, 3, orientation=6), "labelled"),  # shown 40 wide, 56 high
    }
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    out = setup.root / "bad_images_out"
    result = sohes(*setup.explore, str(folder), "--output", str(out))
    verdict, detail = classify(result)
    if verdict == "crashed" or result.returncode != 0:
        for name in cases:
            report.inputs.append(Outcome("image", name, "crashed", f"the run over the folder: {detail}"))
        return
    skipped = {
        Path(s["key"]).name: s["reason"]
        for s in json.loads((out / f"{SHARD}.skipped.json").read_text())["skipped"]
    }
    labelled = {
        image["file_name"]: image for image in json.loads((out / f"{SHARD}.json").read_text())["images"]
    }
    for name, (_, expected) in cases.items():
        if name in skipped:
            outcome = Outcome("image", name, "handled", f"skipped: {skipped[name][:100]}")
        elif name in labelled:
            image = labelled[name]
            outcome = Outcome("image", name, "handled", f"labelled {image['width']}x{image['height']}")
            # The project's convention (docs/inference.md): stored pixel orientation everywhere, as
            # COCO ground truth; the EXIF tag would show it 40 wide and 56 high.
            if name == "exif_rotated.jpg" and (image["width"], image["height"]) != (56, 40):
                outcome = Outcome(
                    "image",
                    name,
                    "wrong",
                    f"labelled {image['width']}x{image['height']}, not in its stored orientation (56x40)",
                )
        else:
            outcome = Outcome("image", name, "wrong", "neither labelled nor reported as skipped")
        if expected == "skipped" and outcome.verdict == "handled" and name not in skipped:
            outcome = Outcome("image", name, "wrong", f"expected skipped, {outcome.detail}")
        report.inputs.append(outcome)


def inputs_tars(setup: Setup, report: Report) -> None:
    folder = setup.root / "tars"
    folder.mkdir()
    jpeg = _jpeg(56, 48, 4)

    def pack(name: str, build: Callable[[tarfile.TarFile], None]) -> Path:
        path = folder / name
        with tarfile.open(path, "w") as tar:
            build(tar)
        return path

    def special(tar: tarfile.TarFile, kind: bytes, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info)

    valid = pack(
        "sa_000001.tar",
        lambda t: (
            _add(t, "sa_1.jpg", jpeg),
            _add(t, "sa_1.json", b"{}"),
            _add(t, "sa_2.jpg", jpeg),
            _add(t, "sa_2.json", b"{}"),
        ),
    )
    cases = {
        "not a tar": folder / "sa_000002.tar",
        "truncated mid-member": folder / "sa_000003.tar",
        "symlink member": pack(
            "sa_000004.tar", lambda t: (special(t, tarfile.SYMTYPE, "sa_1.jpg"), _add(t, "sa_2.jpg", jpeg))
        ),
        "FIFO member": pack(
            "sa_000005.tar", lambda t: (special(t, tarfile.FIFOTYPE, "sa_1.jpg"), _add(t, "sa_2.jpg", jpeg))
        ),
        "text as .jpg member": pack(
            "sa_000006.tar", lambda t: (_add(t, "sa_1.jpg", b"text"), _add(t, "sa_2.jpg", jpeg))
        ),
        "member path ../sa_1.jpg": pack(
            "sa_000007.tar", lambda t: (_add(t, "../sa_1.jpg", jpeg), _add(t, "sa_2.jpg", jpeg))
        ),
        "empty tar": pack("sa_000008.tar", lambda t: None),
    }
    cases["not a tar"].write_bytes(os.urandom(3000))
    data = valid.read_bytes()
    cases["truncated mid-member"].write_bytes(data[: 512 + len(jpeg) // 2])
    for name, path in cases.items():
        tried(
            report,
            "tar pack",
            name,
            sohes(*setup.explore, str(path), "--output", str(folder / f"out_{path.stem}")),
        )


def inputs_lists(setup: Setup, report: Report) -> None:
    folder = setup.root / "lists"
    folder.mkdir()
    missing = folder / "missing.txt"
    missing.write_text(f"{setup.images / 'img_0.png'}\n{folder / 'nowhere.png'}\n")
    binary = folder / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage\x81\n" * 5)
    fifo = folder / "fifo.txt"
    os.mkfifo(fifo)
    directory_entry = folder / "dirs.txt"
    directory_entry.write_text(f"{setup.images}\n")
    for name, path in (
        ("a missing image", missing),
        ("binary bytes", binary),
        ("a FIFO", fifo),
        ("a folder as an entry", directory_entry),
    ):
        # a FIFO blocks the reader until a writer comes: three times the reference run is a hang
        limit = max(60.0, 3 * setup.reference_seconds)
        result = sohes(*setup.explore, str(path), "--output", str(folder / f"out_{path.stem}"), timeout=limit)
        tried(report, "list file", name, result)


def _rle() -> dict[str, Any]:
    import numpy as np
    from pycocotools import mask as coco_mask

    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[4:20, 4:20] = 1
    return {"size": [32, 32], "counts": coco_mask.encode(np.asfortranarray(mask))["counts"].decode()}


def inputs_json(root: Path, report: Report) -> None:
    """Ground truth and predictions for ``sohes evaluate``, pseudo-labels for ``data convert-labels``."""
    folder = root / "json"
    folder.mkdir()
    rle = json.dumps(_rle())
    gt_ok = (
        '{"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}], '
        '"categories": [{"id": 1, "name": "t"}], "annotations": [{"id": 7, "image_id": 1, "category_id": 1, '
        f'"segmentation": {rle}, "area": 256, "bbox": [4, 4, 16, 16], "iscrowd": 0}}]}}'
    )
    pred_ok = f'[{{"image_id": 1, "category_id": 1, "segmentation": {rle}, "score": 0.9}}]'
    ground_truths = {
        "truncated": gt_ok[: len(gt_ok) // 2],
        "not an object": "[1, 2, 3]",
        "image id 1e400": gt_ok.replace('"id": 1,', '"id": 1e400,'),
        "NaN polygon": gt_ok.replace(rle, "[[1.0, 1.0, NaN, 1.0, 20.0, 20.0]]"),
        "RLE counts garbage": gt_ok.replace(_rle()["counts"], "!!!!"),
        "negative width": gt_ok.replace('"width": 32', '"width": -32'),
        "missing segmentation": gt_ok.replace(f'"segmentation": {rle}, ', ""),
    }
    predictions = {
        "not a list or COCO": '"hello"',
        "record is a number": "[3]",
        "image id 1e400": pred_ok.replace('"image_id": 1', '"image_id": 1e400'),
        "score is a string": pred_ok.replace('"score": 0.9', '"score": "high"'),
        "polygon 1e308": pred_ok.replace(rle, "[[1.0, 1.0, 1e308, 1.0, 1e308, 1e308]]"),
        "RLE size mismatch": pred_ok.replace('"size": [32, 32]', '"size": [16, 16]'),
        "RLE counts garbage": pred_ok.replace(_rle()["counts"], "!!!!"),
    }
    (folder / "gt_ok.json").write_text(gt_ok)
    (folder / "pred_ok.json").write_text(pred_ok)
    for index, (name, text) in enumerate(ground_truths.items()):
        path = folder / f"gt_{index}.json"
        path.write_text(text)
        result = sohes("evaluate", "--dataset", f"x={path}", "--predictions", str(folder / "pred_ok.json"))
        tried(report, "ground-truth JSON", name, result)
    for index, (name, text) in enumerate(predictions.items()):
        path = folder / f"pred_{index}.json"
        path.write_text(text)
        result = sohes("evaluate", "--dataset", f"x={folder / 'gt_ok.json'}", "--predictions", str(path))
        tried(report, "prediction JSON", name, result)
    labels = {
        "image id 1e400": gt_ok.replace('"image_id": 1,', '"image_id": 1e400,'),
        "polygon instead of RLE": gt_ok.replace(rle, "[[1, 1, 20, 1, 20, 20]]"),
        "truncated": gt_ok[:50],
    }
    for index, (name, text) in enumerate(labels.items()):
        path = folder / f"labels_{index}.json"
        path.write_text(text)
        result = sohes("data", "convert-labels", str(path), "--output", str(folder / f"labels_{index}.arrow"))
        tried(report, "pseudo-label JSON", name, result)


def inputs_checkpoints(setup: Setup, report: Report) -> None:
    folder = setup.root / "checkpoints"
    folder.mkdir()
    image = setup.images / "img_0.png"
    empty = folder / "empty"
    empty.mkdir()
    bad_config = folder / "bad_config"
    shutil.copytree(setup.vit, bad_config)
    (bad_config / "config.json").write_text("{ not json")
    truncated = folder / "truncated_weights"
    shutil.copytree(setup.vit, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    pickle_only = folder / "pickle_only"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text((setup.vit / "config.json").read_text())
    (pickle_only / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 not a real pickle")
    cases = {
        "a missing folder": folder / "nowhere",
        "an empty folder": empty,
        "config.json not JSON": bad_config,
        "truncated model.safetensors": truncated,
        "only a pickle .bin": pickle_only,
    }
    for name, path in cases.items():
        args = [*setup.explore, str(image), "--output", str(folder / f"out_{path.name}")]
        args[args.index("--backbone") + 1] = str(path)
        tried(report, "explore --backbone", name, sohes(*args))
    for name in ("a missing folder", "config.json not JSON"):
        path = cases[name]
        tried(
            report,
            "segment --model",
            name,
            sohes(
                "segment",
                str(image),
                "--model",
                str(path),
                "--output",
                str(folder / "seg"),
                "--device",
                "cpu",
            ),
        )


# --- report --------------------------------------------------------------------------------------


def print_report(report: Report, seconds: float) -> None:
    survived = sum(o.verdict == "survived" for o in report.faults)
    print(
        f"faults injected: {len(report.faults)}  survived: {survived}"
        f"  failed: {len(report.faults) - survived}"
    )
    for outcome in report.faults:
        print(f"  [{outcome.verdict:8}] {outcome.group}: {outcome.name} -- {outcome.detail}")
    counts = {v: sum(o.verdict == v for o in report.inputs) for v in ("handled", "crashed", "wrong")}
    print(
        f"bad inputs tried: {len(report.inputs)}  handled: {counts['handled']}  crashed: {counts['crashed']}"
        f"  wrong: {counts['wrong']}"
    )
    for outcome in report.inputs:
        print(f"  [{outcome.verdict:7}] {outcome.group}: {outcome.name} -- {outcome.detail}")
    print(f"wall time: {seconds:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="two kills instead of six")
    mode.add_argument("--smoke", action="store_true", help="only inputs that need no model (seconds)")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    report = Report()
    root = Path(tempfile.mkdtemp(prefix="sohes-faults-"))
    try:
        setup = make_setup(root, with_model=not args.smoke)
        faults_merge(root, report)
        inputs_json(root, report)
        if not args.smoke:
            run_reference(setup)
            faults_kill(setup, report, 2 if args.quick else 6, random.Random(args.seed))
            faults_disk(setup, report)
            faults_readonly(setup, report)
            faults_journal(setup, report)
            faults_concurrent(setup, report)
            inputs_images(setup, report)
            inputs_tars(setup, report)
            inputs_lists(setup, report)
            inputs_checkpoints(setup, report)
    finally:
        if args.keep:
            print(f"work folder: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - began
    print_report(report, seconds)
    if args.json is not None:
        payload = {
            "faults": [vars(o) for o in report.faults],
            "inputs": [vars(o) for o in report.inputs],
            "seconds": seconds,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
