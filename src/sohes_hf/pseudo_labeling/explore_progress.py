"""Signs of life for the self-exploration job: which step each image is in, on the progress bar.

One image can take minutes on a CPU (paper section 3.1 runs the backbone on the image and on
every small region's crop, then refines every mask with CascadePSP), so a bar that counts
finished images alone sits still for that long. :class:`ImageStatus` writes the step of the
images in flight as the bar's postfix ("image 3 (a.jpg): refining mask 12/80"), followed by this
run's speed in a unit readable at any speed ("2.3 min/image"; tqdm's own "3180.00s/img" is not,
so :data:`BAR_FORMAT` leaves it out); the wrappers below report from inside
:func:`~.self_exploration.explore_image` without changing it:

* :class:`ReportingExtractor` reports the backbone passes on local crops (step 2);
* :class:`ReportingRefiner` refines the masks in chunks sized to take about
  ``target_seconds`` each and reports after each chunk (step 3). It relies on the refiner
  treating masks independently (CascadePSP refines each mask on its own crop), so the result
  does not depend on the chunking; a fast refiner gets all the masks in one call after the first,
  and the identity (``none``) one call for all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sohes_hf.data.image_sources import ImageEntry
from sohes_hf.pseudo_labeling.explore_report import format_rate
from sohes_hf.pseudo_labeling.local_reclustering import FeatureExtractor
from sohes_hf.pseudo_labeling.refinement import RLE, MaskRefiner

_MAX_SHOWN = 2  # images shown in the postfix at once (with several workers)
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
"""tqdm's default layout without its rate, which :class:`ImageStatus` writes in the postfix."""


class ImageStatus:
    """The current step of the images in flight, shown as a tqdm bar's postfix.

    Thread-safe (worker threads report). Redraws at most every ``min_interval`` seconds, so a fast
    run does not spend its time writing to the terminal.

    Args:
        progress: the job's tqdm bar (a disabled bar makes every call a no-op).
        numbers: image key -> its 1-based position in the shard's listing (shown as "image N").
        min_interval: seconds between two redraws.
    """

    def __init__(self, progress: Any, numbers: Mapping[str, int], min_interval: float = 0.5) -> None:
        self.progress = progress
        self.numbers = numbers
        self.min_interval = min_interval
        self.steps: dict[str, str] = {}
        self.batch_keys: set[str] = set()  # images of the batch step shown (it ends when one starts)
        self.num_finished = 0
        self.rate = ""  # this run's speed when its last image finished (frozen in between)
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self._last_draw = 0.0

    def set(self, entry: ImageEntry, step: str) -> None:
        """Shows that ``entry`` is in ``step`` (e.g. "refining mask 12/80")."""
        with self._lock:
            if entry.key in self.batch_keys:  # the batch's backbone pass is over for this image
                self.steps.pop("batch", None)
                self.batch_keys = set()
            self.steps[entry.key] = f"image {self.numbers.get(entry.key, '?')} ({entry.file_name}): {step}"
            self._draw()

    def batch(self, entries: Sequence[ImageEntry], step: str) -> None:
        """Shows that a batch of images is in ``step`` ("images 1-7: backbone features")."""
        if not entries:
            return
        numbers = [self.numbers.get(entry.key, 0) for entry in entries]
        label = f"image {numbers[0]}" if len(numbers) == 1 else f"images {min(numbers)}-{max(numbers)}"
        with self._lock:
            self.steps["batch"] = f"{label}: {step}"
            self.batch_keys = {entry.key for entry in entries}
            self._draw(force=True)

    def clear(self, entry: ImageEntry, explored: bool = True) -> None:
        """Forgets a finished image; the rate counts explored images (a skipped one takes no time)."""
        with self._lock:
            if explored:
                self.num_finished += 1
                self.rate = format_rate(self.num_finished, time.perf_counter() - self._start)
            self.steps.pop(entry.key, None)
            if entry.key in self.batch_keys:
                self.batch_keys.discard(entry.key)
                if not self.batch_keys:
                    self.steps.pop("batch", None)
            self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        refresh = force or now - self._last_draw >= self.min_interval
        text = " | ".join(list(self.steps.values())[-_MAX_SHOWN:] + ([self.rate] if self.rate else []))
        self.progress.set_postfix_str(text, refresh=refresh)
        if refresh:
            self._last_draw = now


class ReportingExtractor:
    """A :class:`FeatureExtractor` that reports each backbone pass on local crops (step 2)."""

    def __init__(self, extractor: FeatureExtractor, report: Callable[[str], None]) -> None:
        self.extractor = extractor
        self.patch_size = extractor.patch_size
        self.report = report

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        self.report(f"local re-clustering of {len(images)} small regions")
        return self.extractor.extract(images, size)


class ReportingRefiner(MaskRefiner):
    """A :class:`MaskRefiner` that refines in timed chunks and reports "refining mask i/N".

    Args:
        refiner: the refiner doing the work; must refine each mask independently of the others.
        report: receives the step text.
        target_seconds: a chunk is sized from the time per mask measured so far to take about
            this long (one mask at first; all the rest at once for a fast refiner).
    """

    def __init__(
        self, refiner: MaskRefiner, report: Callable[[str], None], target_seconds: float = 2.0
    ) -> None:
        self.refiner = refiner
        self.name = refiner.name
        self.report = report
        self.target_seconds = target_seconds

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[RLE]:
        total = len(masks)
        if self.name == "none":  # the identity takes no time: one call, nothing to report
            return self.refiner.refine(image, masks)
        refined: list[RLE] = []
        chunk = 1
        seconds = 0.0
        while len(refined) < total:
            self.report(f"refining mask {len(refined) + 1}/{total}")
            expected = min(chunk, total - len(refined))
            start = time.perf_counter()
            part = self.refiner.refine(image, masks[len(refined) : len(refined) + expected])
            seconds += time.perf_counter() - start
            if len(part) != expected:
                raise ValueError(f"refiner {self.name!r} returned {len(part)} masks for {expected}")
            refined.extend(part)
            per_mask = seconds / len(refined)
            chunk = total if per_mask <= 0 else max(1, int(self.target_seconds / per_mask))
        self.report(f"hierarchy of the refined masks ({total} before IoU filtering)")
        return refined
