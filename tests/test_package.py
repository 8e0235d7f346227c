"""The package surface: cheap import, lazy public names, registration with transformers."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout


def test_import_is_cheap_and_names_are_lazy() -> None:
    out = _run(
        "import sys, sohes_hf, sohes_hf.cli.main; "
        "print('torch' in sys.modules, 'transformers' in sys.modules, sorted(sohes_hf.__all__)[:3])"
    )
    assert out.startswith("False False")


def test_public_names_resolve_and_register_with_transformers() -> None:
    out = _run(
        "import sohes_hf\n"
        "from transformers import AutoConfig\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "model_class = sohes_hf.SohesForHierarchicalSegmentation\n"
        "resolved = all(getattr(sohes_hf, name) is not None for name in sohes_hf.__all__)\n"
        "task_known = 'hierarchical-segmentation' in PIPELINE_REGISTRY.get_supported_tasks()\n"
        "print(type(AutoConfig.for_model('sohes')).__name__, task_known, model_class.__name__, resolved)"
    )
    assert out.split() == ["SohesConfig", "True", "SohesForHierarchicalSegmentation", "True"]
