"""A saved SOHES directory works as a remote-code pipeline in a process where sohes_hf is missing.

The directory is what training writes: ``model.save_pretrained(d)`` + ``processor.save_pretrained(d)``.
The references are independent of this package's own claims: transformers' ``get_imports`` /
``get_relative_imports`` (what its remote-code loader requires and copies), transformers'
``Pipeline.save_pretrained`` (how transformers itself writes ``custom_pipelines``), and the entities
the installed package computes in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, PreTrainedModel, pipeline
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from sohes_hf.modeling import SohesForHierarchicalSegmentation, SohesImageProcessor
from sohes_hf.modeling.testing_utils import tiny_sohes_config
from sohes_hf.pipelines import TASK_NAME, HierarchicalSegmentationPipeline, register_pipeline

# Both processes compute with one intra-op thread, so float reductions run in the same order and
# masks can be compared exactly.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_SIZE = 64
EXPECTED_ENTRY = {
    TASK_NAME: {
        "impl": "pipeline_sohes.HierarchicalSegmentationPipeline",
        "pt": ["AutoModel"],
        "type": "image",
    }
}
# Every file the model, image processor and pipeline need, flat next to config.json.
EXPECTED_CODE = {
    "configuration_sohes.py",
    "modeling_sohes.py",
    "vit_adapter.py",
    "adapter_blocks.py",
    "ancestor_head.py",
    "image_processing_sohes.py",
    "forest.py",
    "targets.py",
    "masks.py",
    "structures.py",
    "pipeline_sohes.py",
}

# Runs in a fresh interpreter: sohes_hf cannot be imported (a meta-path finder refuses it before the
# editable install's finder is asked), only transformers and the repository's copied code are used.
REMOTE_SCRIPT = """
import importlib.abc, json, sys

class BlockSohes(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sohes_hf" or name.startswith("sohes_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, BlockSohes())
try:
    import sohes_hf  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the sohes_hf blocker does not work")

import torch
from transformers import AutoImageProcessor, pipeline

torch.set_num_threads(1)
repo, image = sys.argv[1], sys.argv[2]
processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True)
segmenter = pipeline("hierarchical-segmentation", model=repo, trust_remote_code=True, device="cpu")
entities = segmenter(image, threshold=0.0, ancestor_threshold=0.3)
print(json.dumps({
    "processor": type(processor).__module__ + "." + type(processor).__name__,
    "pipeline": type(segmenter).__module__ + "." + type(segmenter).__name__,
    "model": type(segmenter.model).__module__,
    "pipeline_processor": type(segmenter.image_processor).__module__,
    "sohes_modules": sorted(m for m in sys.modules if m.startswith("sohes_hf")),
    "entities": entities,
}))
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model and its processor saved the way training saves them."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("remote_repo")
    config = tiny_sohes_config(decoder_layers=1, num_queries=8)
    SohesForHierarchicalSegmentation(config).eval().save_pretrained(directory)
    SohesImageProcessor(size={"longest_edge": MODEL_SIZE}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("remote_image") / "image.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_saved_directory_carries_flat_code_that_needs_no_sohes_hf(repo: Path) -> None:
    code_files = {path.name for path in repo.glob("*.py")}
    assert code_files >= EXPECTED_CODE
    assert not [path for path in repo.rglob("*.py") if path.parent != repo], "code must be flat"
    for name in sorted(code_files):
        # transformers' own scan: the packages a remote-code file requires to be installed.
        required = get_imports(repo / name)
        assert not [module for module in required if module.split(".")[0] == "sohes_hf"], (name, required)
        # Relative imports must name files that were copied next to it.
        for relative in get_relative_imports(repo / name):
            assert f"{relative}.py" in code_files, f"{name} imports .{relative}, which was not copied"


def test_saved_configs_name_the_remote_classes(repo: Path) -> None:
    config = json.loads((repo / "config.json").read_text())
    assert config["custom_pipelines"] == EXPECTED_ENTRY
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sohes.SohesConfig",
        "AutoModel": "modeling_sohes.SohesForHierarchicalSegmentation",
    }
    processor = json.loads((repo / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_sohes.SohesImageProcessor"}


def test_entry_matches_what_transformers_pipeline_save_pretrained_writes(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' writer of ``custom_pipelines`` (Pipeline.save_pretrained) agrees with ours."""
    register_pipeline()
    model = SohesForHierarchicalSegmentation.from_pretrained(repo)
    # Only transformers code may write the entry: drop the loaded one, save the model the plain way.
    vars(model.config).pop("custom_pipelines")
    monkeypatch.setattr(SohesForHierarchicalSegmentation, "save_pretrained", PreTrainedModel.save_pretrained)
    segmenter = HierarchicalSegmentationPipeline(
        model=model, image_processor=SohesImageProcessor.from_pretrained(repo), device="cpu"
    )
    segmenter.save_pretrained(tmp_path / "via_pipeline")
    written = json.loads((tmp_path / "via_pipeline" / "config.json").read_text())
    assert written["custom_pipelines"] == EXPECTED_ENTRY
    assert {path.name for path in (tmp_path / "via_pipeline").glob("*.py")} >= EXPECTED_CODE


def test_installed_package_serves_the_task_without_trust_remote_code(repo: Path) -> None:
    """With sohes_hf registered, the saved ``custom_pipelines`` entry does not take over."""
    register_pipeline()
    config = AutoConfig.from_pretrained(repo)
    assert getattr(config, "custom_pipelines", None) == {}
    assert config.to_dict()["custom_pipelines"] == EXPECTED_ENTRY  # kept for re-saving
    segmenter = pipeline(TASK_NAME, model=str(repo), device="cpu")  # type: ignore[call-overload]
    assert type(segmenter) is HierarchicalSegmentationPipeline
    assert type(segmenter.image_processor) is SohesImageProcessor


def _canonical(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return json.loads(json.dumps(entities))


def test_remote_code_pipeline_without_sohes_hf_gives_the_same_entities(
    repo: Path, image_path: Path, tmp_path: Path
) -> None:
    register_pipeline()
    segmenter = pipeline(TASK_NAME, model=str(repo), device="cpu")  # type: ignore[call-overload]
    expected = _canonical(segmenter(str(image_path), threshold=0.0, ancestor_threshold=0.3))
    assert len(expected) > 1, "the tiny model keeps every query at threshold 0"
    assert any(entity["parent_id"] is not None for entity in expected), "compare a real hierarchy"

    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(repo), str(image_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sohes_modules"] == []
    assert report["processor"].startswith("transformers_modules.")
    assert report["processor"].endswith("image_processing_sohes.SohesImageProcessor")
    assert report["pipeline"].startswith("transformers_modules.")
    assert report["pipeline"].endswith("pipeline_sohes.HierarchicalSegmentationPipeline")
    assert report["model"].startswith("transformers_modules.")
    assert report["pipeline_processor"].startswith("transformers_modules.")

    actual = report["entities"]
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got["mask"] == want["mask"]
        assert (got["id"], got["parent_id"], got["depth"], got["children"]) == (
            want["id"],
            want["parent_id"],
            want["depth"],
            want["children"],
        )
        assert got["area"] == want["area"]
        assert got["bbox"] == pytest.approx(want["bbox"])
        assert got["score"] == pytest.approx(want["score"], rel=1e-6, abs=1e-9)
