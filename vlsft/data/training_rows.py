"""Rows that fail in the middle of training (an image file changed or vanished after validation) never kill the run
with a "batch row 1" traceback.

The dataset index travels with each row: `IndexedRows` hands the collator each row with its index in the dataset the
user gave (before any `invalid_rows="skip"` filtering) under `ROW_INDEX_KEY`; with `packing=True`, every row of every
pack does (`PackedRows` over `IndexedRows`). `FaultTolerantCollator` strips it, collates, and on a `RowError`:
- `invalid_rows="skip"`: drops that row, logs it and counts it (`skipped`), and collates the rest;
- `invalid_rows="raise"`: raises `TrainingRowError` naming the dataset row and how to skip such rows.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Any, Callable

import torch

from vlsft.collation.rendering import RowError
from vlsft.packing.plan import PackedRows
from vlsft.tokens import IGNORE_INDEX

# The standard logger, not accelerate's main-process one: each rank drops its own rows, so each rank says so (and a
# collate may run in a DataLoader worker process, where accelerate's state is not set up).
logger = logging.getLogger(__name__)

ROW_INDEX_KEY = "vlsft_row_index"
# In a batch some of whose rows were dropped: which places of the batch the sampler gave still hold a row (bool per
# place). The trainer puts each row's evaluation sums back at its place (`sums_at_batch_places`), zeros where a row was
# dropped, so every rank gathers as many rows as the others and accelerate's duplicates are dropped by place.
KEPT_ROWS_KEY = "vlsft_kept_rows"


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

    def __call__(self, items: list[dict[str, Any] | list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        # A pack (`packing=True`) is a list of rows: the packed collator lays out every row of the micro-batch end to
        # end whichever pack it came from, so the rows are handed to it flat, and a failing one is dropped alone.
        rows = [row for item in items for row in (item if isinstance(item, list) else [item])]
        indices = [row.get(ROW_INDEX_KEY) for row in rows]
        rows = [{k: v for k, v in row.items() if k != ROW_INDEX_KEY} for row in rows]
        places, total = list(range(len(rows))), len(rows)
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
                del rows[error.index], indices[error.index], places[error.index]
                continue
            self._fallback = batch
            if len(places) == total:
                return batch
            kept = torch.zeros(total, dtype=torch.bool)
            kept[places] = True
            return {**batch, KEPT_ROWS_KEY: kept}
        # Every row of the batch failed. The step still runs (every rank makes the same collective calls), on the
        # last good batch with nothing supervised: zero tokens, zero loss, zero gradient.
        if self._fallback is None:
            raise TrainingRowError(
                f"every row of the first {self.label} batch failed in the middle of training, and there is no good "
                "batch to stand in; fix the data (see the warnings above)."
            )
        fallback = {**self._fallback, "labels": torch.full_like(self._fallback["labels"], IGNORE_INDEX)}
        if fallback.get("label_weights") is not None:  # the step's divisor sums these: nothing may weigh here
            fallback["label_weights"] = torch.zeros_like(fallback["label_weights"])
        fallback[KEPT_ROWS_KEY] = torch.zeros(total, dtype=torch.bool)
        return fallback


def sums_at_batch_places(row_sums: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """Per-row sums of the rows collated, one per place of the batch the sampler gave (`kept`, the batch's
    `KEPT_ROWS_KEY`): zeros where a row was dropped. Unchanged when no row was dropped (`kept` None)."""
    if kept is None:
        return row_sums
    placed = row_sums.new_zeros(len(kept), row_sums.shape[1])
    if kept.any():  # else the batch is the stand-in of a failed one, whose rows are not the sampler's
        placed[kept.to(row_sums.device)] = row_sums
    return placed


class RowsNamedByIndex:
    """Mixin for a `Trainer` subclass (listed before it): while a dataloader is built, its dataset is seen as
    `IndexedRows` and its collator is a `FaultTolerantCollator`, so a row failing mid-run is skipped and counted
    (`invalid_rows="skip"`) or named by its index in the user's dataset.

    The trainer sets `_original_row_indices` (per dataset: None for train, else the eval name, the original index of
    each row validation kept) and `rows_skipped_in_training` (a `Counter`) before training.
    """

    @contextlib.contextmanager
    def _rows_named_by_index(self, attribute: str, entry: str | None, indices_key: str | None, label: str):
        """While a dataloader is built: the dataset at `self.<attribute>` (its `entry` when that is a dict) as
        `IndexedRows`, and the collator wrapped to skip or name a row that fails (`vlsft.data.training_rows`)."""
        original_datasets, original_collator = getattr(self, attribute), self.data_collator
        dataset = original_datasets[entry] if entry is not None else original_datasets
        if isinstance(dataset, PackedRows):  # packs of the same rows, each row carrying its index
            indexed = PackedRows(IndexedRows(dataset.dataset, self._original_row_indices.get(indices_key)), dataset.plan)
        else:
            indexed = IndexedRows(dataset, self._original_row_indices.get(indices_key))
        setattr(self, attribute, {**original_datasets, entry: indexed} if entry is not None else indexed)
        self.data_collator = FaultTolerantCollator(
            original_collator, label, self.args.invalid_rows, self.rows_skipped_in_training, self.args.validate_rows
        )
        try:
            yield
        finally:
            setattr(self, attribute, original_datasets)
            self.data_collator = original_collator

    def get_train_dataloader(self):
        if self.train_dataset is None or isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            return super().get_train_dataloader()
        with self._rows_named_by_index("train_dataset", None, None, "train dataset"):
            return super().get_train_dataloader()

    def _get_train_sampler(self, train_dataset=None):
        # Samplers read the dataset itself (`group_by_length` reads its `length` column): give them the dataset the
        # `IndexedRows` view wraps, whose positions are the same.
        return super()._get_train_sampler(train_dataset.dataset if isinstance(train_dataset, IndexedRows) else train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        return super()._get_eval_sampler(eval_dataset.dataset if isinstance(eval_dataset, IndexedRows) else eval_dataset)

    def get_eval_dataloader(self, eval_dataset=None):
        # `Trainer.evaluate` passes the trainer's single eval dataset itself, not None: it is the trainer's own.
        if eval_dataset is not None and eval_dataset is self.eval_dataset:
            eval_dataset = None
        # A dataset passed in directly is the caller's own; the trainer's eval datasets carry their indices.
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            return super().get_eval_dataloader(eval_dataset)
        if isinstance(eval_dataset, str):
            target, entry, key = self.eval_dataset[eval_dataset], eval_dataset, eval_dataset
        else:
            target, entry, key = self.eval_dataset, None, "eval"
        if target is None or isinstance(target, (dict, torch.utils.data.IterableDataset)):
            return super().get_eval_dataloader(eval_dataset)
        with self._rows_named_by_index("eval_dataset", entry, key, f"eval dataset '{key}'"):
            return super().get_eval_dataloader(eval_dataset)
