"""Module-scoped fixtures of the training tests: a pseudo-labelled folder and a saved phase-2 model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.training import tiny_model_config, write_pseudo_labelled_folder

from sohes_hf.modeling import SohesConfig, SohesForHierarchicalSegmentation


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, pseudo-label JSON) of a few nested-rectangle images."""
    return write_pseudo_labelled_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def phase2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model saved as if it came out of self-instruction (the start of phase 3)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("phase2")
    SohesForHierarchicalSegmentation(SohesConfig(**tiny_model_config())).save_pretrained(folder)
    return folder
