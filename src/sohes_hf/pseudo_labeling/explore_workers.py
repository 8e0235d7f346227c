"""CPU worker threads for the self-exploration job: keep the GPU busy while images are clustered.

Per image, self-exploration (paper section 3.1) alternates network passes (the global features,
the local crops, the refiner) with CPU work that is ~1 s per 1,024 px image on one core, almost
all of it in the merge kernel (docs/benchmarks.md). Run one image at a time and the GPU idles
for most of the job. With ``workers`` threads, images are explored concurrently:

* the merge kernel is compiled ``nogil``, so the threads' clustering runs on as many cores;
* every network call goes through one lock (:class:`SerializedExtractor`,
  :class:`SerializedRefiner`): one model copy on the device, one pass at a time, no concurrent
  use of a module that was not written for it;
* results come back to the calling thread, which alone writes the journal, so the job's
  checkpointing and resume logic are unchanged.

The outputs do not depend on ``workers``: each image's pseudo-labels are computed the same way,
and the shard's COCO file is assembled in listing order, not completion order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np

from sohes_hf.pseudo_labeling.local_reclustering import FeatureExtractor
from sohes_hf.pseudo_labeling.refinement import RLE, MaskRefiner

Item = TypeVar("Item")
Result = TypeVar("Result")


class SerializedExtractor:
    """A :class:`FeatureExtractor` whose ``extract`` calls hold ``lock`` (one pass at a time)."""

    def __init__(self, extractor: FeatureExtractor, lock: threading.Lock) -> None:
        self.extractor = extractor
        self.patch_size = extractor.patch_size
        self._lock = lock

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        with self._lock:
            return self.extractor.extract(images, size)


class SerializedRefiner(MaskRefiner):
    """A :class:`MaskRefiner` whose ``refine`` calls hold ``lock`` (shared with the extractor)."""

    def __init__(self, refiner: MaskRefiner, lock: threading.Lock) -> None:
        self.refiner = refiner
        self.name = refiner.name
        self._lock = lock

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[RLE]:
        with self._lock:
            return self.refiner.refine(image, masks)


def map_in_threads(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int,
    max_pending: int | None = None,
) -> Generator[tuple[Item, Result], None, None]:
    """Yields ``(item, function(item))`` in completion order, computed by ``workers`` threads.

    ``items`` is consumed lazily in the calling thread, at most ``max_pending`` (default
    ``2 * workers``) items ahead of the results handed out, so memory stays bounded whatever
    its length. With ``workers == 1`` everything runs in the calling thread, in order.

    Errors: an exception raised by ``function`` is re-raised here (the items not started yet are
    cancelled); if the consumer stops early (an exception in its loop, or ``close()``), the items
    not started are cancelled and the running ones finish before this returns.

    Raises:
        ValueError: ``workers`` or ``max_pending`` is not a positive integer.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: must be a positive integer, got {workers!r}")
    limit = 2 * workers if max_pending is None else max_pending
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_pending: must be a positive integer, got {max_pending!r}")
    if workers == 1:
        for item in items:
            yield item, function(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sohes-explore")
    pending: dict[Future[Result], Item] = {}
    iterator = iter(items)
    try:
        while True:
            while len(pending) >= limit:  # make room before reading the next item
                yield from _collect(pending)
            try:
                item = next(iterator)
            except StopIteration:
                break
            pending[pool.submit(function, item)] = item
        while pending:
            yield from _collect(pending)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(pending: dict[Future[Result], Item]) -> Generator[tuple[Item, Result], None, None]:
    """Waits for at least one pending future; yields the finished ones (re-raising their errors)."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        item = pending.pop(future)
        yield item, future.result()
