"""Atomic, resumable training checkpoints through ``Accelerator.save_state``.

A checkpoint folder ``<output_dir>/checkpoints/step_<N>`` holds what ``save_state`` writes (model,
optimizer, mixed-precision scaler, every process's RNG states, registered objects such as the
EMA teacher and the :class:`TrainerState`) plus the resolved config. It is written under a
temporary name and renamed when complete, so a crash mid-save never leaves a folder that
``--resume`` would pick up half-written. The data order needs no state of its own: positions are
a pure function of the seed and ``TrainerState.global_step`` (see ``datasets.py``).

Multi-node runs need ``output_dir`` on a file system every node sees (each process writes its
own RNG file into the same folder).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from accelerate import Accelerator

from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
_CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """Loop counters saved in every checkpoint (registered with ``register_for_checkpointing``).

    Attributes:
        global_step: optimizer steps completed.
        window_sums: loss name -> sum over the micro-batches of the current logging window.
        window_count: micro-batches in the current logging window.
        last_logged_loss: mean total loss of the last completed logging window (NaN before).
    """

    global_step: int = 0
    window_sums: dict[str, float] = field(default_factory=dict)
    window_count: int = 0
    last_logged_loss: float = float("nan")

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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.window_sums = {str(k): float(v) for k, v in state["window_sums"].items()}
        self.window_count = int(state["window_count"])
        self.last_logged_loss = float(state["last_logged_loss"])


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
    extra_files: dict[str, str] | None = None,
    total_limit: int | None = None,
) -> str:
    """Saves the full training state atomically; every process must call it.

    Args:
        accelerator: the run's accelerator (its prepared model/optimizer and registered objects
            are saved).
        output_dir: run folder; the checkpoint goes to ``checkpoints/step_<step>``.
        step: optimizer steps completed.
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


def load_checkpoint(accelerator: Accelerator, path: str) -> None:
    """Restores what :func:`save_checkpoint` saved (call after ``prepare`` and registration)."""
    accelerator.load_state(path)
    logger.info("resumed from %s", path)
