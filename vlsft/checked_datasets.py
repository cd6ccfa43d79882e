"""Rows validated ahead of the trainer, so that a run can check them before it loads the model.

`VLSFTTrainer` validates its datasets when it is built, which is after the caller has loaded the model (unless the
model is given by name). `vlsft train` checks the rows first instead, with exactly the trainer's check
(`check_datasets`: the same collator, the same errors, `invalid_rows="skip"` dropping and counting the same rows),
and hands the result to the trainer (`VLSFTTrainer(..., checked_datasets=...)`), which then does not check them again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlsft.collator import training_collator
from vlsft.data.validation import validate_datasets


@dataclasses.dataclass(frozen=True)
class CheckedDatasets:
    """Datasets `check_datasets` validated (filtered under `invalid_rows="skip"`).

    `kept_indices`: per filtered dataset (None: train, else the eval name), the index in the caller's dataset of each
    row kept, so that a row failing mid-run is named by its index in the caller's dataset."""

    train_dataset: Any
    eval_dataset: Any
    kept_indices: dict[str | None, list[int]]


def check_datasets(train_dataset, eval_dataset, processor, args) -> CheckedDatasets:
    """Validate the datasets as `VLSFTTrainer(args=args, processing_class=processor)` with its default collator
    would: raises `InvalidRowsError` naming every bad row, or drops them under `invalid_rows="skip"` (and logs it)."""
    kept_indices: dict[str | None, list[int]] = {}
    if args.validate_rows:
        train_dataset, eval_dataset = validate_datasets(
            train_dataset, eval_dataset, training_collator(processor, args), args, kept_indices=kept_indices
        )
    return CheckedDatasets(train_dataset, eval_dataset, kept_indices)
