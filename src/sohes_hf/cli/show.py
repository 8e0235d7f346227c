"""``sohes show``: pictures of the masks of a COCO file (pseudo-labels, predictions, ground truth).

Draws, for each selected image ``NAME``, the pictures ``sohes segment`` makes: ``NAME.overlay.png``
(every level), ``NAME.levels.png`` (one tile per depth: wholes, parts, subparts), ``NAME.tree.png``
(the hierarchy as thumbnails) and ``NAME.tree.txt``. Reads:

* a COCO file (``images`` + ``annotations``), e.g. ``sohes explore``'s pseudo-labels, whose
  ``parent_id`` links give the hierarchy (a file without links is drawn as wholes only); it is
  streamed, so an SA-1B-sized shard is not loaded whole;
* a COCO results list (``[{"image_id", "segmentation", "score"}]``, e.g. ``sohes evaluate
  --save-predictions``) with ``--image-info`` naming the COCO file that gives its images' names.

Examples::

    sohes show pseudo/pseudo_labels.shard-00000-of-00001.json photos/ --output pictures/
    sohes show preds.json val2017/ --image-info instances_val2017.json --images 139 285
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sohes_hf.cli.arguments import HelpFormatter
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

DESCRIPTION = """\
Draws, for each selected image NAME, the pictures `sohes segment` makes: NAME.overlay.png (every
level), NAME.levels.png (one tile per depth: wholes, parts, subparts), NAME.tree.png (the hierarchy
as thumbnails) and NAME.tree.txt.

LABELS.json is a COCO file (images + annotations), such as the pseudo-labels of `sohes explore`,
whose parent_id links give the hierarchy (without links every mask is drawn as a whole); it is
streamed, not loaded whole. Or it is a COCO results list ([{"image_id", "segmentation", "score"}],
such as `sohes evaluate --save-predictions` writes), with --image-info naming the COCO file that
gives its images' file names.

Examples:
  sohes show pseudo/pseudo_labels.shard-00000-of-00001.json photos/ --output pictures/
  sohes show preds.json val2017/ --image-info instances_val2017.json --images 139 285"""


def register(subparsers: Any) -> None:
    """Adds the ``show`` parser to the ``sohes`` command."""
    parser = subparsers.add_parser(
        "show",
        help="draw the masks of a pseudo-label, prediction or ground-truth COCO file as pictures",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("labels", metavar="LABELS.json", type=Path, help="COCO file or COCO results list")
    parser.add_argument(
        "image_root", metavar="IMAGE_ROOT", type=Path, help="folder the file names are relative to"
    )
    parser.add_argument("--output", type=Path, default=Path("sohes_pictures"), help="folder for the pictures")
    parser.add_argument(
        "--images", nargs="+", metavar="NAME_OR_ID",
        help="images to draw, by file name, file stem or image id (default: the first --max-images)",
    )  # fmt: skip
    parser.add_argument(
        "--max-images", type=int, default=20, help="images drawn when --images is not given; 0 draws all"
    )
    parser.add_argument(
        "--image-info", type=Path, metavar="COCO_JSON",
        help="for a results list: the COCO file whose 'images' give each image id's file name",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draws the selected images; prints one line per image; returns the exit code."""
    from sohes_hf.cli.main import CliError, CliFailure

    if not args.labels.is_file():
        raise CliError(f"LABELS: file not found: {args.labels}")
    if not args.image_root.is_dir():
        raise CliError(f"IMAGE_ROOT: {args.image_root} is not a folder")
    if args.max_images < 0:
        raise CliError(f"--max-images: must be >= 0, got {args.max_images}")
    if args.image_info is not None and not args.image_info.is_file():
        raise CliError(f"--image-info: file not found: {args.image_info}")
    try:
        labels = read_labels(args.labels, args.images, args.max_images, args.image_info)
    except ValueError as error:
        raise CliError(f"LABELS: {args.labels}: {error}") from error

    def load(image: Mapping[str, Any]) -> np.ndarray:
        from PIL import Image

        with Image.open(args.image_root / str(image["file_name"])) as opened:
            return np.array(opened.convert("RGB"))

    drawn = draw_label_pictures(labels, load, args.output)
    for line in drawn:
        print(line)
    if not drawn:
        raise CliFailure(
            f"no picture was drawn: none of the {len(labels.images)} selected images could be read "
            f"under {args.image_root} (see the warnings above); check IMAGE_ROOT"
        )
    return 0


@dataclass(frozen=True)
class SelectedLabels:
    """The images chosen from a labels file and their annotations.

    Attributes:
        images: COCO image records (``id``, ``file_name``, ``width``, ``height``), in file order.
        annotations: image id -> its annotations, in file order.
    """

    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]


