"""A small real training run for the checkpoint tests (tests/test_checkpoints.py), run as a subprocess so that it can
be killed: the tiny Qwen3-VL on 8 rows, 2 rows a step.

    python tests/scripts/checkpoint_run.py --output_dir OUT --max_steps 6 --save_steps 2 [--hang_in_save_at 4]
        [--step_marker FILE] [--resume]

`--hang_in_save_at N`: while saving checkpoint N, after the model weights are written and before the optimizer state
is, write `OUT/in_save` and wait, so that the test can kill the process in the middle of the save.
`--step_marker FILE`: append the step number to FILE after every step (the test waits for training to be under way).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transformers import TrainerCallback  # noqa: E402

from tests.test_resume import rows  # noqa: E402
from vlsft import VLSFTConfig, VLSFTTrainer  # noqa: E402
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl  # noqa: E402


class HangInSave(VLSFTTrainer):
    """Stops in the middle of one checkpoint save: weights written, optimizer state not yet."""

    hang_at: int | None = None

    def _save_optimizer_and_scheduler(self, output_dir):
        if self.state.global_step == self.hang_at:
            Path(self.args.output_dir, "in_save").write_text(output_dir)
            time.sleep(600)
        super()._save_optimizer_and_scheduler(output_dir)


class StepMarker(TrainerCallback):
    def __init__(self, path: str):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        with open(self.path, "a") as file:
            file.write(f"{state.global_step}\n")


def config(output_dir: str, max_steps: int, save_steps: int, save_strategy: str = "steps") -> VLSFTConfig:
    return VLSFTConfig(
        output_dir=output_dir,
        report_to="none",
        max_steps=max_steps,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        save_strategy=save_strategy,
        save_steps=save_steps,
        gradient_checkpointing=False,
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
    )


def trainer(output_dir, max_steps, save_steps, save_strategy="steps", hang_in_save_at=None, callbacks=None):
    model, processor = build_tiny_qwen3_vl(seed=0)
    result = HangInSave(
        model,
        args=config(output_dir, max_steps, save_steps, save_strategy),
        train_dataset=rows(),
        processing_class=processor,
        callbacks=callbacks,
    )
    result.hang_at = hang_in_save_at
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--save_steps", type=int, default=2)
    parser.add_argument("--save_strategy", default="steps")
    parser.add_argument("--hang_in_save_at", type=int)
    parser.add_argument("--step_marker")
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args()
    callbacks = [StepMarker(options.step_marker)] if options.step_marker else None
    run = trainer(
        options.output_dir, options.max_steps, options.save_steps, options.save_strategy, options.hang_in_save_at, callbacks
    )
    run.train(resume_from_checkpoint=True if options.resume else None)
    print(f"finished at step {run.state.global_step}; stopped by SIGTERM at {run.preemption.stopped_at_step}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
