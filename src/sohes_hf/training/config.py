"""Training recipes for self-instruction (phase 2) and self-correction (phase 3) as dataclasses.

Every field names its source: ``[paper A]`` is appendix A of Cao et al. (ICLR 2024), ``[paper 3.3]``
section 3.3, ``[paper E]`` appendix E; ``[not in paper]`` marks a choice the paper does not state,
with the convention it follows. ``load_training_config`` reads a YAML (or JSON) file; the resolved
config is written next to every checkpoint and the final model (``to_dict``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from sohes_hf.atomic_io import write_text_atomic
from sohes_hf.training.dynamic_threshold import validate_dynamic_threshold_parameters

PHASES = ("self-instruction", "self-correction")
LR_SCALING_RULES = ("sqrt", "linear", "none")
SCHEDULES = ("poly", "cosine", "constant")
MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class AugmentationConfig:
    """Data augmentation (Mask2Former's large-scale jitter, copy-paste of appendix E, photometric).

    Attributes:
        image_size: side S of the square training canvas in pixels. [not in paper: the
            self-exploration resolution of appendix A, 1024, and Mask2Former's LSJ canvas]
        min_scale, max_scale: large-scale-jitter range, as a factor of S for the image's longer
            side. [not in paper: Ghiasi et al. 2021 / Mask2Former LSJ, 0.1-2.0]
        horizontal_flip_probability: probability of a left-right flip. [not in paper: standard]
        copy_paste_probability: probability that objects of another image are pasted onto a
            training image to simulate occlusion. [paper E adopts copy-paste; rate not stated]
        max_pasted_objects: at most this many whole-entity trees are pasted. [not in paper]
        color_jitter_strength: brightness/contrast/saturation jitter amplitude of the *strong*
            augmentation (phase 3). [not in paper: Unbiased Teacher style strong augmentation]
        grayscale_probability, blur_probability: of the strong augmentation. [not in paper]
        min_mask_area: masks with fewer visible pixels after augmentation are dropped. [not in paper]
        image_mean, image_std: RGB normalisation applied after augmentation (ImageNet, as DINO).
    """

    image_size: int = 1024
    min_scale: float = 0.1
    max_scale: float = 2.0
    horizontal_flip_probability: float = 0.5
    copy_paste_probability: float = 0.5
    max_pasted_objects: int = 10
    color_jitter_strength: float = 0.4
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    min_mask_area: int = 4
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field."""
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(
                f"augmentation.image_size must be a positive multiple of 32 (the model's coarsest "
                f"stride), got {self.image_size}"
            )
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"augmentation.min_scale/max_scale must satisfy 0 < min_scale <= max_scale, got "
                f"{self.min_scale}, {self.max_scale}"
            )
        for name in (
            "horizontal_flip_probability",
            "copy_paste_probability",
            "grayscale_probability",
            "blur_probability",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation.{name} must be in [0, 1], got {value}")
        if self.max_pasted_objects < 1:
            raise ValueError(f"augmentation.max_pasted_objects must be >= 1, got {self.max_pasted_objects}")
        if self.color_jitter_strength < 0:
            raise ValueError(
                f"augmentation.color_jitter_strength must be >= 0, got {self.color_jitter_strength}"
            )
        if self.min_mask_area < 1:
            raise ValueError(f"augmentation.min_mask_area must be >= 1, got {self.min_mask_area}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("augmentation.image_mean/image_std must be 3 values, std > 0")


@dataclass
class TrainingConfig:
    """Fields shared by both phases (paper appendix A, self-instruction paragraph).

    Attributes:
        train_annotations: pseudo-label COCO JSON written by ``sohes explore`` (COMMON contract).
        image_root: folder holding the ``file_name`` of every image in ``train_annotations``.
        output_dir: where checkpoints, the final model, its config and ``training_record.json`` go.
        model_name_or_path: a saved SOHES model (folder or Hub id) to start from. Phase 3 requires it
            (the phase-2 model); phase 2 may use it to fine-tune an existing model.
        dino_backbone: phase 2 without ``model_name_or_path``: DINO checkpoint for
            ``SohesForHierarchicalSegmentation.from_dino``. [paper A: DINO ViT-B/8]
        model_config: keyword arguments for ``SohesConfig`` (architecture overrides); with neither
            of the two fields above the model is randomly initialised (smoke tests only).
        max_steps: optimizer steps. [paper A: 40,000 for phase 2; 5,000 for phase 3]
        global_batch_size: images per optimizer step over all processes; must equal
            per_device_train_batch_size x gradient_accumulation_steps x number of processes.
            [paper A: 128]
        per_device_train_batch_size: images per forward pass on one device.
        gradient_accumulation_steps: forward passes per optimizer step; None derives it from the
            global batch size and the number of processes.
        base_learning_rate: learning rate at ``base_batch_size``. [paper A: 8e-4 at 128]
        base_batch_size: the batch size ``base_learning_rate`` is meant for. [paper A: 128]
        lr_scaling: "sqrt" (default), "linear" or "none": how the learning rate follows the global
            batch size (docs/training.md explains why sqrt for Adan).
        adan_betas: Adan's three betas. [paper A uses Adan; (0.98, 0.92, 0.99) is Adan's default]
        weight_decay: decoupled weight decay. [not in paper: ViT-Adapter/Mask2Former's 0.05]
        warmup_steps: linear warm-up from 0. [not in paper: ViT-Adapter's Mask2Former recipes use 1500]
        schedule: decay after warm-up, "poly" (power ``poly_power``), "cosine" or "constant".
            [not in paper: ViT-Adapter's Mask2Former recipes use poly, power 1.0]
        backbone_learning_rate_multiplier: learning rate factor of the ViT backbone parameters.
            [not in paper: ViT-Adapter uses 0.1 for pretrained backbones]
        max_grad_norm: global gradient-norm clip; 0 disables. [not in paper]
        mixed_precision: Accelerate's "no", "fp16" or "bf16".
        activation_checkpointing: recompute the ViT layers, the adapter's injectors and
            extractors, the pixel decoder's encoder layers and the mask decoder's layers in the
            backward pass instead of keeping their activations (less memory, about one more
            forward pass of compute; gradients are unchanged). [not in paper; for ViT-B/8 at
            1024 px on GPUs with less memory than the paper's]
        seed: seed of data order, augmentation and initialisation.
        num_workers: data-loader worker processes.
        max_unreadable_fraction: images that do not open at load or fail to decode mid-run are
            left out or replaced (and counted in the training record); more than this fraction
            of the training images stops the run with an error. [not in paper]
        logging_steps: log loss components and lr every this many optimizer steps.
        checkpointing_steps: save a resumable checkpoint every this many optimizer steps; 0 disables.
        checkpoints_total_limit: keep at most this many checkpoints (oldest deleted); None keeps all.
        log_with: Accelerate tracker name ("tensorboard", "wandb", ...) or None.
        augmentation: see ``AugmentationConfig``.
    """

    train_annotations: str = ""
    image_root: str = ""
    output_dir: str = "outputs/sohes"
    model_name_or_path: str | None = None
    dino_backbone: str | None = "facebook/dino-vitb8"
    model_config: dict[str, Any] = field(default_factory=dict)
    max_steps: int = 40_000
    global_batch_size: int = 128
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int | None = None
    base_learning_rate: float = 8e-4
    base_batch_size: int = 128
    lr_scaling: Literal["sqrt", "linear", "none"] = "sqrt"
    adan_betas: tuple[float, float, float] = (0.98, 0.92, 0.99)
    weight_decay: float = 0.05
    warmup_steps: int = 1500
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 1.0
    backbone_learning_rate_multiplier: float = 0.1
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    activation_checkpointing: bool = False
    seed: int = 0
    num_workers: int = 0
    max_unreadable_fraction: float = 0.01
    logging_steps: int = 20
    checkpointing_steps: int = 1000
    checkpoints_total_limit: int | None = 3
    log_with: str | None = None
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    phase: str = dataclasses.field(default="self-instruction", init=False)

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field."""
        self._validate_sizes()
        self._validate_optimization()
        if not 0.0 <= self.max_unreadable_fraction <= 1.0:
            raise ValueError(f"max_unreadable_fraction must be in [0, 1], got {self.max_unreadable_fraction}")
        if self.logging_steps < 1:
            raise ValueError(f"logging_steps must be >= 1, got {self.logging_steps}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(
                f"checkpoints_total_limit must be >= 1 or null, got {self.checkpoints_total_limit}"
            )
        if not self.train_annotations:
            raise ValueError("train_annotations must name the pseudo-label COCO JSON file")
        if not self.output_dir:
            raise ValueError("output_dir must not be empty")
        self.augmentation.validate()

    def _validate_sizes(self) -> None:
        positive = ("max_steps", "global_batch_size", "per_device_train_batch_size", "base_batch_size")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be >= 1 or null, got {self.gradient_accumulation_steps}"
            )
        for name in ("weight_decay", "warmup_steps", "max_grad_norm", "num_workers", "checkpointing_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def _validate_optimization(self) -> None:
        if not self.base_learning_rate > 0:
            raise ValueError(f"base_learning_rate must be > 0, got {self.base_learning_rate}")
        if self.lr_scaling not in LR_SCALING_RULES:
            raise ValueError(f"lr_scaling must be one of {LR_SCALING_RULES}, got {self.lr_scaling!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}"
            )
        if len(self.adan_betas) != 3 or not all(0.0 <= b < 1.0 for b in self.adan_betas):
            raise ValueError(f"adan_betas must be three values in [0, 1), got {self.adan_betas}")
        if self.poly_power <= 0:
            raise ValueError(f"poly_power must be > 0, got {self.poly_power}")
        if not isinstance(self.activation_checkpointing, bool):
            raise ValueError(
                f"activation_checkpointing must be true or false, got {self.activation_checkpointing!r}"
            )
        if not self.backbone_learning_rate_multiplier > 0:
            raise ValueError(
                f"backbone_learning_rate_multiplier must be > 0, got {self.backbone_learning_rate_multiplier}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as JSON/YAML-safe values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class SelfInstructionConfig(TrainingConfig):
    """Phase 2 (paper section 3.2): learn the model from the initial pseudo-labels."""

    def __post_init__(self) -> None:
        self.phase = "self-instruction"


@dataclass
class SelfCorrectionConfig(TrainingConfig):
    """Phase 3 (paper section 3.3): teacher-student mutual learning with an EMA teacher.

    Attributes (besides ``TrainingConfig``'s; ``max_steps`` defaults to 5,000 [paper A]):
        ema_momentum: m in teacher <- m teacher + (1 - m) student, every step. [paper A: 0.9995]
        theta_score_large, theta_score_small, gamma: eq. (3)'s dynamic threshold. [paper A: 0.7,
            0.3, 200]
        initial_loss_weight, teacher_loss_weight: weights of eq. (2)'s two terms. [paper A: equal]
        teacher_max_instances: at most this many teacher masks per image before thresholding,
            highest score first. [not in paper]
        teacher_ancestor_threshold: sigmoid probability above which the teacher's ancestor head
            declares i an ancestor of j when its forest is decoded. [not in paper: 0.5]
    """

    max_steps: int = 5_000
    warmup_steps: int = 0
    schedule: Literal["poly", "cosine", "constant"] = "constant"
    dino_backbone: str | None = None
    ema_momentum: float = 0.9995
    theta_score_large: float = 0.7
    theta_score_small: float = 0.3
    gamma: float = 200.0
    initial_loss_weight: float = 1.0
    teacher_loss_weight: float = 1.0
    teacher_max_instances: int = 100
    teacher_ancestor_threshold: float = 0.5

    def __post_init__(self) -> None:
        self.phase = "self-correction"

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field."""
        super().validate()
        if not 0.0 < self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in (0, 1), got {self.ema_momentum}")
        try:
            validate_dynamic_threshold_parameters(self.theta_score_large, self.theta_score_small, self.gamma)
        except ValueError as error:
            raise ValueError(f"theta_score_large/theta_score_small/gamma: {error}") from None
        for name in ("initial_loss_weight", "teacher_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.teacher_max_instances < 1:
            raise ValueError(f"teacher_max_instances must be >= 1, got {self.teacher_max_instances}")
        if not 0.0 < self.teacher_ancestor_threshold < 1.0:
            raise ValueError(
                f"teacher_ancestor_threshold must be in (0, 1), got {self.teacher_ancestor_threshold}"
            )
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path must name the phase-2 (self-instruction) model")


def _config_class(phase: str) -> type[TrainingConfig]:
    if phase == "self-instruction":
        return SelfInstructionConfig
    if phase == "self-correction":
        return SelfCorrectionConfig
    raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")


def _check_model_config(model_config: Any) -> None:
    """Refuses ``model_config`` keys ``SohesConfig`` does not take (a typo would train silently
    with the default and land in ``config.json``)."""
    if model_config is None:
        return
    if not isinstance(model_config, dict):
        raise ValueError("model_config must be a mapping")
    from sohes_hf.modeling import SohesConfig  # modeling pulls in torch models: import lazily

    valid = {f.name for f in dataclasses.fields(SohesConfig) if f.init}  # + PretrainedConfig's
    unknown = sorted(set(model_config) - valid)
    if unknown:
        own = ", ".join(name for name in SohesConfig.__annotations__ if name in valid)
        raise ValueError(f"unknown model_config field(s): {', '.join(unknown)} (valid: {own})")


def build_training_config(phase: str, values: dict[str, Any]) -> TrainingConfig:
    """Builds and validates the config of ``phase`` from plain values (YAML/JSON content).

    Raises:
        ValueError: unknown phase, unknown field (named), or an invalid value.
    """
    cls = _config_class(phase)
    values = _exponent_floats(dict(values))
    values.pop("phase", None)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {phase} config field(s): {', '.join(unknown)}")
    _check_model_config(values.get("model_config"))
    augmentation = values.pop("augmentation", None) or {}
    if not isinstance(augmentation, dict):
        raise ValueError("augmentation must be a mapping")
    aug_names = {f.name for f in dataclasses.fields(AugmentationConfig)}
    unknown_aug = sorted(set(augmentation) - aug_names)
    if unknown_aug:
        raise ValueError(f"unknown augmentation config field(s): {', '.join(unknown_aug)}")
    values = _coerce_numbers(cls, values, "")
    augmentation = _coerce_numbers(AugmentationConfig, augmentation, "augmentation.")
    config = cls(**values, augmentation=AugmentationConfig(**augmentation))
    config.validate()
    return config


_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _exponent_floats(value: Any) -> Any:
    """Strings such as ``1e-12`` anywhere in the recipe (``model_config`` too) as floats.

    They are floats in JSON and YAML 1.2; PyYAML (YAML 1.1) returns them as strings because its
    float pattern requires a dot, so a recipe's ``layer_norm_eps: 1e-12`` would otherwise fail
    deep inside the model's config.
    """
    if isinstance(value, dict):
        return {key: _exponent_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exponent_floats(item) for item in value]
    if isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
        return float(value)
    return value


def _coerce_numbers(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Numeric fields as numbers: ``"1e-12"`` -> 1e-12; anything else not a number is refused.

    YAML 1.1 (PyYAML) reads ``1e-12`` and ``1e4`` as strings (it wants ``1.0e-12``), and the
    recipe loader reads JSON through YAML too, so a plain exponent in a recipe or an override
    arrives as ``str``. Integer fields accept integral values (``1e4`` -> 10000), float tuples
    take each element. Raises ValueError naming the field (dotted, e.g. ``augmentation.min_scale``).
    """
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    coerced = dict(values)
    for name, value in values.items():
        kind = kinds.get(name, "")
        where = f"{prefix}{name}"
        if value is None and kind.endswith("| None"):
            continue
        if kind.startswith("tuple[float"):
            if not isinstance(value, list | tuple):
                raise ValueError(f"{where} must be a list of numbers, got {value!r}")
            coerced[name] = tuple(_number(v, f"{where}[{k}]", integral=False) for k, v in enumerate(value))
        elif kind in ("float", "float | None"):
            coerced[name] = _number(value, where, integral=False)
        elif kind in ("int", "int | None"):
            coerced[name] = _number(value, where, integral=True)
    return coerced


def _number(value: Any, where: str, integral: bool) -> float | int:
    """``value`` (a number or a numeric string) as a finite float, or an int when ``integral``."""
    number: float | int
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if isinstance(value, int):
        return value if integral else float(value)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if integral:
        if not number.is_integer():
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(number)
    return number


def parse_override(text: str) -> tuple[str, Any]:
    """Parses ``key=value`` (``key`` may be dotted, e.g. ``augmentation.image_size=64``; value YAML).

    Raises:
        ValueError: no ``=`` in ``text``.
    """
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_training_config(
    path: str | os.PathLike[str] | None, phase: str, overrides: list[str] | tuple[str, ...] = ()
) -> TrainingConfig:
    """Reads a YAML/JSON recipe, applies ``key=value`` overrides, validates.

    Args:
        path: recipe file, or None for the defaults.
        phase: "self-instruction" or "self-correction"; a ``phase`` key in the file must agree.
        overrides: ``key=value`` strings, applied in order after the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: malformed file, conflicting phase, unknown field or invalid value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"training config file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a training config must be a mapping of field: value")
        values = loaded
        if "phase" in values and values["phase"] != phase:
            raise ValueError(f"{path}: phase is {values['phase']!r} but {phase!r} was requested")
    for override in overrides:
        key, value = parse_override(override)
        target = values
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {override!r}: {part} is not a mapping")
        target[parts[-1]] = value
    return build_training_config(phase, values)


def save_training_config(config: TrainingConfig, path: str | os.PathLike[str]) -> None:
    """Writes the resolved config as YAML atomically (temp file + os.replace)."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
