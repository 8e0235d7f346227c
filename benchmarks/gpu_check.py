"""GPU check: the figures a lent H100/H200 should give, in one run of at most ~8 minutes.

Random weights in the real on-disk layouts (nothing is downloaded), synthetic images, and the
public paths a user calls:

* ``explore``: ``run_explore_job`` (what ``sohes explore`` runs) with a DINO ViT-B/8 saved by
  ``save_pretrained`` and a CascadePSP state dict saved as ``<folder>/model``, at S = 1,024 px,
  backbone and batched CascadePSP (``CascadePSPRefiner(batch_size=8, precision="bf16")``) in
  bf16: seconds/image, and the backbone and refiner shares;
* ``training``: self-instruction steps (``benchmark_training.measure_training``), ViT-B/8 model
  at 1,024 px, batch 2, bf16 autocast, without and with activation checkpointing: images/s and
  ``torch.cuda.max_memory_allocated``;
* ``pipeline``: ``pipeline("hierarchical-segmentation", model=<saved random model>, dtype=bf16)``
  on 1,024 px images, ``threshold=0`` (every query is post-processed: the worst case);
* ``AR metric``: ``SohesAR().compute`` (what ``sohes evaluate`` computes) on synthetic
  predictions (``benchmark_evaluation.make_dataset``).

Each section is guarded: an error (e.g. out of memory) becomes that section's row and the next
section still runs. Sections that would start after ``--budget-s`` are reported as skipped.
Without CUDA, or with ``--cpu-smoke``, everything runs at tiny sizes (tiny configs, 64 px) in
well under a minute: tests/test_gpu_check.py runs that mode.

    python benchmarks/gpu_check.py                 # on the GPU machine (~8 min at most)
    python benchmarks/gpu_check.py --cpu-smoke     # anywhere, < 1 min
    python benchmarks/gpu_check.py --refiner-batch-size 16   # more CascadePSP crops per pass
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchmark_evaluation import make_dataset
from benchmark_explore import synthetic_scene
from benchmark_training import measure_training, tiny_training_config

from sohes_hf.modeling import SohesConfig, SohesForHierarchicalSegmentation
from sohes_hf.modeling.testing_utils import tiny_dino_vit, tiny_sohes_config
from sohes_hf.pseudo_labeling.refinement import MaskRefiner

Row = tuple[str, str, str]  # (measurement, value, unit); value is a number unless it is an error


@dataclass(frozen=True)
class Sizes:
    """Every size of the run: the GPU check's (paper sizes) or the CPU smoke test's (tiny)."""

    name: str
    image_size: int
    explore_images: int  # timed images, after one warm-up image
    explore_overrides: Mapping[str, Any]  # SelfExplorationConfig fields besides image_size
    vit: Callable[[], torch.nn.Module]
    training_config: Callable[[], SohesConfig]
    training_steps: int
    training_warmup_steps: int
    pipeline_config: Callable[[], SohesConfig]
    pipeline_images: int
    ar_dataset: Mapping[str, int]  # make_dataset arguments


def _dino_vitb8() -> torch.nn.Module:
    from transformers import ViTConfig, ViTModel

    # DINO ViT-B/8's shape (the Hub config of facebook/dino-vitb8: 224 px table, eps 1e-12).
    return ViTModel(ViTConfig(patch_size=8, image_size=224, layer_norm_eps=1e-12), add_pooling_layer=False)


GPU_SIZES = Sizes(
    name="gpu",
    image_size=1024,
    explore_images=3,
    explore_overrides={},
    vit=_dino_vitb8,
    training_config=SohesConfig,  # the defaults are the paper's ViT-B/8 model
    training_steps=5,
    training_warmup_steps=2,
    pipeline_config=SohesConfig,
    pipeline_images=4,
    ar_dataset={"num_images": 50, "num_gt": 30, "num_predictions": 300, "size": 256},
)
CPU_SMOKE_SIZES = Sizes(
    name="cpu-smoke",
    image_size=64,
    explore_images=1,
    # As the explore-job tests: crops of 32 px, "small" regions below 1/64 of the image.
    # CascadePSP (68M parameters, ~0.6 s a pass on one core) per mask is the slow part on a CPU:
    # few masks (one merge threshold, no local crops), global step only, at 32 px.
    explore_overrides={
        "merge_thresholds": (0.1,),
        "max_local_crops": 0,
        "refinement_max_side": 32,
        "refinement_fast": True,
    },
    vit=tiny_dino_vit,
    training_config=tiny_training_config,
    training_steps=2,
    training_warmup_steps=1,
    pipeline_config=tiny_sohes_config,
    pipeline_images=2,
    ar_dataset={"num_images": 4, "num_gt": 10, "num_predictions": 30, "size": 64},
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _TimedExtractor:
    """Adds the wall time of the wrapped backbone's ``extract`` calls to ``seconds``."""

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor
        self.patch_size = extractor.patch_size
        self.seconds = 0.0

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        start = time.perf_counter()
        features = self.extractor.extract(images, size)  # returns numpy: already synchronised
        self.seconds += time.perf_counter() - start
        return features


