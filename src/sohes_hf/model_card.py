"""Hub model cards (README.md) for SOHES checkpoints.

A card is rendered from three sources, so it always describes the checkpoint it sits next to:

* the model config (:class:`sohes_hf.modeling.SohesConfig`, any object with its fields), for the
  architecture (paper section 3.2: DINO ViT -> ViT-Adapter -> Mask2Former -> ancestor head);
* the training record that training writes as ``training_record.json`` (keys ``phase``,
  ``steps``, ``global_batch_size``, ``learning_rate``, ``optimizer``, ``ema_momentum``,
  ``train_data``, ``num_train_images``, ``seed``, ``sohes_hf_version``, ``started_at``,
  ``finished_at``, ``final_loss``, ``backbone_initialization``, ``backbone_source``; optional
  ``license``), which also says how the backbone was initialised (DINO weights or random);
* evaluation results: ``{dataset name: {"AP": ..., "AR_S": ..., "AR_M": ..., "AR_L": ...,
  "AR": ...}}`` in **percent** (the paper's Table 4/5 layout, AR at up to 1,000 predictions).

The body text lives in ``templates/model_card.md``; the YAML front matter is written with
``yaml.safe_dump`` so that any license or tag string stays valid YAML.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sohes_hf.atomic_io import write_bytes_atomic
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

DEFAULT_LICENSE = "apache-2.0"
METRIC_COLUMNS = ("AP", "AR_S", "AR_M", "AR_L", "AR")
CARD_TAGS = (
    "sohes",
    "entity-segmentation",
    "hierarchical-segmentation",
    "open-world",
    "self-supervised",
    "mask2former",
    "dino",
)

SOHES_BIBTEX = """@inproceedings{cao2024sohes,
  title     = {{SOHES}: Self-supervised Open-world Hierarchical Entity Segmentation},
  author    = {Cao, Shengcao and Gu, Jiuxiang and Kuen, Jason and Tan, Hao and Zhang, Ruiyi and
               Zhao, Handong and Nenkova, Ani and Gui, Liang-Yan and Sun, Tong and Wang, Yu-Xiong},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024}
}"""

# SOHES rows of the paper's Tables 4 and 5 (ViT-B/8 model, AR at 1,000 predictions), shown next
# to this checkpoint's numbers for datasets of the same name.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "MS-COCO": {"AP": 2.1, "AR_S": 19.8, "AR_M": 31.0, "AR_L": 48.8, "AR": 30.5},
    "LVIS": {"AP": 1.9, "AR_S": 19.8, "AR_M": 39.4, "AR_L": 59.2, "AR": 29.1},
    "ADE20K": {"AP": 2.6, "AR_S": 21.8, "AR_M": 37.2, "AR_L": 49.0, "AR": 31.1},
    "EntitySeg": {"AP": 5.0, "AR_S": 9.1, "AR_M": 21.6, "AR_L": 39.6, "AR": 33.5},
    "SA-1B": {"AP": 12.9, "AR_S": 8.6, "AR_M": 35.2, "AR_L": 42.0, "AR": 33.3},
    "PartImageNet": {"AP": 1.2, "AR_S": 30.3, "AR_M": 32.4, "AR_L": 42.3, "AR": 36.0},
}

# Training record keys, in display order, with their row labels.
_RECORD_ROWS = (
    ("phase", "Phase"),
    ("steps", "Optimizer steps"),
    ("global_batch_size", "Global batch size"),
    ("learning_rate", "Learning rate"),
    ("optimizer", "Optimizer"),
    ("ema_momentum", "Teacher EMA momentum"),
    ("train_data", "Training data"),
    ("num_train_images", "Training images"),
    ("seed", "Seed"),
    ("final_loss", "Final loss"),
    ("backbone_initialization", "Backbone initialisation"),
    ("backbone_source", "Backbone weights from"),
    ("sohes_hf_version", "sohes-hf version"),
    ("started_at", "Started"),
    ("finished_at", "Finished"),
)


def _get(source: Any, name: str, default: Any = None) -> Any:
    if isinstance(source, Mapping):
        return source.get(name, default)
    return getattr(source, name, default)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _backbone_origin(record: Mapping[str, Any] | None) -> tuple[str, str]:
    """(Backbone-row note, License-section sentence) for the record's backbone initialisation."""
    kind = (record or {}).get("backbone_initialization")
    source = (record or {}).get("backbone_source")
    if kind == "dino":
        where = f": {source}" if source else ""
        return (
            f"initialised from DINO{where}",
            "The backbone was initialised from DINO (Caron et al., 2021) self-supervised weights.",
        )
    if kind == "random":
        return (
            "randomly initialised, no DINO weights",
            "The backbone was randomly initialised: no pre-trained DINO weights were used.",
        )
    return ("initialisation not recorded", "How the backbone was initialised was not recorded.")


