"""Issue 18.2: without network a Hub backbone fails in one line naming --backbone, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image

from sohes_hf.hub import HubUnreachableError, load_from_hub_or_folder


def test_explore_offline_without_cache_is_one_line(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty_hf_home"))
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    command = [sys.executable, "-m", "sohes_hf.cli.main", "-q", "explore", str(images)]
    result = subprocess.run(
        [*command, "--output", str(tmp_path / "out"), "--refiner", "none"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sohes: error: could not reach the Hugging Face Hub to download ")
    assert "facebook/dino-vitb8" in lines[0] and "--backbone DIR" in lines[0]
    assert "hf download facebook/dino-vitb8 --local-dir DIR" in lines[0]


def test_only_hub_errors_become_hub_unreachable() -> None:
    def offline(name: str) -> None:
        try:
            raise LocalEntryNotFoundError("not in the cache and outgoing traffic is disabled")
        except LocalEntryNotFoundError as error:
            raise OSError(f"We couldn't connect to load {name}") from error

    with pytest.raises(HubUnreachableError, match="download org/model") as caught:
        load_from_hub_or_folder(offline, "org/model")
    assert caught.value.name == "org/model"

    unrelated = OSError("org/model does not appear to have a file named config.json")

    def broken(name: str) -> None:
        raise unrelated

    with pytest.raises(OSError) as other:
        load_from_hub_or_folder(broken, "org/model")
    assert other.value is unrelated and not isinstance(other.value, HubUnreachableError)
    assert load_from_hub_or_folder(lambda name, scale: name * scale, "ab", 2) == "abab"
