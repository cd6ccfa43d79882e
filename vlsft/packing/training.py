"""`PackedTraining`: the trainer's side of packing: packs planned over the train dataset, the packed collator, and
the pack plan kept with every checkpoint so that a resumed run trains on the plan its steps count.

A checkpoint's `global_step` counts packs of the plan it was trained on: resumed on another plan (another
`max_length`, dataset, `seed`, or rows kept by validation), the run would skip packs it never trained, or end at once
as "finished". So every checkpoint holds `PLAN_FILE`, the plan's fingerprint (none for a run without packing), and
resuming compares it with the plan made now: a change is refused with the fix, unless the run sets
`resume_with_new_pack_plan=True` (then it is a warning, and the new plan's fingerprint is saved from then on).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from accelerate.logging import get_logger
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from vlsft.packing import check_packing_support
from vlsft.packing.attention import use_packed_attention
from vlsft.packing.collator import PackedCollator
from vlsft.packing.plan import pack_dataset

logger = get_logger(__name__)

PLAN_FILE = "vlsft_pack_plan.json"


class PackPlanChangedError(ValueError):
    """Resuming from a checkpoint trained on another pack plan; the message says what changed and the fixes."""


def plan_record(plan: list[list[int]], max_length: int) -> dict[str, Any]:
    """What a checkpoint stores about its run's pack plan: a fingerprint of the packs (rows by index, in order) and,
    to say what changed, their number, the rows they hold and the budget. (A run without packing stores a None
    fingerprint.)"""
    digest = hashlib.sha256(json.dumps(plan, separators=(",", ":")).encode()).hexdigest()
    return {"fingerprint": digest, "packs": len(plan), "rows": sum(len(pack) for pack in plan), "max_length": max_length}


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "no pack plan recorded (a checkpoint of another tool, or of a vlsft older than this check)"
    if record.get("fingerprint") is None:
        return "no packing"
    return f"{record['packs']} packs of {record['rows']} rows, max_length {record['max_length']}"


def check_resumed_plan(checkpoint: str, current: dict[str, Any], allow_change: bool) -> None:
    """Raise `PackPlanChangedError` when `checkpoint` was trained on another pack plan than `current` (a missing
    record counts as no packing when this run does not pack either), or warn when `allow_change`."""
    path = os.path.join(checkpoint, PLAN_FILE)
    stored = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
    if (stored or {"fingerprint": None})["fingerprint"] == current["fingerprint"]:
        return
    step = os.path.basename(os.path.normpath(checkpoint))
    what = (
        f"{checkpoint} was trained on another pack plan ({_describe(stored)}) than this run makes "
        f"({_describe(current)}): `max_length`, the train dataset, `seed`, `packing` or the rows validation kept "
        f"changed. The checkpoint's step counts packs of its own plan"
    )
    if allow_change:
        logger.warning(
            f"{what}; `resume_with_new_pack_plan=True`: resuming on the new plan from {step}, so in this epoch some "
            "rows are trained again and others not at all."
        )
        return
    raise PackPlanChangedError(
        f"cannot resume: {what}, so the resumed run would skip packs it never trained (or end at once as finished). "
        "Resume with the checkpoint's settings and data, start a new run (without `resume_from_checkpoint`), or set "
        "`resume_with_new_pack_plan: true` to go on with the new plan anyway."
    )


class PackedTraining:
    """Mixin for a `Trainer` subclass (listed before it, after `KillSafeCheckpoints`, which hands `train` the resolved
    checkpoint and has `_save_checkpoint` write into a staging directory): packing set up by `_use_packing`, the pack
    plan recorded in every checkpoint and checked on resume."""

    _pack_plan_record: dict[str, Any] = {"fingerprint": None}  # no packing (replaced, never mutated)

    def _use_packing(self, base_model) -> None:
        """Train on best-fit-decreasing packs of rows (`args.packing`) or on padding-free micro-batches
        (`args.padding_free`), each row on its own positions and unseen by the others (`vlsft.packing`)."""
        check_packing_support(base_model, self.data_collator)
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        use_packed_attention(base_model, one_call_per_layer=zero3)
        if self.args.packing and self.train_dataset is not None:
            if not hasattr(self.train_dataset, "__len__"):
                raise ValueError("packing=True plans packs over the whole train dataset; load it as a datasets.Dataset.")
            self.train_dataset = pack_dataset(
                self.train_dataset,
                self.data_collator,
                self.args.max_length,
                self.args.seed,
                allow_truncated_end_of_turn=self.args.allow_truncated_end_of_turn,
                original_indices=self._original_row_indices.get(None),
            )
            self._pack_plan_record = plan_record(self.train_dataset.plan, self.args.max_length)
        self.data_collator = PackedCollator(self.data_collator, model=base_model)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # into the staging directory, while `KillSafeCheckpoints` stages the checkpoint
            checkpoint = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            with open(os.path.join(checkpoint, PLAN_FILE), "w", encoding="utf-8") as file:
                json.dump(self._pack_plan_record, file)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if isinstance(resume_from_checkpoint, str):
            check_resumed_plan(resume_from_checkpoint, self._pack_plan_record, self.args.resume_with_new_pack_plan)
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