class _TimedRefiner(MaskRefiner):
    """Adds the wall time of the wrapped refiner's ``refine`` calls to ``seconds``."""

    def __init__(self, refiner: MaskRefiner) -> None:
        self.refiner = refiner
        self.name = refiner.name
        self.seconds = 0.0

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        refined = self.refiner.refine(image, masks)  # returns RLEs: already synchronised
        self.seconds += time.perf_counter() - start
        return refined


def _save_random_cascadepsp(folder: Path) -> Path:
    """CascadePSP with random weights, saved as the package ships it (``module.``-prefixed keys)."""
    from segmentation_refinement.models.psp.pspnet import RefinementModule

    folder.mkdir(parents=True)
    state = {f"module.{key}": value for key, value in RefinementModule().state_dict().items()}
    torch.save(state, folder / "model")
    return folder


def _write_images(folder: Path, size: int, seeds: range) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for seed in seeds:
        Image.fromarray(synthetic_scene(size, seed)).save(folder / f"{seed:03d}.png")
    return folder


# CascadePSP crops per network pass (SelfExplorationConfig.refinement_batch_size's default).
REFINER_BATCH_SIZE = 8


def refiner_mode(refiner_batch_size: int | None) -> str:
    """How CascadePSP is run: crops of one shape batched ``refiner_batch_size`` per pass, in bf16."""
    size = REFINER_BATCH_SIZE if refiner_batch_size is None else refiner_batch_size
    return f"batched, up to {size} crops/pass, bf16"


def check_explore(
    sizes: Sizes, device: torch.device, work: Path, refiner_batch_size: int | None
) -> list[Row]:
    """Self-exploration seconds/image: the explore job with DINO ViT-B/8 (bf16) and CascadePSP."""
    from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
    from sohes_hf.pseudo_labeling.explore_job import ExploreJobConfig, run_explore_job
    from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor
    from sohes_hf.pseudo_labeling.refinement import CascadePSPRefiner

    torch.manual_seed(0)
    sizes.vit().save_pretrained(work / "dino-vitb8")
    config = SelfExplorationConfig(image_size=sizes.image_size, precision="bf16", **sizes.explore_overrides)
    extractor = _TimedExtractor(
        DinoFeatureExtractor(
            work / "dino-vitb8",
            device=device,
            precision=config.precision,
            batch_size=config.feature_batch_size,
        )
    )
    batch_size = REFINER_BATCH_SIZE if refiner_batch_size is None else refiner_batch_size
    refiner = _TimedRefiner(
        CascadePSPRefiner(
            _save_random_cascadepsp(work / "cascadepsp"),
            device=str(device),
            max_side=config.refinement_max_side,
            fast=config.refinement_fast,
            batch_size=batch_size,
            precision="bf16",
        )
    )

    def job(name: str, seeds: range) -> Any:
        images = _write_images(work / name, sizes.image_size, seeds)
        inputs = ExploreJobConfig(
            inputs=(str(images),), output_dir=str(work / f"{name}-out"), exploration=config
        )
        return run_explore_job(inputs, extractor, refiner, show_progress=False)

    job("warm-up", range(100, 101))  # CUDA context, kernels, numba compilation
    extractor.seconds = refiner.seconds = 0.0
    summary = job("timed", range(sizes.explore_images))
    count = summary.num_labeled
    if count != sizes.explore_images:
        raise RuntimeError(f"{sizes.explore_images - count} of {sizes.explore_images} images were skipped")
    mode = refiner_mode(refiner_batch_size)
    return [
        (f"seconds/image at {sizes.image_size} px, CascadePSP {mode}", f"{summary.seconds / count:.3f}", "s"),
        ("  of which DINO features (image + local crops, bf16)", f"{extractor.seconds / count:.3f}", "s"),
        (f"  of which CascadePSP ({mode})", f"{refiner.seconds / count:.3f}", "s"),
        ("  masks/image (random weights: not meaningful)", f"{summary.masks_per_image:.1f}", "masks"),
    ]


