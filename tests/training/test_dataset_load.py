"""Loading the training dataset looks labels up without converting them, in every store format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.training import write_pseudo_labelled_folder

from sohes_hf.data.pseudo_label_store import (
    ArrowPseudoLabelStore,
    JsonPseudoLabelStore,
    ParquetPseudoLabelStore,
    convert_pseudo_labels,
)
from sohes_hf.training.datasets import PseudoLabelledImages

UNLABELLED = (4, 11)  # image ids whose annotations are removed


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("load")
    image_dir, labels = write_pseudo_labelled_folder(root, num_images=12, size=48)
    data = json.loads(labels.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in UNLABELLED]
    labels.write_text(json.dumps(data))
    for suffix in (".arrow", ".parquet"):  # 2 rows per group: the listing order crosses groups
        convert_pseudo_labels(labels, root / f"labels{suffix}", rows_per_group=2)
    return image_dir, labels


@pytest.mark.parametrize(
    ("store_class", "labels_name"),
    [
        (JsonPseudoLabelStore, None),
        (ArrowPseudoLabelStore, "labels.arrow"),
        (ParquetPseudoLabelStore, "labels.parquet"),
    ],
)
def test_load_converts_no_labels_and_keeps_the_same_images(
    labelled_folder: tuple[Path, Path],
    store_class: type,
    labels_name: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image_dir, labels = labelled_folder
    path = labels if labels_name is None else labels.parent / labels_name
    calls: list[int] = []
    get = store_class.get

    def counting_get(store: object, image_id: int) -> object:
        calls.append(image_id)
        return get(store, image_id)

    monkeypatch.setattr(store_class, "get", counting_get)
    images = PseudoLabelledImages(str(path), str(image_dir))
    assert calls == []  # counts and sizes are lookups: no image's labels were converted at load
    kept = sorted(image_id for _, image_id in images.entries)
    assert kept == [i for i in range(1, 13) if i not in UNLABELLED]
    assert images.num_dropped == {"no pseudo-label annotation": len(UNLABELLED)}
    assert images.load(0).masks.shape == (4, 48, 48)  # the labels still load when drawn
