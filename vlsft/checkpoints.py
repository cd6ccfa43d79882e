"""Checkpoints that survive a kill: written atomically, chosen on resume only when complete, and written on SIGTERM.

- `KillSafeCheckpoints._save_checkpoint` (a mixin of `VLSFTTrainer`) lets `Trainer` write every file of `checkpoint-N` into a staging directory
  (`STAGING_DIR` under the output directory), then renames it into place: a run killed mid-save leaves no
  `checkpoint-N` at all, only a staging directory that the next save clears.
- `resume_checkpoint` picks the newest *complete* checkpoint for `resume_from_checkpoint=True`, with a warning naming
  any incomplete newer one it skips (one written by another tool, or copied half-way) and the one it uses.
- `PreemptionCallback` turns SIGTERM (spot instances, cluster preemption) into "save a checkpoint at the end of this
  step, then stop": the run then ends normally instead of dying mid-step. The DataLoader workers leave the signal to
  the main process (`vlsft.worker_signals`), so a SIGTERM to the whole process group does not kill them mid-run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading

import torch
from accelerate.logging import get_logger
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from vlsft.worker_signals import leave_stop_signals_to_main

# accelerate's logger: emitted on the main process only (every rank reaches the same messages).
logger = get_logger(__name__)

# Where `checkpoint-N` is written before it is renamed into the output directory. Its name matches no checkpoint
# pattern, so `get_last_checkpoint` and checkpoint rotation never see it.
STAGING_DIR = ".vlsft-checkpoint-staging"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Any one of these holds the model's weights (full model, sharded index, LoRA adapter, DeepSpeed's engine state).
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "latest",
)
TRAINER_STATE = "trainer_state.json"


class CheckpointError(ValueError):
    """`resume_from_checkpoint` names nothing to resume from; the message says what to pass instead."""


def publish_checkpoint(staged: str, final: str) -> None:
    """Move a fully written checkpoint directory into place. An existing `final` (the same step saved again) is
    swapped out first and deleted after, so there is never a moment without a complete checkpoint at `final`."""
    previous = None
    if os.path.exists(final):
        previous = final + ".previous"
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(final, previous)
    os.rename(staged, final)
    _fsync_directory(os.path.dirname(final))
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _fsync_directory(path: str) -> None:
    """Make a rename durable (a crash right after it must not bring back the old directory entry)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def incomplete_reason(checkpoint: str, needs_optimizer: bool = True) -> str:
    """Why `checkpoint` cannot be resumed from, or "" when it can: a readable trainer state, the weights and (unless
    only the model was saved) the optimizer state."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE), encoding="utf-8") as file:
            json.load(file)
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError) as error:
        return f"unreadable {TRAINER_STATE} ({type(error).__name__})"
    names = set(os.listdir(checkpoint))
    if not names & set(_WEIGHT_FILES):
        return "no model weights"
    if needs_optimizer and "latest" not in names and not any(name.startswith("optimizer.") for name in names):
        return "no optimizer state"
    return ""


def resume_checkpoint(output_dir: str, needs_optimizer: bool = True) -> str:
    """The newest complete `checkpoint-N` in `output_dir`, with a warning naming the incomplete newer ones skipped
    and the one used. Raises `CheckpointError` (with the fix) when there is none."""
    steps = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = _CHECKPOINT_NAME.match(name)
            if match and os.path.isdir(os.path.join(output_dir, name)):
                steps.append((int(match.group(1)), os.path.join(output_dir, name)))
    skipped = []
    for _, path in sorted(steps, reverse=True):
        reason = incomplete_reason(path, needs_optimizer)
        if not reason:
            skipping = f"Skipping incomplete checkpoint(s): {'; '.join(f'{p} ({r})' for p, r in skipped)}. " if skipped else ""
            logger.warning(f"{skipping}Resuming from {path}.")
            return path
        skipped.append((path, reason))
    found = f"; incomplete: {'; '.join(f'{p} ({r})' for p, r in skipped)}" if skipped else ""
    raise CheckpointError(
        f"`resume_from_checkpoint=True` found no complete checkpoint in {output_dir}{found}. Start without "
        "`resume_from_checkpoint`, or pass the path of a checkpoint directory."
    )


def resume_argument(value, output_dir: str, needs_optimizer: bool = True):
    """`Trainer.train`'s `resume_from_checkpoint`, made explicit: True (or the strings "true"/"latest", as a command
    line gives them) -> the newest complete checkpoint; False/None/"false" -> None; a path -> itself, if it exists."""
    if isinstance(value, str) and value.strip().lower() in ("true", "latest", "last", "yes", "1"):
        value = True
    if value is False or value is None or (isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "none", "")):
        return None
    if value is True:
        return resume_checkpoint(output_dir, needs_optimizer)
    if not os.path.isdir(value):
        raise CheckpointError(
            f"`resume_from_checkpoint={value!r}` is not a checkpoint directory. Pass the path of a `checkpoint-N` "
            "directory, or `true` to resume from the newest complete checkpoint in `output_dir`."
        )
    # A checkpoint named explicitly is the caller's choice: it needs its state and weights, not its optimizer.
    reason = incomplete_reason(value, needs_optimizer=False)
    if reason:
        raise CheckpointError(f"cannot resume from {value}: the checkpoint is incomplete ({reason}). Pass another one.")
    return value


class PreemptionCallback(TrainerCallback):
    """On SIGTERM, save a checkpoint at the end of the current step (when `save_strategy` is not "no") and stop.

    The handler only sets a flag (a signal can arrive in the middle of a save or a collective); the decision is taken
    at a step end, by all ranks together (the flag is max-reduced), so every rank saves and stops at the same step.
    """

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.requested = False
        self.stopped_at_step: int | None = None
        self._previous_handler = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def uninstall(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    @property
    def exit_status(self) -> int:
        """The exit status of a run that ends here: 128 + SIGTERM (143, as a shell reports a process SIGTERM ended)
        once SIGTERM stopped it, so a scheduler never takes the partial run for a finished one; else 0."""
        return 0 if self.stopped_at_step is None else 128 + signal.SIGTERM

    def _on_sigterm(self, signum, frame) -> None:
        self.requested = True

    def _requested_anywhere(self) -> bool:
        if self.accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).max() > 0)

    def on_step_end(self, args, state, control, **kwargs):
        if not self._requested_anywhere():
            return control
        self.stopped_at_step = state.global_step
        control.should_training_stop = True
        if args.save_strategy != "no":
            control.should_save = True
            logger.warning(f"SIGTERM: saving a checkpoint at step {state.global_step} and stopping.")
        else:
            logger.warning(f"SIGTERM: stopping at step {state.global_step}; `save_strategy` is 'no', nothing saved.")
        return control


class KillSafeCheckpoints:
    """Mixin for a `Trainer` subclass (listed before it): checkpoints written atomically, resume from the newest
    complete one, and a checkpoint then a clean stop on SIGTERM. The trainer adds a `PreemptionCallback` as
    `self.preemption`."""

    _staging_run_dir: str | None = None  # set while `Trainer._save_checkpoint` writes into the staging directory

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is saved, `Trainer` writes it under the staging directory (see `_save_checkpoint`).
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _get_dataloader(self, *args, **kwargs):
        """`Trainer._get_dataloader` (every train, eval and test DataLoader), whose workers leave SIGTERM and SIGINT to
        this process: a scheduler's SIGTERM to the whole process group must reach the preemption callback, not kill
        a worker (whose death the DataLoader raises mid-step)."""
        dataloader = super()._get_dataloader(*args, **kwargs)
        leave_stop_signals_to_main(dataloader)
        return dataloader

    def _save_checkpoint(self, model, trial) -> None:
        """`Trainer._save_checkpoint`, written into a staging directory and renamed into place once every file (and
        every rank's shard) is written: a run killed mid-save leaves no half-written `checkpoint-N`."""
        run_dir = super()._get_output_dir(trial)
        staging = os.path.join(run_dir, STAGING_DIR)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left behind
        self.accelerator.wait_for_everyone()
        self._staging_run_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
        self.accelerator.wait_for_everyone()  # every rank's files are in the staging directory
        if self.args.should_save:
            staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
            # `Trainer` looked for the best checkpoint where it was writing (the staging directory): name it where
            # it lives once published, and store that in this checkpoint's state (still in staging: still atomic).
            if self.state.best_global_step:
                best = f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
                if best == name or os.path.isdir(os.path.join(run_dir, best)):
                    self.state.best_model_checkpoint = os.path.join(run_dir, best)
                    if os.path.exists(os.path.join(staged, "trainer_state.json")):
                        self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            publish_checkpoint(staged, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, resuming (`resume_from_checkpoint=True`) from the newest *complete* checkpoint, and saving
        a checkpoint then stopping cleanly on SIGTERM (`self.preemption.stopped_at_step` says where)."""
        resume_from_checkpoint = resume_argument(
            resume_from_checkpoint, self.args.output_dir, needs_optimizer=not self.args.save_only_model
        )
        self.preemption.install()
        try:
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        finally:
            self.preemption.uninstall()
