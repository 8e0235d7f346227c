"""Header checks of many images at once: shares across processes, threads within one.

Why: the training dataset opens every image's header when it loads (``ImageReader.probe``, see
:mod:`sohes_hf.training.datasets`), so that a file that does not open is left out before the
first step. For the 11M SA-1B images that is minutes to an hour of one core at every start
(resume included), and every process of a distributed run repeated all of it. Here the work is
cut into tasks (all members of one tar pack, which a reader indexes once, or runs of 256 plain
files); the processes of an initialised ``torch.distributed`` group take disjoint shares of the
tasks (largest first to the least loaded) and exchange the results, so that every process ends
with the same list in the order of the entries, whatever the number of processes or threads
(tested against one-by-one probes, and under torchrun with two processes).

Threads are off by default: Pillow parses headers in Python under the GIL, and on this 2-core
machine 2-16 threads made the check 1.5-3x slower with a warm page cache and no faster with a
cold local disk (``benchmarks/benchmark_image_probe.py``). They are for storage where each open
waits on the network (NFS, Lustre, object-store mounts): the waits overlap, the parsing does not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch
from tqdm.auto import tqdm

from sohes_hf.data.image_sources import ImageEntry, ImageReader, ImageReadError
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

DEFAULT_PROBE_THREADS = 1  # threads: for high-latency storage only (see the module docstring)
_FILES_PER_TASK = 256  # plain files per task: enough to amortise the task, small enough to balance
_PROGRESS_MIN_IMAGES = 10_000  # fewer images per process: no progress bar

ProbeResult = tuple[int, int] | str
"""``(width, height)`` of an image whose header opens, else the reason it does not."""


def probe_images(
    entries: Sequence[ImageEntry],
    *,
    num_threads: int = DEFAULT_PROBE_THREADS,
    across_processes: bool = False,
    reader_factory: Callable[[], ImageReader] = ImageReader,
) -> list[ProbeResult]:
    """``ImageReader.probe`` of every entry, in the order of ``entries``.

    Args:
        entries: the images, as listed by :func:`~sohes_hf.data.image_sources.list_images`.
        num_threads: threads probing at once in this process.
        across_processes: every process of the initialised ``torch.distributed`` group calls
            this with the same entries; each probes its share and all receive every result.
            Ignored without such a group (or with one process).
        reader_factory: makes each thread's reader (its size and bomb limits).

    Raises:
        ValueError: ``num_threads`` is not a positive integer.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads: must be a positive integer, got {num_threads!r}")
    rank, world_size = 0, 1
    if across_processes and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    tasks = _share(_tasks(entries), world_size)[rank]
    start = time.perf_counter()
    local = _probe_tasks(entries, tasks, num_threads, reader_factory)
    shares: list[dict[int, ProbeResult] | None] = [local]
    if world_size > 1:
        shares = [None] * world_size
        torch.distributed.all_gather_object(shares, local)
    results: list[ProbeResult | None] = [None] * len(entries)
    for share in shares:
        assert share is not None  # filled by all_gather_object
        for index, result in share.items():
            results[index] = result
    missing = [index for index, result in enumerate(results) if result is None]
    if missing:  # every task belongs to exactly one process: a gap is a bug, not bad data
        example = entries[missing[0]].key
        raise RuntimeError(f"image header check: no result for {len(missing)} image(s), e.g. {example}")
    logger.info(
        "checked %d image headers in %.1f s (%d in this process, %d thread(s), %d process(es))",
        len(entries),
        time.perf_counter() - start,
        len(local),
        num_threads,
        world_size,
    )
    return [result for result in results if result is not None]


def _tasks(entries: Sequence[ImageEntry]) -> list[list[int]]:
    """Entry indices grouped into tasks: all members of one tar pack, or runs of plain files."""
    by_pack: dict[str, list[int]] = {}
    tasks: list[list[int]] = []
    files: list[int] = []
    for index, entry in enumerate(entries):
        if entry.member is not None:
            by_pack.setdefault(entry.path, []).append(index)
            continue
        files.append(index)
        if len(files) == _FILES_PER_TASK:
            tasks.append(files)
            files = []
    if files:
        tasks.append(files)
    return tasks + list(by_pack.values())


def _share(tasks: list[list[int]], world_size: int) -> list[list[list[int]]]:
    """Tasks per process, largest first to the least loaded (the same on every process)."""
    shares: list[list[list[int]]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for task in sorted(tasks, key=lambda task: (-len(task), task[0])):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(task)
        loads[rank] += len(task)
    return shares


def _probe_tasks(
    entries: Sequence[ImageEntry],
    tasks: list[list[int]],
    num_threads: int,
    reader_factory: Callable[[], ImageReader],
) -> dict[int, ProbeResult]:
    """Results of this process's tasks, probed by ``num_threads`` threads (one reader each)."""
    local = threading.local()
    readers: list[ImageReader] = []
    lock = threading.Lock()

    def reader() -> ImageReader:
        if not hasattr(local, "reader"):
            local.reader = reader_factory()
            with lock:
                readers.append(local.reader)
        return local.reader

    def run(task: list[int]) -> dict[int, ProbeResult]:
        own = reader()
        done: dict[int, ProbeResult] = {}
        for index in task:
            try:
                done[index] = own.probe(entries[index])
            except ImageReadError as error:
                done[index] = error.reason
        return done

    total = sum(len(task) for task in tasks)
    results: dict[int, ProbeResult] = {}
    progress = tqdm(total=total, desc="checking image headers", disable=total < _PROGRESS_MIN_IMAGES)
    try:
        with ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="sohes-probe") as pool:
            for future in as_completed([pool.submit(run, task) for task in tasks]):
                done = future.result()
                results.update(done)
                progress.update(len(done))
    finally:
        progress.close()
        for open_reader in readers:
            open_reader.close()
    return results
