"""Training datasets for phases 2 and 3: images + pseudo-label masks + ancestor matrices.

Images come from the data layer's sources (a folder, list file or SA-1B ``.tar`` packs, see
:mod:`sohes_hf.data.image_sources`); pseudo-labels from a pseudo-label store (COCO JSON shards or
the Parquet store of :mod:`sohes_hf.data.pseudo_label_store`), joined on ``file_name``.

Indexing is by *stream position*, not image index: position p of stream s is image
``perm(seed, s, epoch)[p mod N]`` with ``epoch = p // N``, and its augmentation is drawn from a
generator seeded with (seed, s, p). Data order and augmentations are therefore a pure function of
the seed and the number of samples consumed, which is what lets ``--resume`` continue bit-for-bit
(the sampler restarts at the consumed position; no worker RNG is involved). Map-style access is
required for that, so the SA-1B tars are read by member, not streamed.

Unreadable images never stop a run by themselves. At load every image's header is opened
(:meth:`ImageReader.probe`, nothing decoded; the processes of a distributed run share the
work, :mod:`sohes_hf.data.image_probe`) and the ones that fail are left out, logged with their
names. An image that fails only when decoded mid-run is replaced by the next image index
that decodes (``(i + 1) mod N``, ...), with a WARNING naming both; the augmentation is still the
one of the original stream position, so the substitute is a pure function of the data and
(seed, stream position) and a resumed run makes the same substitution. The examples carry the
names of the images they replaced (``substituted``) so the trainer counts them in its
checkpointed state and the training record. More unreadable images than
``max_unreadable_fraction`` of all images stops the run with :class:`TrainingDataError`
(something is wrong with the data, not with a few files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from sohes_hf.data.image_probe import DEFAULT_PROBE_THREADS, probe_images
from sohes_hf.data.image_sources import ImageEntry, ImageReader, ImageReadError, list_images
from sohes_hf.data.pseudo_label_checks import PseudoLabelError
from sohes_hf.data.pseudo_label_store import PseudoLabelStore, open_pseudo_label_store, targets_for_image
from sohes_hf.logging_utils import get_logger
from sohes_hf.masks import decode_masks
from sohes_hf.modeling.targets import ancestor_matrix, validate_parents
from sohes_hf.training.augmentation import (
    AugmentedSample,
    copy_paste,
    normalize_image,
    strong_augmentation,
    weak_augmentation,
)
from sohes_hf.training.collate import SelfCorrectionExample, TrainingExample
from sohes_hf.training.config import AugmentationConfig

logger = get_logger(__name__)

_INITIAL_STREAM = 0
_TEACHER_STREAM = 1
_COPY_PASTE_STREAM = 2
_NAMES_LOGGED = 20  # unreadable images named in the load-time warning (the rest are counted)
UNREADABLE_AT_LOAD = "unreadable image (its header does not open)"
SIZE_MISMATCH_AT_LOAD = "image size differs from its pseudo-labels' (the file changed since they were made)"


class TrainingDataError(ValueError):
    """The training images cannot be used (too many unreadable); the message says what to do."""


def check_unreadable_fraction(
    num_unreadable: int, num_images: int, max_fraction: float, where: str, names: Sequence[str]
) -> None:
    """Stops a run whose unreadable images exceed ``max_fraction`` of ``num_images``.

    Args:
        names: some unreadable images, named in the message.

    Raises:
        TrainingDataError: ``num_unreadable > max_fraction * num_images``.
    """
    if num_unreadable > max_fraction * num_images:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise TrainingDataError(
            f"{where}: {num_unreadable} of {num_images} images are unreadable ({shown}), more than "
            f"max_unreadable_fraction={max_fraction}; fix or re-download them, remove them, or raise "
            "max_unreadable_fraction in the recipe"
        )


@dataclass
class LabelledImage:
    """One decoded training image with its pseudo-labels.

    Attributes:
        image: (3, H, W) float32 RGB in [0, 1].
        masks: (M, H, W) bool at the image size.
        parents: (M,) int64 direct-parent indices, -1 for roots.
    """

    image: torch.Tensor
    masks: torch.Tensor
    parents: torch.Tensor


class PseudoLabelledImages:
    """Random access to images joined with their pseudo-labels.

    Args:
        train_annotations: pseudo-label COCO JSON file(s)/folder or a ``.parquet`` store.
        image_root: folder, list file or SA-1B ``.tar`` pack(s) (several joined with ``os.pathsep``).
        require_labels: skip images without any pseudo-label mask (they teach only "no object").
        max_unreadable_fraction: unreadable images tolerated, as a fraction of the labelled
            images found (at load here, and mid-run in the trainer).
        probe_threads: threads opening image headers at load (:func:`probe_images`).
        probe_across_processes: every process of the initialised ``torch.distributed`` group
            builds this dataset at once (the trainers): each checks a share of the headers.

    Attributes:
        num_dropped: images left out, per reason (also logged as warnings): listed but without
            labels, labelled but not found, unreadable, of another size than their labels, or
            with no annotation.
        num_unreadable_at_load: labelled images left out because they do not open.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no image of ``image_root`` has pseudo-labels.
        TrainingDataError: more than ``max_unreadable_fraction`` of the images do not open.
    """

    def __init__(
        self,
        train_annotations: str,
        image_root: str,
        require_labels: bool = True,
        max_unreadable_fraction: float = 0.01,
        probe_threads: int = DEFAULT_PROBE_THREADS,
        probe_across_processes: bool = False,
    ) -> None:
        if not 0.0 <= max_unreadable_fraction <= 1.0:
            raise ValueError(f"max_unreadable_fraction must be in [0, 1], got {max_unreadable_fraction}")
        self.max_unreadable_fraction = max_unreadable_fraction
        roots = [p for p in str(image_root).split(os.pathsep) if p]
        for root in roots:
            if not os.path.exists(root):
                raise FileNotFoundError(f"image_root not found: {root}")
        if not roots:
            raise ValueError("image_root must name a folder, list file or SA-1B tar pack")
        self.store: PseudoLabelStore = open_pseudo_label_store(train_annotations)  # validates every label
        entries: list[tuple[ImageEntry, int]] = []
        dropped: dict[str, list[str]] = {}  # reason -> file names (logged as counts and examples)
        num_matched = 0  # images of the store found under image_root
        for entry in list_images(roots):
            image_id = self.store.image_id_for_file_name(entry.file_name)
            num_matched += image_id is not None
            if image_id is None:
                reason = "listed under image_root but absent from the pseudo-label file"
            elif entry.problem is not None:  # a cut tar member, a link...: reading it would fail mid-run
                reason = "unreadable input (see the warnings above)"
            elif require_labels and self._num_labels(image_id) == 0:
                reason = "no pseudo-label annotation"
            else:
                entries.append((entry, image_id))
                continue
            dropped.setdefault(reason, []).append(entry.file_name)
        entries = self._openable(entries, dropped, probe_threads, probe_across_processes)
        self.num_unreadable_at_load = len(dropped.get(UNREADABLE_AT_LOAD, []))
        self.num_dropped = {reason: len(names) for reason, names in dropped.items()}
        if len(self.store) > num_matched:
            self.num_dropped["in the pseudo-label file but no such file under image_root"] = (
                len(self.store) - num_matched
            )
        for reason, count in self.num_dropped.items():
            examples = ", ".join(dropped.get(reason, [])[:3])
            logger.warning(
                "dropped %d image(s): %s%s", count, reason, f" (e.g. {examples})" if examples else ""
            )
        if not entries:
            raise PseudoLabelError(
                f"no image under image_root={image_root!r} has usable pseudo-labels in "
                f"{train_annotations!r} (images are joined on file_name; left out: {self.num_dropped})"
            )
        check_unreadable_fraction(
            self.num_unreadable_at_load,
            len(entries) + self.num_unreadable_at_load,
            max_unreadable_fraction,
            f"image_root {image_root}",
            dropped.get(UNREADABLE_AT_LOAD, []),
        )
        self.entries = entries
        self._reader: ImageReader | None = None
        logger.info("training on %d pseudo-labelled images", len(entries))

    def _openable(
        self,
        entries: list[tuple[ImageEntry, int]],
        dropped: dict[str, list[str]],
        num_threads: int,
        across_processes: bool,
    ) -> list[tuple[ImageEntry, int]]:
        """The entries whose image header opens, at the size their pseudo-labels were made for.

        The others go to ``dropped`` (and are logged): either would otherwise stop training at
        the first step that draws the image (the masks could not be laid over its pixels). The
        headers are checked by :func:`probe_images` (``num_threads``, ``across_processes``).
        """
        kept = []
        headers = probe_images(
            [entry for entry, _ in entries], num_threads=num_threads, across_processes=across_processes
        )
        for (entry, image_id), header in zip(entries, headers, strict=True):
            if isinstance(header, str):
                _drop(dropped, UNREADABLE_AT_LOAD, entry.file_name, "does not open, left out: %s", header)
                continue
            width, height = header
            size = self.store.image_size(image_id)  # a lookup, no labels converted
            if size is not None and size != (height, width):
                _drop(
                    dropped, SIZE_MISMATCH_AT_LOAD, entry.file_name,
                    "is %dx%d (height x width) but its pseudo-labels are for %dx%d, left out: explore "
                    "the image again", height, width, *size,
                )  # fmt: skip
                continue
            kept.append((entry, image_id))
        return kept

    def _num_labels(self, image_id: int) -> int:
        return self.store.num_labels(image_id) or 0  # a lookup, no labels converted

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> LabelledImage:
        """Decodes image ``index`` and its masks.

        Raises:
            ImageReadError: the image cannot be read or decoded.
            ValueError: the pseudo-label masks do not have the image's size.
        """
        entry, image_id = self.entries[index]
        if self._reader is None:  # opened lazily so every data-loader worker has its own
            self._reader = ImageReader()
        pixels = self._reader.read(entry)
        height, width = pixels.shape[:2]
        labels = self.store.get(image_id)
        if labels is None:
            raise ValueError(f"image {entry.file_name}: no pseudo-labels")
        targets = targets_for_image(labels.labels)
        for number, rle in enumerate(targets["masks"]):
            if [int(v) for v in rle["size"]] != [height, width]:
                raise ValueError(
                    f"image {entry.file_name}: pseudo-label {number} has size {rle['size']}, image is "
                    f"{[height, width]}"
                )
        try:
            masks = decode_masks(targets["masks"], height, width)
        except ValueError as error:  # the store validated the labels at load: the file changed since
            raise ValueError(f"image {entry.file_name} (id {image_id}): pseudo-labels: {error}") from error
        parents = validate_parents(
            targets["parents"], len(targets["masks"]), name=f"{entry.file_name} parents"
        )
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)
        return LabelledImage(image, torch.from_numpy(masks), torch.from_numpy(parents))


def _drop(dropped: dict[str, list[str]], reason: str, file_name: str, message: str, *args: object) -> None:
    """Records an image left out at load under ``reason``; the first ``_NAMES_LOGGED`` get a WARNING."""
    names = dropped.setdefault(reason, [])
    if len(names) < _NAMES_LOGGED:
        logger.warning("image %s " + message, file_name, *args)
    names.append(file_name)


def _generator(seed: int, stream: int, position: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream, position]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _PositionStream:
    """Maps a stream position to an image index: one fresh permutation per epoch."""

    def __init__(self, num_images: int, seed: int, stream: int) -> None:
        self.num_images = num_images
        self.seed = seed
        self.stream = stream
        self._epoch = -1
        self._permutation = np.arange(num_images)

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_images)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            self._permutation = rng.permutation(self.num_images)
            self._epoch = epoch
        return int(self._permutation[offset])


def _to_example(
    sample: AugmentedSample, config: AugmentationConfig, substituted: Sequence[str] = ()
) -> TrainingExample:
    parents = sample.parents.numpy()
    return TrainingExample(
        pixel_values=normalize_image(sample.image, sample.valid, config.image_mean, config.image_std),
        pixel_mask=sample.valid.long(),
        mask_labels=sample.masks,
        class_labels=torch.zeros(sample.masks.shape[0], dtype=torch.long),
        ancestor_labels=torch.from_numpy(ancestor_matrix(parents).astype(np.float32)),
        substituted=tuple(substituted),
    )


class _AugmentingDataset(Dataset):
    def __init__(self, images: PseudoLabelledImages, config: AugmentationConfig, seed: int) -> None:
        config.validate()
        self.images = images
        self.config = config
        self.seed = seed
        self._streams = {s: _PositionStream(len(images), seed, s) for s in (_INITIAL_STREAM, _TEACHER_STREAM)}

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int, substituted: list[str]) -> LabelledImage:
        """Image ``index``, or the next index that decodes (names of the failed ones appended).

        Raises:
            TrainingDataError: no image decodes.
        """
        num_images = len(self.images)
        for step in range(num_images):
            candidate = (index + step) % num_images
            try:
                return self.images.load(candidate)
            except ImageReadError as error:
                name = self.images.entries[candidate][0].file_name
                substituted.append(name)
                logger.warning(
                    "image %s cannot be decoded (%s); image %s is used in its place",
                    name,
                    error.reason,
                    self.images.entries[(candidate + 1) % num_images][0].file_name,
                )
        raise TrainingDataError(f"image_root: none of the {num_images} training images can be decoded")

    def _jitter(self, image: LabelledImage, generator: torch.Generator) -> AugmentedSample:
        return weak_augmentation(image.image, image.masks, image.parents, self.config, generator)

    def _initial_sample(self, position: int, photometric: bool, substituted: list[str]) -> AugmentedSample:
        """strong/standard view of stream-0 image at ``position``: LSJ, flip, copy-paste."""
        c = self.config
        generator = _generator(self.seed, _INITIAL_STREAM, position)
        index = self._streams[_INITIAL_STREAM].index(position)
        sample = self._jitter(self._load(index, substituted), generator)
        if len(self.images) > 1 and float(torch.rand((), generator=generator)) < c.copy_paste_probability:
            other = int(torch.randint(0, len(self.images) - 1, (), generator=generator))
            other += int(other >= index)  # any image but this one
            paste_generator = _generator(self.seed, _COPY_PASTE_STREAM, position)
            source = self._jitter(self._load(other, substituted), paste_generator)
            sample = copy_paste(sample, source, c.max_pasted_objects, paste_generator, c.min_mask_area)
        if photometric:
            sample = strong_augmentation(sample, c, generator)
        return sample


class SelfInstructionDataset(_AugmentingDataset):
    """Phase 2 examples: LSJ + flip + copy-paste of the initial pseudo-labels (sections 3.2, E).

    ``dataset[p]`` is stream position p (see module doc); any non-negative p is valid, so
    ``len(dataset)`` is the number of distinct images, not an upper bound on positions.
    """

    def __getitem__(self, position: int) -> TrainingExample:
        if position < 0:
            raise IndexError(f"stream position must be >= 0, got {position}")
        substituted: list[str] = []
        sample = self._initial_sample(position, photometric=False, substituted=substituted)
        return _to_example(sample, self.config, substituted)


class SelfCorrectionDataset(_AugmentingDataset):
    """Phase 3 examples (eq. 2): strong(I1) + initial labels, and weak/strong views of I2.

    I1 and I2 come from two independent permutations of the images. weak(I2) is large-scale
    jitter + flip; strong(I2) is weak(I2) plus photometric augmentation, the same geometry, so the
    teacher's masks on weak(I2) are labels for strong(I2) as they are. strong(I1) is LSJ + flip +
    copy-paste + photometric.
    """

    def __getitem__(self, position: int) -> SelfCorrectionExample:
        if position < 0:
            raise IndexError(f"stream position must be >= 0, got {position}")
        c = self.config
        substituted: list[str] = []
        initial = _to_example(self._initial_sample(position, photometric=True, substituted=substituted), c)
        generator = _generator(self.seed, _TEACHER_STREAM, position)
        index = self._streams[_TEACHER_STREAM].index(position)
        weak = self._jitter(self._load(index, substituted), generator)
        strong = strong_augmentation(weak, c, generator)
        return SelfCorrectionExample(
            initial=initial,
            weak_pixel_values=normalize_image(weak.image, weak.valid, c.image_mean, c.image_std),
            strong_pixel_values=normalize_image(strong.image, weak.valid, c.image_mean, c.image_std),
            pixel_mask=weak.valid.long(),
            substituted=tuple(substituted),
        )


def stream_positions(start: int, stop: int) -> Sequence[int]:
    """The sampler of the training data loader: stream positions ``start .. stop - 1``.

    Resuming after ``k`` optimizer steps restarts at ``k x global batch size``.
    """
    if not 0 <= start <= stop:
        raise ValueError(f"stream positions need 0 <= start <= stop, got {start}, {stop}")
    return range(start, stop)