def read_labels(
    path: Path,
    wanted: Sequence[str] | None = None,
    max_images: int = 20,
    image_info: Path | None = None,
) -> SelectedLabels:
    """Reads the selected images of a COCO file or results list, and their annotations.

    Args:
        path: a COCO file (``images`` + ``annotations``) or a results list.
        wanted: image file names, stems or ids to keep (None: the first ``max_images``).
        max_images: images kept when ``wanted`` is None (0: all).
        image_info: for a results list, the COCO file holding its ``images``.

    Raises:
        ValueError: the file is neither form, a results list comes without ``image_info``, or a
            ``wanted`` image is not in the file.
    """
    from sohes_hf.pseudo_labeling.coco_stream import iter_coco_members

    is_list = _first_character(path) == "["
    if is_list and image_info is None:
        raise ValueError(
            "a COCO results list has no file names; give --image-info COCO_JSON (the file with its images)"
        )
    image_source = image_info if is_list and image_info is not None else path
    all_images = []
    for name, element in iter_coco_members(image_source):
        if name == "images" and isinstance(element, dict):
            all_images.append(element)
        elif all_images:  # the images member is over: do not read the annotations twice
            break
    if not all_images:
        raise ValueError(f"{image_source} lists no images (expected a COCO file with 'images')")
    images = _select(all_images, wanted, max_images)
    ids = {int(image["id"]) for image in images}
    annotations: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in ids}
    records: Iterable[Any]
    if is_list:
        records = json.loads(path.read_text(encoding="utf-8"))
    else:
        records = (element for name, element in iter_coco_members(path) if name == "annotations")
    for record in records:
        if isinstance(record, dict) and record.get("image_id") in ids:
            annotations[int(record["image_id"])].append(record)
    return SelectedLabels(images=images, annotations=annotations)


def _first_character(path: Path) -> str:
    with open(path, encoding="utf-8") as handle:
        while True:
            character = handle.read(1)
            if not character or not character.isspace():
                return character


def _select(
    images: list[dict[str, Any]], wanted: Sequence[str] | None, max_images: int
) -> list[dict[str, Any]]:
    if wanted is None:
        return images if max_images == 0 else images[:max_images]
    chosen = []
    for name in wanted:
        match = next(
            (
                image
                for image in images
                if name in (str(image.get("id")), str(image.get("file_name")))
                or name in (Path(str(image.get("file_name"))).name, Path(str(image.get("file_name"))).stem)
            ),
            None,
        )
        if match is None:
            raise ValueError(f"--images: no image {name!r} in the file (give a file name, stem or id)")
        if match not in chosen:
            chosen.append(match)
    return chosen


def draw_label_pictures(
    labels: SelectedLabels, load_image: Callable[[Mapping[str, Any]], np.ndarray], output_dir: Path
) -> list[str]:
    """Draws every selected image; returns one line per drawn image (name, masks per depth, picture).

    An image that cannot be read, or whose masks do not fit it, is skipped with a warning naming
    it; the others are drawn.
    """
    from sohes_hf.data.image_sources import ImageReadError
    from sohes_hf.visualization.coco_entities import entities_from_annotations

    output_dir.mkdir(parents=True, exist_ok=True)
    stems: set[str] = set()
    written: list[str] = []
    for image in labels.images:
        file_name = str(image.get("file_name", image["id"]))
        try:
            picture = load_image(image)
            height, width = picture.shape[:2]
            entities = entities_from_annotations(labels.annotations[int(image["id"])], height, width)
        except ImageReadError as error:
            logger.warning("skipping %s: %s", file_name, error.reason)
            continue
        except (OSError, ValueError) as error:
            logger.warning("skipping %s: %s", file_name, error)
            continue
        stem = Path(file_name).stem or str(image["id"])
        if stem in stems:
            stem = f"{stem}-{image['id']}"
        stems.add(stem)
        paths = write_pictures(output_dir, stem, picture, entities)
        depths = [entity["depth"] for entity in entities]
        levels = ", ".join(f"{depths.count(d)} at depth {d}" for d in sorted(set(depths))) or "no mask"
        written.append(f"{file_name}: {len(entities)} masks ({levels}) -> {paths[1]}")
    return written


def write_pictures(
    output_dir: Path, stem: str, picture: np.ndarray, entities: Sequence[Mapping[str, Any]]
) -> list[Path]:
    """Writes ``stem``.overlay.png, .levels.png, .tree.png and .tree.txt; returns their paths."""
    from sohes_hf.atomic_io import write_bytes_atomic
    from sohes_hf.visualization import (
        depth_level_panel,
        format_tree,
        overlay_entities,
        render_tree,
        save_image,
    )

    paths = [
        save_image(output_dir / f"{stem}.overlay.png", overlay_entities(picture, entities)),
        save_image(output_dir / f"{stem}.levels.png", depth_level_panel(picture, entities)),
        save_image(output_dir / f"{stem}.tree.png", render_tree(picture, entities)),
    ]
    tree_path = output_dir / f"{stem}.tree.txt"
    write_bytes_atomic(tree_path, (format_tree(entities) + "\n").encode("utf-8"))
    return [*paths, tree_path]
