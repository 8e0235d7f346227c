"""Atomic, resumable training checkpoints through ``Accelerator.save_state``.

A checkpoint folder ``<output_dir>/checkpoints/step_<N>`` holds what ``save_state`` writes (model,
optimizer, mixed-precision scaler, every process's RNG states), the project's own state written
by the project (``trainer_state_<process>.json`` per process: counters, logging window, teacher
label counts; ``<name>.safetensors``: tensors such as the EMA teacher) and the resolved config.
Nothing is registered with ``register_for_checkpointing``, whose ``custom_checkpoint_N.pkl`` files
accelerate unpickles with ``weights_only=False``; every pickle-based file accelerate loads is first
checked to load with ``weights_only=True``, so a checkpoint copied from elsewhere cannot run code.
It is written under a temporary name and renamed when complete, so a crash mid-save never leaves a folder that
``--resume`` would pick up half-written. The data order needs no state of its own: positions are
a pure function of the seed and ``TrainerState.global_step`` (see ``datasets.py``).

Multi-node runs need ``output_dir`` on a file system every node sees (each process writes its
own RNG file into the same folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_model, save_model

from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
_CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
_STATE_NAME = "trainer_state_{index}.json"
_PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


class CheckpointError(Exception):
    """A checkpoint folder that cannot be resumed (unsafe, incomplete or from another run shape)."""


class JsonState(Protocol):
    """Project state saved as JSON: ``state_dict`` must return JSON-serialisable values."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainerState:
    """Loop counters saved in every checkpoint (as JSON, one file per process).

    Attributes:
        global_step: optimizer steps completed.
        window_sums: loss name -> sum over the micro-batches of the current logging window.
        window_count: micro-batches in the current logging window.
        last_logged_loss: mean total loss of the last completed logging window (NaN before).
        unreadable_images: file names of the images that failed to decode mid-run (sorted).
        image_substitutions: examples in which such an image was replaced by another.
    """

    global_step: int = 0
    window_sums: dict[str, float] = field(default_factory=dict)
    window_count: int = 0
    last_logged_loss: float = float("nan")
    unreadable_images: list[str] = field(default_factory=list)
    image_substitutions: int = 0

    def add_substitutions(self, names: list[str]) -> None:
        """Counts the images of one batch that were replaced (``TrainingBatch.substituted``)."""
        if names:
            self.image_substitutions += len(names)
            self.unreadable_images = sorted(set(self.unreadable_images) | set(names))

    def add_to_window(self, sums: dict[str, float], count: int) -> None:
        """Adds one optimizer step's loss sums over ``count`` micro-batches to the window."""
        for name, value in sums.items():
            self.window_sums[name] = self.window_sums.get(name, 0.0) + value
        self.window_count += count

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "window_sums": dict(self.window_sums),
            "window_count": self.window_count,
            "last_logged_loss": self.last_logged_loss,
            "unreadable_images": list(self.unreadable_images),
            "image_substitutions": self.image_substitutions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.window_sums = {str(k): float(v) for k, v in state["window_sums"].items()}
        self.window_count = int(state["window_count"])
        self.last_logged_loss = float(state["last_logged_loss"])
        # absent from checkpoints written before mid-run image substitution existed
        self.unreadable_images = sorted(str(name) for name in state.get("unreadable_images", []))
        self.image_substitutions = int(state.get("image_substitutions", 0))


