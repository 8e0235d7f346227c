"""Phase 2, self-instruction (paper section 3.2, appendix A): learn the model from pseudo-labels.

An explicit Accelerate loop rather than a ``transformers.Trainer`` subclass: phase 3 runs two
models (student and EMA teacher), two forward passes per step, and builds targets inside the
step from the teacher's predictions; with ``Trainer`` that logic would hide in overridden
``compute_loss``/callbacks. Here every step reads top to bottom, and both phases share this loop
(:class:`~sohes_hf.training.self_correction.SelfCorrectionTrainer` overrides the loss and adds
the teacher). Accelerate still provides DDP/FSDP/DeepSpeed, mixed precision, gradient
accumulation, checkpointing and trackers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from timm.optim import Adan
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sohes_hf.logging_utils import get_logger
from sohes_hf.model_card import save_model_card
from sohes_hf.modeling import SohesConfig, SohesForHierarchicalSegmentation
from sohes_hf.training.checkpointing import (
    JsonState,
    TrainerState,
    load_checkpoint,
    resolve_resume_path,
    save_checkpoint,
)
from sohes_hf.training.collate import TrainingBatch, collate_training_examples
from sohes_hf.training.config import TrainingConfig, save_training_config
from sohes_hf.training.record import TrainingRecord, backbone_initialization, utc_now, write_training_record
from sohes_hf.training.schedule import learning_rate_multipliers, scale_learning_rate

logger = get_logger(__name__)

RESOLVED_CONFIG_NAME = "training_config.yaml"
_AUXILIARY_SUFFIX = re.compile(r"_\d+$")


@dataclass
class TrainingResult:
    """What :meth:`SelfInstructionTrainer.train` produced.

    Attributes:
        model_dir: folder with the final ``save_pretrained`` model, its image processor,
            ``training_config.yaml`` and ``training_record.json``.
        record: the training record written there.
    """

    model_dir: str
    record: TrainingRecord


def build_model(config: TrainingConfig) -> SohesForHierarchicalSegmentation:
    """The model a phase starts from (see ``TrainingConfig.model_name_or_path``/``dino_backbone``).

    Priority: a saved SOHES model; else DINO weights into a new model (phase 2, paper A); else a
    random model from ``model_config`` (smoke tests).
    """
    if config.model_name_or_path:
        return SohesForHierarchicalSegmentation.from_pretrained(config.model_name_or_path)
    model_config = SohesConfig(**config.model_config)
    if config.dino_backbone:
        from sohes_hf.hub import load_from_hub_or_folder

        return load_from_hub_or_folder(
            SohesForHierarchicalSegmentation.from_dino, str(config.dino_backbone), config=model_config
        )
    logger.warning("no model_name_or_path or dino_backbone: training a randomly initialised model")
    return SohesForHierarchicalSegmentation(model_config)


def _no_weight_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    """Biases, norms and embeddings are not decayed (the usual ViT / Mask2Former convention)."""
    return parameter.ndim <= 1 or "embed" in name or "cls_token" in name or "position" in name


def build_optimizer(model: torch.nn.Module, config: TrainingConfig, learning_rate: float) -> Adan:
    """Adan (paper A) over four parameter groups: backbone ViT or not, decayed or not.

    Each group carries an ``lr_scale`` (``backbone_learning_rate_multiplier`` for the DINO ViT,
    1 elsewhere); the loop sets ``lr = learning_rate * schedule[step] * lr_scale`` every step.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = (name.startswith("backbone.vit."), _no_weight_decay(name, parameter))
        groups.setdefault(key, []).append(parameter)
    param_groups = [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else config.weight_decay,
            "lr_scale": config.backbone_learning_rate_multiplier if is_vit else 1.0,
        }
        for (is_vit, no_decay), params in sorted(groups.items())
    ]
    return Adan(
        param_groups,
        lr=learning_rate,
        betas=(config.adan_betas[0], config.adan_betas[1], config.adan_betas[2]),
        weight_decay=config.weight_decay,
    )


def _set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = float(learning_rate) * float(group.get("lr_scale", 1.0))


