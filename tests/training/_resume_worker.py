"""torchrun worker for test_distributed.py: phase 3 run full, killed with SIGKILL, or resumed.

Usage: ``_resume_worker.py MODE DATA_DIR PHASE2_MODEL OUTPUT_DIR LOG_JSON`` with MODE one of
``full`` (uninterrupted), ``kill`` (SIGKILL of every rank right after optimizer step 4, before it
is logged: the step-3 checkpoint holds a half-full logging window) or ``resume``
(``resume_from="latest"``). The main process writes every logged value (loss window means and
teacher-label counts, both reduced over the ranks) to LOG_JSON.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.training import tiny_recipe

from sohes_hf.training import SelfCorrectionTrainer
from sohes_hf.training.config import build_training_config

KILL_AFTER_STEP = 4


class RecordingTrainer(SelfCorrectionTrainer):
    """Records what ``_log`` logs; in ``kill`` mode, SIGKILLs the process after step 4."""

    mode = "full"
    logged: ClassVar[list[dict[str, Any]]] = []

    def _extra_log_values(self) -> dict[str, float]:
        values = super()._extra_log_values()
        self._pending_extra = values
        return values

    def _log(self, learning_rate: float) -> None:
        super()._log(learning_rate)
        # last_logged_loss and the extra values are what _log reduced over the ranks.
        self.logged.append(
            {"step": self.state.global_step, "loss": self.state.last_logged_loss, **self._pending_extra}
        )

    def _after_optimizer_step(self, model: torch.nn.Module) -> None:
        super()._after_optimizer_step(model)
        if self.mode == "kill" and self.state.global_step == KILL_AFTER_STEP:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    mode, data_dir, phase2_model, output_dir, log_json = sys.argv[1:6]
    torch.set_num_threads(1)
    recipe = tiny_recipe(
        Path(data_dir) / "images",
        Path(data_dir) / "pseudo_labels.json",
        Path(output_dir),
        model_name_or_path=phase2_model,
        max_steps=5,
        warmup_steps=2,
        schedule="poly",
        logging_steps=2,  # windows 1-2, 3-4, 5: the step-3 checkpoint holds step 3's sums
        checkpointing_steps=3,  # and teacher counts, each rank its own
        global_batch_size=2,
        per_device_train_batch_size=1,
        ema_momentum=0.5,
        theta_score_large=0.02,  # a random teacher keeps candidates: counts are non-zero
        theta_score_small=0.01,
    )
    config = build_training_config("self-correction", recipe)
    RecordingTrainer.mode = mode
    trainer = RecordingTrainer(config, cpu=True)
    trainer.train(resume_from="latest" if mode == "resume" else None)
    if trainer.accelerator.is_main_process:
        Path(log_json).write_text(json.dumps(RecordingTrainer.logged))


if __name__ == "__main__":
    main()
