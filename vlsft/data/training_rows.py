"""Rows that fail in the middle of training (an image file changed or vanished after validation) never kill the run
with a "batch row 1" traceback.

The dataset index travels with each row: `IndexedRows` hands the collator each row with its index in the dataset the
user gave (before any `invalid_rows="skip"` filtering) under `ROW_INDEX_KEY`. `FaultTolerantCollator` strips it,
collates, and on a `RowError`:
- `invalid_rows="skip"`: drops that row, logs it and counts it (`skipped`), and collates the rest;
- `invalid_rows="raise"`: raises `TrainingRowError` naming the dataset row and how to skip such rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

import torch

from vlsft.collation.rendering import RowError
from vlsft.tokens import IGNORE_INDEX

logger = logging.getLogger(__name__)

ROW_INDEX_KEY = "vlsft_row_index"


class TrainingRowError(ValueError):
    """A row failed to collate during training; the message names its dataset row and how to skip such rows."""


class IndexedRows(torch.utils.data.Dataset):
    """A map-style view of `dataset` whose rows carry their original index (`original_indices[i]`, or `i`)."""

    def __init__(self, dataset, original_indices: list[int] | None = None):
        self.dataset = dataset
        self.original_indices = original_indices

    def __len__(self) -> int:
        return len(self.dataset)

    def _index(self, position: int) -> int:
        return position if self.original_indices is None else self.original_indices[position]

    def __getitem__(self, position: int) -> dict[str, Any]:
        return {**self.dataset[position], ROW_INDEX_KEY: self._index(position)}

    def __getitems__(self, positions: list[int]) -> list[dict[str, Any]]:
        fetch = getattr(self.dataset, "__getitems__", None)
        rows = fetch(positions) if fetch is not None else [self.dataset[p] for p in positions]
        return [{**row, ROW_INDEX_KEY: self._index(p)} for row, p in zip(rows, positions)]


class FaultTolerantCollator:
    """Wraps the trainer's collator for one dataset (`label`: "train dataset" or "eval dataset 'x'")."""

    def __init__(self, collator: Callable, label: str, invalid_rows: str, skipped: Counter, validated: bool = True):
        self.collator = collator
        self.validated = validated
        self.label = label
        self.invalid_rows = invalid_rows
        self.skipped = skipped  # shared with the trainer: skipped rows per dataset label
        self._fallback: dict[str, torch.Tensor] | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        indices = [row.get(ROW_INDEX_KEY) for row in rows]
        rows = [{k: v for k, v in row.items() if k != ROW_INDEX_KEY} for row in rows]
        while rows:
            try:
                batch = self.collator(rows)
            except RowError as error:
                index = indices[error.index]
                where = f"{self.label} row {index}" if index is not None else f"{self.label}, batch row {error.index}"
                if self.invalid_rows != "skip":
                    why = (
                        "It passed validation before training, so its data changed since (an image file edited, "
                        "emptied or removed?)"
                        if self.validated
                        else "Row validation is off (`validate_rows=False`): it would have named this row before the "
                        "first step"
                    )
                    raise TrainingRowError(
                        f"{where} failed in the middle of training: {error.reason}. {why}. Fix it, or set "
                        "`invalid_rows: skip` (`VLSFTConfig(invalid_rows='skip')`) to drop such rows and go on."
                    ) from error
                self.skipped[self.label] += 1
                logger.warning(f"invalid_rows='skip': dropped {where} during training: {error.reason}")
                del rows[error.index], indices[error.index]
                continue
            self._fallback = batch
            return batch
        # Every row of the batch failed. The step still runs (every rank makes the same collective calls), on the
        # last good batch with nothing supervised: zero tokens, zero loss, zero gradient.
        if self._fallback is None:
            raise TrainingRowError(
                f"every row of the first {self.label} batch failed in the middle of training, and there is no good "
                "batch to stand in; fix the data (see the warnings above)."
            )
        return {**self._fallback, "labels": torch.full_like(self._fallback["labels"], IGNORE_INDEX)}
