"""The explore job's worker threads: results, bounded look-ahead, errors, serialized network calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from sohes_hf.pseudo_labeling import merge_kernel
from sohes_hf.pseudo_labeling.explore_workers import SerializedExtractor, SerializedRefiner, map_in_threads
from sohes_hf.pseudo_labeling.refinement import MaskRefiner


@pytest.mark.parametrize("workers", [1, 3])
def test_every_item_is_mapped_once(workers: int) -> None:
    results = list(map_in_threads(lambda x: x * x, range(50), workers))
    assert sorted(results) == [(x, x * x) for x in range(50)]


def test_one_worker_runs_in_the_calling_thread_in_order() -> None:
    threads = []
    results = list(map_in_threads(lambda x: threads.append(threading.get_ident()) or x, range(5), 1))
    assert results == [(x, x) for x in range(5)]
    assert set(threads) == {threading.get_ident()}


@pytest.mark.parametrize(("workers", "max_pending"), [(2, None), (3, 5), (1, None)])
def test_items_are_read_at_most_max_pending_ahead(workers: int, max_pending: int | None) -> None:
    limit = 2 * workers if max_pending is None else max_pending
    state = {"read": 0, "handed_out": 0, "max_ahead": 0}

    def items() -> Iterator[int]:
        for x in range(40):
            state["read"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["read"] - state["handed_out"])
            yield x

    def slow(x: int) -> int:
        time.sleep(0.001)
        return x

    for _ in map_in_threads(slow, items(), workers, max_pending):
        state["handed_out"] += 1
    assert state["handed_out"] == 40
    assert state["max_ahead"] <= (limit if workers > 1 else 1)


def test_an_error_in_a_worker_is_raised_and_the_rest_cancelled() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def function(x: int) -> int:
        with lock:
            started.append(x)
        if x == 3:
            raise ValueError("bad item 3")
        time.sleep(0.005)
        return x

    with pytest.raises(ValueError, match="bad item 3"):
        list(map_in_threads(function, range(1000), 2, max_pending=4))
    assert len(started) < 20  # not the other 990+ items


def test_stopping_early_cancels_the_items_not_started() -> None:
    calls: list[int] = []
    results = map_in_threads(lambda x: calls.append(x) or x, range(1000), 2, max_pending=3)
    for count, _ in enumerate(results, start=1):
        if count == 5:
            break
    results.close()
    assert len(calls) <= 5 + 3


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_worker_counts_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="workers"):
        list(map_in_threads(lambda x: x, range(3), value))
    with pytest.raises(ValueError, match="max_pending"):
        list(map_in_threads(lambda x: x, range(3), 2, max_pending=0))


class _OverlapRecorder:
    """Records the largest number of calls running at the same time."""

    patch_size = 8

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def _enter(self) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(0.002)
        with self.lock:
            self.active -= 1

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        self._enter()
        return np.zeros((len(images), size // 8, size // 8, 4), np.float32)


class _RecordingRefiner(MaskRefiner):
    name = "recording"

    def __init__(self, recorder: _OverlapRecorder) -> None:
        self.recorder = recorder

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        self.recorder._enter()
        return [dict(m) for m in masks]


def test_network_calls_never_overlap() -> None:
    recorder = _OverlapRecorder()
    lock = threading.Lock()
    extractor = SerializedExtractor(recorder, lock)
    refiner = SerializedRefiner(_RecordingRefiner(recorder), lock)
    assert extractor.patch_size == 8 and refiner.name == "recording"
    image = np.zeros((16, 16, 3), np.uint8)

    def work(index: int) -> int:
        features = extractor.extract([image], 16)
        refined = refiner.refine(image, [{"size": [16, 16], "counts": "P8"}])
        return features.shape[0] + len(refined)

    assert sorted(r for _, r in map_in_threads(work, range(24), 4)) == [2] * 24
    assert recorder.max_active == 1

    # Without the wrapper the same recorder does see overlapping calls (the check can fail).
    bare = _OverlapRecorder()
    list(map_in_threads(lambda _: bare.extract([image], 16), range(24), 4))
    assert bare.max_active > 1


def test_the_merge_kernel_releases_the_gil() -> None:
    """Worker threads cluster in parallel only if the compiled kernel drops the GIL."""
    assert merge_kernel._merge_kernel.targetoptions.get("nogil") is True
