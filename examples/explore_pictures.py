"""Pictures of ``sohes explore --pictures`` for the docs, offline and in seconds.

Runs the real command (``sohes explore SCENE_FOLDER --pictures 1``) on the synthetic scene of
``examples/tour.py`` with a tiny *randomly initialised* ViT-B/8-shaped backbone, because the DINO
weights cannot be downloaded everywhere (pass ``--backbone facebook/dino-vitb8`` or a local copy
for real pseudo-labels). Random patch features still follow the colours, so the clustering finds
the drawn regions; the masks show what the pictures look like, not what DINO finds.

    python examples/explore_pictures.py --output docs/images                 # tiny random backbone
    python examples/explore_pictures.py --output out/ --backbone path/to/dino-vitb8 --image-size 512
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image
from tour import synthetic_scene  # examples/ is on sys.path when this file runs as a script

from sohes_hf.cli.main import main as sohes
from sohes_hf.modeling.testing_utils import tiny_dino_vit


def run() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="folder for explore_levels.png, explore_tree.png"
    )
    parser.add_argument("--backbone", help="ViT Hub id or folder (default: a tiny random one)")
    parser.add_argument("--image-size", type=int, default=128, help="S of self-exploration")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        backbone = args.backbone
        if backbone is None:
            torch.manual_seed(0)
            tiny_dino_vit().save_pretrained(folder / "tiny-random-vit")
            backbone = str(folder / "tiny-random-vit")
        (folder / "scene").mkdir()
        scene, _ = synthetic_scene()
        Image.fromarray(scene).save(folder / "scene" / "scene.png")
        code = sohes(
            ["explore", str(folder / "scene"), "--output", str(folder / "pseudo"), "--backbone", backbone,
             "--refiner", "none", "--image-size", str(args.image_size), "--device", "cpu", "--pictures", "1"]
        )  # fmt: skip
        if code != 0:
            raise SystemExit(code)
        args.output.mkdir(parents=True, exist_ok=True)
        for kind in ("levels", "tree"):
            target = args.output / f"explore_{kind}.png"
            shutil.copyfile(folder / "pseudo" / "pictures" / f"scene.{kind}.png", target)
            print(f"wrote {target}")


if __name__ == "__main__":
    run()