class SelfInstructionTrainer:
    """Trains the SOHES model on the initial pseudo-labels (paper section 3.2, appendix A).

    Args:
        config: the phase's recipe (validated here).
        model: the model to train; default :func:`build_model`.
        train_dataset: a map-style dataset indexed by stream position returning
            ``TrainingExample``; default built from ``config.train_annotations``/``image_root``.
        accelerator: default ``Accelerator(mixed_precision, log_with, gradient accumulation)``;
            tests pass ``Accelerator(cpu=True)``.
        cpu: force CPU when the accelerator is created here.

    Raises:
        ValueError: invalid config, or a global batch size that the processes and per-device
            batch size cannot make.
    """

    phase = "self-instruction"

    def __init__(
        self,
        config: TrainingConfig,
        model: SohesForHierarchicalSegmentation | None = None,
        train_dataset: Dataset | None = None,
        accelerator: Accelerator | None = None,
        cpu: bool = False,
    ) -> None:
        config.validate()
        if config.phase != self.phase:
            raise ValueError(f"config.phase is {config.phase!r}; {type(self).__name__} needs {self.phase!r}")
        self.config = config
        num_processes = (
            accelerator.num_processes if accelerator is not None else PartialState(cpu=cpu).num_processes
        )
        self.gradient_accumulation_steps = self._accumulation_steps(num_processes)
        if accelerator is None:
            accelerator = Accelerator(
                cpu=cpu,
                mixed_precision=config.mixed_precision,
                gradient_accumulation_steps=self.gradient_accumulation_steps,
                log_with=config.log_with,
                project_dir=config.output_dir,
            )
        else:
            accelerator.gradient_accumulation_steps = self.gradient_accumulation_steps
        self.accelerator = accelerator
        set_seed(config.seed)
        self.model = model if model is not None else build_model(config)
        self.train_dataset = train_dataset if train_dataset is not None else self._build_dataset()
        self.learning_rate = scale_learning_rate(
            config.base_learning_rate, config.base_batch_size, config.global_batch_size, config.lr_scaling
        )
        self.lr_multipliers = learning_rate_multipliers(
            config.max_steps, config.warmup_steps, config.schedule, config.poly_power
        )
        self.state = TrainerState()

    # ------------------------------------------------------------------ hooks for phase 3

    def _build_dataset(self) -> Dataset:
        from sohes_hf.training.datasets import PseudoLabelledImages, SelfInstructionDataset

        images = PseudoLabelledImages(
            self.config.train_annotations,
            self.config.image_root,
            max_unreadable_fraction=self.config.max_unreadable_fraction,
            probe_across_processes=True,  # every process builds it here: each checks a share
        )
        return SelfInstructionDataset(images, self.config.augmentation, self.config.seed)

    def _collate_fn(self) -> Any:
        return collate_training_examples

    def _setup_extra(self, model: SohesForHierarchicalSegmentation) -> None:
        """Phase 3 creates its teacher here (model already on the device, not yet wrapped)."""

    def _json_states(self) -> dict[str, JsonState]:
        """Project state saved per process as JSON in checkpoints (phase 3 adds its counters)."""
        return {"trainer_state": self.state}

    def _tensor_states(self) -> dict[str, torch.nn.Module]:
        """Modules saved as safetensors in checkpoints (phase 3: the EMA teacher)."""
        return {}

    def _after_optimizer_step(self, model: torch.nn.Module) -> None:
        """Phase 3 updates its teacher here."""

    def compute_loss(
        self, model: torch.nn.Module, batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_seg on one batch: Mask2Former's mask/dice/class losses + the ancestor BCE (section 3.2).

        Returns:
            The total loss (the model's weighted sum over all decoder layers) and the detached
            last-layer components to log.
        """
        loss, components = _segmentation_loss(model, batch)
        return loss, components

    def _extra_log_values(self) -> dict[str, float]:
        """Phase 3 adds EMA momentum and teacher pseudo-label counts."""
        return {}

    def _save_final_models(self, model: torch.nn.Module, model_dir: str) -> None:
        """Saves the trained model (phase 3 saves the teacher and the student)."""
        self._save_pretrained(self.accelerator.unwrap_model(model), model, model_dir)

    def _final_model_dirs(self, model_dir: str) -> list[str]:
        """Folders :meth:`_save_final_models` writes a model to; each gets the image processor."""
        return [model_dir]

    def _ema_momentum(self) -> float | None:
        return None

    # ------------------------------------------------------------------ the loop

    def _accumulation_steps(self, num_processes: int) -> int:
        config = self.config
        per_step = config.per_device_train_batch_size * num_processes
        if config.gradient_accumulation_steps is None:
            if config.global_batch_size % per_step:
                raise ValueError(
                    f"global_batch_size={config.global_batch_size} is not a multiple of "
                    f"per_device_train_batch_size={config.per_device_train_batch_size} x "
                    f"{num_processes} process(es)"
                )
            return config.global_batch_size // per_step
        if per_step * config.gradient_accumulation_steps != config.global_batch_size:
            raise ValueError(
                f"global_batch_size={config.global_batch_size} != per_device_train_batch_size="
                f"{config.per_device_train_batch_size} x gradient_accumulation_steps="
                f"{config.gradient_accumulation_steps} x {num_processes} process(es)"
            )
        return config.gradient_accumulation_steps

    def _data_loader(self, start_step: int) -> DataLoader:
        from sohes_hf.training.datasets import stream_positions

        config = self.config
        positions = stream_positions(
            start_step * config.global_batch_size, config.max_steps * config.global_batch_size
        )
        return DataLoader(
            self.train_dataset,
            batch_size=config.per_device_train_batch_size,
            sampler=positions,
            collate_fn=self._collate_fn(),
            num_workers=config.num_workers,
            drop_last=True,
            # Its own generator: creating the iterator must not consume the global RNG, or a
            # resumed run's RNG stream would differ from an uninterrupted one.
            generator=torch.Generator().manual_seed(config.seed),
        )

    def _resolved_config_text(self) -> str:
        return yaml.safe_dump(self.config.to_dict(), sort_keys=False)

    def train(self, resume_from: str | None = None) -> TrainingResult:
        """Runs the loop to ``config.max_steps`` and saves the final model.

        Args:
            resume_from: "latest" or a checkpoint folder: continue that run exactly (same data
                order, optimizer, EMA teacher, schedule position and RNG states).

        Returns:
            Where the model went and its training record.
        """
        config, accelerator, state = self.config, self.accelerator, self.state
        started_at = utc_now()
        model = self.model.to(accelerator.device)
        self._setup_extra(model)
        if config.activation_checkpointing:
            # Non-reentrant: works under DDP and with inputs passed by keyword.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        optimizer = build_optimizer(model, config, self.learning_rate)
        model, optimizer = accelerator.prepare(model, optimizer)
        if resume_from is not None:
            load_checkpoint(
                accelerator,
                resolve_resume_path(resume_from, config.output_dir),
                json_states=self._json_states(),
                tensor_states=self._tensor_states(),
            )
        if config.log_with:
            accelerator.init_trackers(f"sohes-{self.phase}", config=_flat_hparams(config.to_dict()))
        loader = accelerator.prepare(self._data_loader(state.global_step))
        model.train()
        sums: dict[str, torch.Tensor] = {}
        micro_batches = 0
        progress = tqdm(
            total=config.max_steps,
            initial=state.global_step,
            desc=self.phase,
            disable=not accelerator.is_local_main_process,
        )
        if state.global_step < config.max_steps:
            _set_learning_rate(optimizer, self.learning_rate * self.lr_multipliers[state.global_step])
        for batch in loader:
            self._count_substitutions(batch)
            with accelerator.accumulate(model):
                loss, components = self.compute_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for name, value in {"loss": loss.detach(), **components}.items():
                sums[name] = sums.get(name, torch.zeros((), device=value.device)) + value.detach().float()
            micro_batches += 1
            if not accelerator.sync_gradients:
                continue
            # Window sums live in the checkpointed state (floats) so a resumed run logs alike.
            state.add_to_window({name: float(value) for name, value in sums.items()}, micro_batches)
            sums, micro_batches = {}, 0
            state.global_step += 1
            progress.update(1)
            self._after_optimizer_step(model)
            step = state.global_step
            if step % config.logging_steps == 0 or step == config.max_steps:
                lr = self.learning_rate * self.lr_multipliers[step - 1]
                self._log(lr)
            if step < config.max_steps:
                _set_learning_rate(optimizer, self.learning_rate * self.lr_multipliers[step])
            if (
                config.checkpointing_steps
                and step % config.checkpointing_steps == 0
                and step < config.max_steps
            ):
                save_checkpoint(
                    accelerator,
                    config.output_dir,
                    step,
                    json_states=self._json_states(),
                    tensor_states=self._tensor_states(),
                    extra_files={RESOLVED_CONFIG_NAME: self._resolved_config_text()},
                    total_limit=config.checkpoints_total_limit,
                )
        progress.close()
        return self._finish(model, started_at)

    def _count_substitutions(self, batch: Any) -> None:
        """Counts the images replaced in ``batch``; stops when too many are unreadable (datasets.py)."""
        from sohes_hf.training.datasets import PseudoLabelledImages, check_unreadable_fraction

        names = list(getattr(batch, "substituted", []))
        if not names:
            return
        self.state.add_substitutions(names)
        images = getattr(self.train_dataset, "images", None)
        if isinstance(images, PseudoLabelledImages):
            at_load = images.num_unreadable_at_load
            check_unreadable_fraction(
                len(self.state.unreadable_images) + at_load,
                len(images) + at_load,
                images.max_unreadable_fraction,
                f"image_root {self.config.image_root} (at step {self.state.global_step + 1})",
                names,
            )

    def _log(self, learning_rate: float) -> None:
        accelerator, state = self.accelerator, self.state
        names = sorted(state.window_sums)
        local = torch.tensor(
            [state.window_sums[name] / max(state.window_count, 1) for name in names],
            device=accelerator.device,
        )
        state.window_sums, state.window_count = {}, 0
        means = accelerator.reduce(local, reduction="mean")
        values = {f"train/{name}": float(v) for name, v in zip(names, means.tolist(), strict=True)}
        values["train/learning_rate"] = float(learning_rate)
        values.update(self._extra_log_values())
        self.state.last_logged_loss = values["train/loss"]
        accelerator.log(values, step=self.state.global_step)
        if accelerator.is_main_process:
            logger.info(
                "step %d: %s", self.state.global_step, ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            )

    def _save_pretrained(self, unwrapped: Any, prepared: torch.nn.Module, directory: str) -> None:
        """``save_pretrained`` that also works under FSDP/DeepSpeed (collective state-dict gather)."""
        accelerator = self.accelerator
        state_dict = accelerator.get_state_dict(prepared)
        if accelerator.is_main_process:
            unwrapped.save_pretrained(directory, state_dict=state_dict, save_function=accelerator.save)

    def _finish(self, model: torch.nn.Module, started_at: str) -> TrainingResult:
        config, accelerator = self.config, self.accelerator
        accelerator.wait_for_everyone()
        model_dir = config.output_dir
        os.makedirs(model_dir, exist_ok=True)
        self._save_final_models(model, model_dir)
        initialization, source = backbone_initialization(config.model_name_or_path, config.dino_backbone)
        record = TrainingRecord(
            phase=self.phase,
            steps=self.state.global_step,
            global_batch_size=config.global_batch_size,
            learning_rate=self.learning_rate,
            optimizer=f"Adan(betas={tuple(config.adan_betas)}, weight_decay={config.weight_decay})",
            ema_momentum=self._ema_momentum(),
            train_data=f"{config.train_annotations} @ {config.image_root}",
            num_train_images=len(self.train_dataset),  # type: ignore[arg-type]
            seed=config.seed,
            started_at=started_at,
            finished_at=utc_now(),
            final_loss=self.state.last_logged_loss,
            backbone_initialization=initialization,
            backbone_source=source,
            dropped_images=dict(getattr(getattr(self.train_dataset, "images", None), "num_dropped", {})),
        )
        record.unreadable_images, record.image_substitutions = self._substitution_counts()
        if accelerator.is_main_process:
            from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor

            augmentation = config.augmentation
            processor = SohesImageProcessor(
                size={"longest_edge": augmentation.image_size},
                image_mean=list(augmentation.image_mean),
                image_std=list(augmentation.image_std),
            )
            for directory in self._final_model_dirs(model_dir):  # each loads with pipeline(model=...)
                processor.save_pretrained(directory)
            save_training_config(config, os.path.join(model_dir, RESOLVED_CONFIG_NAME))
            write_training_record(record, model_dir)
            save_model_card(model_dir, accelerator.unwrap_model(model).config, record.to_dict())
            logger.info("saved the %s model to %s", self.phase, model_dir)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return TrainingResult(model_dir=model_dir, record=record)

    def _substitution_counts(self) -> tuple[int, int]:
        """Images replaced mid-run, over all processes (each counted its own batches)."""
        names, count = self.state.unreadable_images, self.state.image_substitutions
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            names = sorted({name for part in gather_object([names]) for name in part})
            count = sum(gather_object([count]))
        if names:
            logger.warning(
                "%d image(s) could not be decoded and were replaced in %d example(s): %s",
                len(names),
                count,
                ", ".join(names[:20]),
            )
        return len(names), count


def _segmentation_loss(
    model: torch.nn.Module, batch: TrainingBatch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's L_seg on a batch; float mask labels are made on the device (bool in transit)."""
    outputs = model(
        pixel_values=batch.pixel_values,
        pixel_mask=batch.pixel_mask,
        mask_labels=[m.float() for m in batch.mask_labels],
        class_labels=batch.class_labels,
        ancestor_labels=batch.ancestor_labels,
    )
    components = {
        name: value.detach()
        for name, value in outputs.loss_dict.items()
        if not _AUXILIARY_SUFFIX.search(name)
    }
    return outputs.loss, components


def _flat_hparams(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested config values to scalars/strings (trackers accept nothing else)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value if value is not None else "null"
        else:
            flat[name] = str(value)
    return flat