def checkpoint_dir(output_dir: str, step: int) -> str:
    """``<output_dir>/checkpoints/step_<step>`` (zero-padded to sort by name)."""
    return os.path.join(output_dir, CHECKPOINTS_DIRNAME, f"step_{step:08d}")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``output_dir`` as (step, path), oldest first."""
    root = os.path.join(output_dir, CHECKPOINTS_DIRNAME)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _CHECKPOINT_PATTERN.match(name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def resolve_resume_path(resume: str, output_dir: str) -> str:
    """Turns ``--resume`` ("latest" or a checkpoint folder) into a checkpoint folder.

    Raises:
        FileNotFoundError: "latest" with no checkpoint under ``output_dir``, or a missing folder.
    """
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(
                f"--resume latest: no checkpoint under {output_dir}/{CHECKPOINTS_DIRNAME}"
            )
        return checkpoints[-1][1]
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume: checkpoint folder not found: {resume}")
    return resume


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    step: int,
    json_states: dict[str, JsonState] | None = None,
    tensor_states: dict[str, torch.nn.Module] | None = None,
    extra_files: dict[str, str] | None = None,
    total_limit: int | None = None,
) -> str:
    """Saves the full training state atomically; every process must call it.

    Args:
        accelerator: the run's accelerator (its prepared model/optimizer and registered objects
            are saved).
        output_dir: run folder; the checkpoint goes to ``checkpoints/step_<step>``.
        step: optimizer steps completed.
        json_states: name -> per-process state saved as JSON (each process writes its own file,
            so per-rank counters resume per rank).
        tensor_states: name -> module identical on every process (EMA teacher), saved once as
            safetensors.
        extra_files: file name -> text content written into the checkpoint (resolved config).
        total_limit: keep at most this many checkpoints (oldest removed after the new one exists).

    Returns:
        The checkpoint folder.
    """
    final = checkpoint_dir(output_dir, step)
    tmp = os.path.join(os.path.dirname(final), f".tmp-{os.path.basename(final)}")
    if accelerator.is_main_process:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)  # left by a crash during an earlier save
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    states = {name: obj.state_dict() for name, obj in (json_states or {}).items()}
    state_file = os.path.join(tmp, _STATE_NAME.format(index=accelerator.process_index))
    with open(state_file, "w", encoding="utf-8") as handle:
        json.dump(states, handle, allow_nan=True)
    if accelerator.is_main_process:
        for name, module in (tensor_states or {}).items():
            save_model(module, os.path.join(tmp, f"{name}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("saved checkpoint %s", final)
        if total_limit is not None:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def check_checkpoint_is_safe(path: str) -> None:
    """Refuses a checkpoint with a file that would run code when accelerate unpickles it.

    ``custom_checkpoint_N.pkl`` (``register_for_checkpointing``, loaded with
    ``weights_only=False``) is refused outright; every other pickle-based file must load with
    ``weights_only=True`` (accelerate's allow-list), or accelerate would drop it silently (RNG
    states) or fail with a traceback.

    Raises:
        CheckpointError: naming the file and what to do.
    """
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        if not name.endswith(_PICKLE_SUFFIXES) or not os.path.isfile(file):
            continue
        if name.startswith("custom_checkpoint_"):
            raise CheckpointError(
                f"--resume: {file}: a register_for_checkpointing pickle, which would be loaded "
                "with weights_only=False and can run code; sohes-hf never writes it: resume "
                "from a checkpoint written by this version, or start the run again"
            )
        try:
            accelerate_load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # any failure: unsafe (pickle refused) or damaged
            raise CheckpointError(
                f"--resume: {file} does not load with torch.load(weights_only=True) "
                f"({type(error).__name__}); it may contain code or be damaged: resume from "
                "another checkpoint or start the run again"
            ) from error


def load_checkpoint(
    accelerator: Accelerator,
    path: str,
    json_states: dict[str, JsonState] | None = None,
    tensor_states: dict[str, torch.nn.Module] | None = None,
) -> None:
    """Restores what :func:`save_checkpoint` saved (call after ``prepare``).

    Raises:
        CheckpointError: an unsafe file (:func:`check_checkpoint_is_safe`), or this process's
            state file or a tensor file missing or unreadable.
    """
    check_checkpoint_is_safe(path)
    state_file = os.path.join(path, _STATE_NAME.format(index=accelerator.process_index))
    try:
        with open(state_file, encoding="utf-8") as handle:
            states = json.load(handle)
        if not isinstance(states, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"--resume: {state_file}: {error}; a checkpoint resumes only with the number of "
            "processes that wrote it and from a complete folder"
        ) from error
    for name, obj in (json_states or {}).items():
        if name not in states:
            raise CheckpointError(f"--resume: {state_file} has no {name!r} state")
        obj.load_state_dict(states[name])
    for name, module in (tensor_states or {}).items():
        file = os.path.join(path, f"{name}.safetensors")
        if not os.path.isfile(file):
            raise CheckpointError(f"--resume: {file} is missing")
        load_model(module, file, strict=True, device=str(next(module.parameters()).device))
    accelerator.load_state(path, load_kwargs={"weights_only": True})
    logger.info("resumed from %s", path)
