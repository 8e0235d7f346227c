"""The training record written next to the final model (``training_record.json``).

Its keys are a cross-team contract (COMMON.md): the model card reads them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from dataclasses import dataclass
from typing import Any

from sohes_hf import __version__
from sohes_hf.atomic_io import write_json_atomic

TRAINING_RECORD_NAME = "training_record.json"


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds (e.g. ``2026-11-25T08:00:00+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class TrainingRecord:
    """What a training run did, for the model card.

    Attributes:
        phase: "self-instruction" or "self-correction".
        steps: optimizer steps completed.
        global_batch_size: images per optimizer step over all processes (per loss term in phase 3).
        learning_rate: peak learning rate after batch-size scaling.
        optimizer: e.g. "Adan(betas=(0.98, 0.92, 0.99), weight_decay=0.05)".
        ema_momentum: the EMA teacher's m (phase 3), None for phase 2.
        train_data: the pseudo-label file and image root the run read.
        num_train_images: distinct pseudo-labelled images.
        seed: the run's seed.
        sohes_hf_version: package version.
        started_at, finished_at: ISO 8601 UTC times.
        final_loss: the last logged total training loss (mean over the last logging window).
        backbone_initialization: where the ViT weights of the run's starting point came from:
            "dino" (DINO weights, paper A), "random" (no pre-trained weights: smoke tests) or
            "unknown" (a saved model without a record saying so). The model card states it.
        backbone_source: the DINO checkpoint (Hub id or folder), or for "unknown" the model the
            run started from; None for "random".
        dropped_images: images of the inputs left out at load, per reason (e.g. no labels,
            unreadable image).
        unreadable_images: distinct images that failed to decode mid-run (each replaced).
        image_substitutions: examples in which such an image was replaced by another.
    """

    phase: str
    steps: int
    global_batch_size: int
    learning_rate: float
    optimizer: str
    ema_momentum: float | None
    train_data: str
    num_train_images: int
    seed: int
    started_at: str
    finished_at: str
    final_loss: float
    sohes_hf_version: str = __version__
    backbone_initialization: str = "unknown"
    backbone_source: str | None = None
    dropped_images: dict[str, int] = dataclasses.field(default_factory=dict)
    unreadable_images: int = 0
    image_substitutions: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the contract."""
        return dataclasses.asdict(self)


def write_training_record(record: TrainingRecord, directory: str | os.PathLike[str]) -> str:
    """Writes ``training_record.json`` into ``directory`` atomically; returns its path."""
    path = os.path.join(directory, TRAINING_RECORD_NAME)
    write_json_atomic(path, record.to_dict())
    return path


def read_training_record(path: str | os.PathLike[str]) -> TrainingRecord:
    """Reads a ``training_record.json`` (file or the folder holding it).

    Raises:
        FileNotFoundError: no record there.
        ValueError: missing or unknown keys.
    """
    if os.path.isdir(path):
        path = os.path.join(path, TRAINING_RECORD_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training record not found: {path}")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    fields = dataclasses.fields(TrainingRecord)
    names = {f.name for f in fields}
    # Keys with a default were added later: records written before them stay readable.
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    if not required <= set(data) <= names:
        raise ValueError(f"{path}: keys {sorted(data)} differ from the contract {sorted(names)}")
    return TrainingRecord(**data)


def backbone_initialization(
    model_name_or_path: str | None, dino_backbone: str | None
) -> tuple[str, str | None]:
    """``(backbone_initialization, backbone_source)`` of a run, as ``build_model`` starts it.

    A run that starts from a saved model (phase 3 from phase 2) inherits what that model's own
    ``training_record.json`` says, when the folder has one.
    """
    if model_name_or_path:
        path = os.path.join(str(model_name_or_path), TRAINING_RECORD_NAME)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            data = {}
        kind = data.get("backbone_initialization") if isinstance(data, dict) else None
        if kind in ("dino", "random"):
            return kind, data.get("backbone_source")
        return "unknown", str(model_name_or_path)
    if dino_backbone:
        return "dino", str(dino_backbone)
    return "random", None