def _architecture(config: Any, record: Mapping[str, Any] | None = None) -> str:
    backbone = _get(config, "backbone_config") or {}
    hidden = _get(backbone, "hidden_size")
    layers = _get(backbone, "num_hidden_layers")
    patch = _get(backbone, "patch_size")
    rows = [
        (
            "Backbone",
            f"ViT, {layers} layers, width {hidden}, {_get(backbone, 'num_attention_heads')} heads, "
            f"patch {patch}x{patch} ({_backbone_origin(record)[0]})",
        ),
        (
            "ViT-Adapter",
            f"spatial prior stem width {_get(config, 'adapter_conv_inplane')}, "
            f"interactions at blocks {_get(config, 'interaction_indexes')}, "
            f"{_get(config, 'adapter_num_heads')} deformable heads"
            f" x {_get(config, 'adapter_num_points')} points",
        ),
        (
            "Pixel decoder",
            f"Mask2Former multi-scale deformable encoder, {_get(config, 'encoder_layers')} layers, "
            f"width {_get(config, 'feature_size')}, mask features {_get(config, 'mask_feature_size')}",
        ),
        (
            "Transformer decoder",
            f"Mask2Former masked attention, {_get(config, 'decoder_layers')} layers, "
            f"width {_get(config, 'hidden_dim')}, {_get(config, 'num_attention_heads')} heads",
        ),
        ("Queries", f"{_get(config, 'num_queries')} (one entity each)"),
        (
            "Heads",
            "entity / no-object classifier, mask embedding, ancestor head "
            "(pairwise query scores: is entity i an ancestor of entity j, paper section 3.2)",
        ),
    ]
    lines = ["| Component | Setting |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    model_type = _get(config, "model_type", "sohes")
    lines.append("")
    lines.append(
        f"Config `model_type`: `{model_type}`. Inference resizes images to the processor's size and "
        "returns masks at the original image size."
    )
    return "\n".join(lines)


def _training(record: Mapping[str, Any] | None) -> str:
    recipe = (
        "Paper recipe (appendix A): self-exploration pseudo-labels from DINO ViT-B/8 features, then "
        "self-instruction for 40,000 steps at batch 128 with Adan (base learning rate 8e-4), then "
        "self-correction for 5,000 steps with an EMA teacher (momentum 0.9995) and the dynamic score "
        "threshold (0.3 to 0.7, gamma 200)."
    )
    if not record:
        return "No training record was provided for this checkpoint.\n\n" + recipe
    lines = ["This checkpoint's training record:", "", "| | |", "|---|---|"]
    known = {key for key, _ in _RECORD_ROWS} | {"license"}
    for key, label in _RECORD_ROWS:
        lines.append(f"| {label} | {_fmt(record.get(key)) if key in record else 'not recorded'} |")
    for key in sorted(set(record) - known):
        lines.append(f"| {_fmt(key)} | {_fmt(record[key])} |")
    return "\n".join([*lines, "", recipe])


def _metric(value: Any, dataset: str, metric: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"evaluation[{dataset!r}][{metric!r}]: expected a finite number, got {value!r}")
    return f"{float(value):.1f}"


def _evaluation(evaluation: Mapping[str, Mapping[str, Any]] | None) -> str:
    if not evaluation:
        return "No evaluation results were provided for this checkpoint."
    header = "| Dataset | Model | " + " | ".join(METRIC_COLUMNS) + " |"
    lines = [header, "|---|---|" + "---|" * len(METRIC_COLUMNS)]
    for dataset, metrics in evaluation.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(
                f"evaluation[{dataset!r}]: expected a mapping of metric names ({', '.join(METRIC_COLUMNS)}) "
                f"to numbers, got {type(metrics).__name__}"
            )
        cells = " | ".join(_metric(metrics.get(m), dataset, m) for m in METRIC_COLUMNS)
        lines.append(f"| {_fmt(dataset)} | this model | {cells} |")
        paper = {k.lower(): v for k, v in PAPER_RESULTS.items()}.get(str(dataset).lower())
        if paper is not None:
            paper_cells = " | ".join(f"{paper[m]:.1f}" for m in METRIC_COLUMNS)
            lines.append(f"| {_fmt(dataset)} | SOHES paper (Table 4/5) | {paper_cells} |")
    lines += [
        "",
        "Mask AP and average recall (AR) in percent, class-agnostic, up to 1,000 predictions per image; "
        "AR_S, AR_M, AR_L for small (< 32² px), medium and large (> 96² px) entities. Zero-shot: no "
        "training on the evaluation datasets. AP under-rates open-world models on datasets that annotate "
        "only some entities (paper appendix B); AR is the main metric.",
    ]
    return "\n".join(lines)


def render_model_card(
    config: Any,
    training_record: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    model_id: str | None = None,
    license: str | None = None,
    library_name: str = "transformers",
) -> str:
    """Renders a Hub README for a SOHES checkpoint.

    Args:
        config: the model's ``SohesConfig`` (or any object/mapping with its fields).
        training_record: contents of ``training_record.json``, or ``None``.
        evaluation: ``{dataset: {"AP", "AR_S", "AR_M", "AR_L", "AR"}}`` in percent, or ``None``.
        model_id: Hub id or local path shown in the usage snippet (default ``"path/to/model"``).
        license: license id of these weights; defaults to the record's ``license``, then the
            config's ``license`` attribute, then ``"apache-2.0"``.
        library_name: the Hub ``library_name`` field.

    Returns:
        Markdown text with YAML front matter (``license``, ``library_name``,
        ``pipeline_tag: image-segmentation``, ``tags``).

    Raises:
        ValueError: an evaluation entry is not a mapping of numbers.
    """
    record = dict(training_record) if training_record else None
    chosen_license = license or (record or {}).get("license") or _get(config, "license") or DEFAULT_LICENSE
    front_matter = {
        "license": str(chosen_license),
        "library_name": library_name,
        "pipeline_tag": "image-segmentation",
        "tags": list(CARD_TAGS),
    }
    version = (record or {}).get("sohes_hf_version")
    template = string.Template(
        resources.files("sohes_hf").joinpath("templates", "model_card.md").read_text(encoding="utf-8")
    )
    body = template.substitute(
        title=f"SOHES hierarchical entity segmentation ({model_id})"
        if model_id
        else "SOHES hierarchical entity segmentation",
        version_note=f" (version {version})" if version else "",
        model_id=model_id or "path/to/model",
        architecture=_architecture(config, record),
        backbone_credit=_backbone_origin(record)[1],
        training=_training(record),
        evaluation=_evaluation(evaluation),
        license=str(chosen_license),
        bibtex=SOHES_BIBTEX,
    )
    return "---\n" + yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def save_model_card(
    directory: str | os.PathLike[str],
    config: Any,
    training_record: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> Path:
    """Renders the card and writes ``<directory>/README.md`` atomically; returns its path.

    Extra keyword arguments go to :func:`render_model_card` (``model_id``, ``license``, ...).
    """
    target_dir = Path(directory)
    if target_dir.exists() and not target_dir.is_dir():
        raise NotADirectoryError(f"directory: {target_dir} exists and is not a directory")
    target_dir.mkdir(parents=True, exist_ok=True)
    text = render_model_card(config, training_record, evaluation, **kwargs)
    target = write_bytes_atomic(target_dir / "README.md", text.encode("utf-8"))
    logger.info("wrote model card %s", target)
    return target