def check_training(
    sizes: Sizes, device: torch.device, work: Path, refiner_batch_size: int | None
) -> list[Row]:
    """Training images/s and peak memory, batch 2, bf16, without and with activation checkpointing."""
    rows: list[Row] = []
    for checkpointing in (False, True):
        result = measure_training(
            sizes.training_config(),
            sizes.image_size,
            batch_size=2,
            device=device,
            steps=sizes.training_steps,
            warmup_steps=sizes.training_warmup_steps,
            bf16=True,
            activation_checkpointing=checkpointing,
        )
        label = f"batch 2, bf16, activation checkpointing {'on' if checkpointing else 'off'}"
        rows.append(
            (f"images/s at {sizes.image_size} px, {label}", f"{result.images_per_second:.2f}", "img/s")
        )
        rows.append(
            (
                f"  peak memory, {label}",
                f"{result.peak_memory_bytes / 2**30:.2f}",
                f"GiB ({result.peak_memory_kind})",
            )
        )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def check_pipeline(
    sizes: Sizes, device: torch.device, work: Path, refiner_batch_size: int | None
) -> list[Row]:
    """``pipeline("hierarchical-segmentation")`` images/s on a saved random model, bf16."""
    from transformers import pipeline

    from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
    from sohes_hf.pipelines import TASK_NAME

    torch.manual_seed(0)
    SohesForHierarchicalSegmentation(sizes.pipeline_config()).save_pretrained(work / "model")
    SohesImageProcessor(size={"longest_edge": sizes.image_size}).save_pretrained(work / "model")
    segmenter = pipeline(TASK_NAME, model=str(work / "model"), device=device, dtype=torch.bfloat16)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (sizes.image_size, sizes.image_size, 3), dtype=np.uint8)]
    images += [synthetic_scene(sizes.image_size, seed) for seed in range(sizes.pipeline_images - 1)]
    segmenter(images[0], threshold=0.0)  # warm-up
    _sync(device)
    start = time.perf_counter()
    results = [segmenter(image, threshold=0.0) for image in images]
    _sync(device)
    seconds = time.perf_counter() - start
    entities = sum(len(result) for result in results) / len(results)
    return [
        (
            f"images/s at {sizes.image_size} px, batch 1, bf16, threshold 0",
            f"{len(images) / seconds:.2f}",
            "img/s",
        ),
        ("  entities/image (every non-empty query, up to 1000)", f"{entities:.1f}", "entities"),
    ]


def check_ar_metric(
    sizes: Sizes, device: torch.device, work: Path, refiner_batch_size: int | None
) -> list[Row]:
    """``SohesAR().compute`` (the ``sohes evaluate`` metric) on synthetic predictions, CPU-bound."""
    from sohes_hf.evaluation import SohesAR

    data = sizes.ar_dataset
    predictions, references = make_dataset(
        data["num_images"], data["num_gt"], data["num_predictions"], data["size"]
    )
    start = time.perf_counter()
    scores = SohesAR(max_detections=1000).compute(predictions=predictions, references=references)
    seconds = time.perf_counter() - start
    if not scores:
        raise RuntimeError("SohesAR returned no scores")
    label = f"{data['num_images']} images of {data['size']} px, {data['num_predictions']} predictions each"
    return [
        (f"seconds, {label}", f"{seconds:.3f}", "s"),
        ("  images/s", f"{data['num_images'] / seconds:.1f}", "img/s"),
    ]


# Explore last: its time depends on how many masks the random backbone yields (each one is a
# CascadePSP pass), so the sections of predictable length have printed before it can overrun.
SECTIONS: tuple[tuple[str, Callable[..., list[Row]]], ...] = (
    ("training", check_training),
    ("pipeline", check_pipeline),
    ("AR metric", check_ar_metric),
    ("explore", check_explore),
)


def _peak_memory_row(device: torch.device) -> Row:
    if device.type == "cuda":
        return (
            "  peak GPU memory of the section",
            f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}",
            "GiB (torch.cuda.max_memory_allocated)",
        )
    return (
        "  peak memory of the process so far",
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}",
        "GiB (peak RSS)",
    )


def _print_row(section: str, row: Row) -> None:
    print(f"| {section:<9} | {row[0]:<70} | {row[1]:>10} | {row[2]} |", flush=True)


def _header(device: torch.device, sizes: Sizes, budget: float) -> None:
    import transformers

    import sohes_hf

    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        name = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, bf16 supported: {bf16}"
    else:
        name = f"CPU ({torch.get_num_threads()} threads), no CUDA"
    print(f"device: {name}")
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, sohes-hf {sohes_hf.__version__}"
    )
    print(f"sizes: {sizes.name} ({sizes.image_size} px), time budget {budget:.0f} s, random weights")
    print(f"| {'section':<9} | {'measurement':<70} | {'value':>10} | unit |")
    print(f"|{'-' * 11}|{'-' * 72}|{'-' * 12}|------|", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="sections starting after this are skipped"
    )
    parser.add_argument(
        "--refiner-batch-size",
        type=int,
        default=None,
        help=f"CascadePSP crops per pass ({REFINER_BATCH_SIZE})",
    )
    parser.add_argument(
        "--sections", default=",".join(name for name, _ in SECTIONS), help="comma-separated subset"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed sections")
    args = parser.parse_args()
    chosen = args.sections.split(",")
    unknown = sorted(set(chosen) - {name for name, _ in SECTIONS})
    if unknown:
        parser.error(
            f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(n for n, _ in SECTIONS)}"
        )
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    sizes = CPU_SMOKE_SIZES if smoke else GPU_SIZES
    if smoke:  # tiny models (and CascadePSP on a 2-core machine) run several times faster on one thread
        torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    _header(device, sizes, args.budget_s)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sohes-gpu-check-") as folder:
        for name, check in SECTIONS:
            if name not in chosen:
                continue
            if time.perf_counter() - start > args.budget_s:
                _print_row(name, ("skipped", "skipped", f"time budget of {args.budget_s:.0f} s spent"))
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            section_start = time.perf_counter()
            work = Path(folder) / name.replace(" ", "-")
            work.mkdir()
            try:
                rows = check(sizes, device, work, args.refiner_batch_size)
            except Exception as error:
                if args.verbose:
                    traceback.print_exc()
                rows = [
                    (
                        "error",
                        "error",
                        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300],
                    )
                ]
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows += [
                _peak_memory_row(device),
                ("  section seconds", f"{time.perf_counter() - section_start:.1f}", "s"),
            ]
            for row in rows:
                _print_row(name, row)
    _print_row(
        "total",
        ("seconds, all sections", f"{time.perf_counter() - start:.1f}", f"s (budget {args.budget_s:.0f} s)"),
    )


if __name__ == "__main__":
    main()
