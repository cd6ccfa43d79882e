"""Row validation before the first training step: every bad row is found up front, and named by its index.

A row is checked with the training collator itself (its template, tokenizer, image loading, `max_length` and mask),
so validation and training agree on what a row is:
- its messages have known roles and well-formed content, and at least one assistant turn;
- per-turn `weight` / `train` keys sit on assistant messages only, are numbers >= 0 / booleans, and leave at least one
  trained assistant turn (with `train_on_turns`);
- tool calls have a name and JSON-object arguments, and every tool message answers a call;
- no message text spells out a control token of the tokenizer (unless `escape_control_tokens`);
- every image loads and fully decodes, and there are as many images as image placeholders (in user, assistant and
  tool messages alike), all of which the chat template renders;
- with `max_length`, truncation cuts no image token, leaves at least one supervised token and keeps the final
  end-of-turn token (unless `allow_truncated_end_of_turn`); rows cut and supervised tokens removed are reported.

For the Qwen-VL families, image token counts come from each image's size through the image processor's own resize
rule (`get_number_of_image_patches`), so no pixel tensor is built; other collators are run on the row itself. No
model runs either way. A `datasets.Dataset` is checked with
`Dataset.map` (parallel with `dataset_num_proc`, cached by fingerprint for datasets stored on disk, the fingerprint
including each image file's size and modification time); an
`IterableDataset` cannot be checked up front and is left to fail in training.

The modules: `message_checks` (the conversation's shape), `media_checks` (images and videos), `row_checker` (one
row's verdict, tokens counted), `validation_cache` (the fingerprint under which `Dataset.map` caches verdicts),
`validation_report` (the error and the warnings), and this one, which checks whole datasets for the trainer.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset, IterableDataset

from vlsft.collator import VisionChatCollator
from vlsft.data.formats import missing_messages_message
from vlsft.data.row_checker import RowChecker
from vlsft.data.validation_cache import validation_fingerprint
from vlsft.data.validation_report import (
    InvalidRowsError,
    RowProblem,
    ValidationResult,
    skip_summary,
    truncation_summary,
)

# The public API of row validation (`RowChecker` is defined in `vlsft.data.row_checker`, `InvalidRowsError` in
# `vlsft.data.validation_report`).
__all__ = ["InvalidRowsError", "RowChecker", "ValidationResult", "validate_datasets", "validate_rows"]

logger = logging.getLogger(__name__)


def validate_rows(
    dataset: Dataset | list[dict[str, Any]],
    collator: VisionChatCollator,
    *,
    name: str | None = None,
    num_proc: int | None = None,
    batch_size: int = 256,
    allow_truncated_end_of_turn: bool = False,
) -> ValidationResult:
    """Check every row of `dataset` as `collator` would train on it. `name` is None for a train dataset, else the
    eval dataset's name (it only labels the problems). Returns every problem and what truncation cuts; raises
    nothing."""
    if isinstance(dataset, Dataset) and "messages" not in dataset.column_names:
        where = "the train dataset" if name is None else f"eval dataset '{name}'"
        raise ValueError(missing_messages_message(dataset.column_names, dataset[0] if len(dataset) else None, where))
    if isinstance(dataset, Dataset):
        checker = RowChecker(collator, dataset.features, allow_truncated_end_of_turn=allow_truncated_end_of_turn)
        label = "train" if name is None else f"eval '{name}'"
        verdicts = dataset.with_format("arrow").map(
            checker.map_batch,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > batch_size else None,
            remove_columns=dataset.column_names,
            new_fingerprint=validation_fingerprint(dataset, collator, allow_truncated_end_of_turn),
            desc=f"vlsft: validating {label} rows",
        )
        table = verdicts.with_format("arrow")[:]
        reasons = table.column("reason").to_pylist()
        lengths = table.column("num_tokens").to_pylist()
        removed = table.column("num_supervised_removed").to_pylist()
    else:
        checker = RowChecker(collator, allow_truncated_end_of_turn=allow_truncated_end_of_turn)
        reasons, lengths, removed = [], [], []
        for start in range(0, len(dataset), batch_size):
            for verdict in checker.check(list(dataset[start : start + batch_size])):
                reasons.append(verdict.reason)
                lengths.append(verdict.num_tokens)
                removed.append(verdict.num_supervised_removed)
    problems = [RowProblem(name, index, reason) for index, reason in enumerate(reasons) if reason]
    max_length = collator.max_length
    truncated = sum(1 for length in lengths if max_length is not None and length > max_length)
    return ValidationResult(len(reasons), problems, truncated, sum(removed))


def validate_datasets(train_dataset, eval_dataset, collator: VisionChatCollator, args, kept_indices: dict | None = None):
    """The trainer's check before training: validate the train dataset and every eval dataset, then raise
    `InvalidRowsError` naming the bad rows (`args.invalid_rows == "raise"`) or drop them and log how many and why
    (`"skip"`). Returns `(train_dataset, eval_dataset)`, filtered in skip mode. A `kept_indices` dict receives, for
    each filtered dataset (None for train, else the eval name), the original index of each row kept."""
    if not getattr(args, "validate_rows", True):
        return train_dataset, eval_dataset
    named = {None: train_dataset} if train_dataset is not None else {}
    if isinstance(eval_dataset, dict):
        named.update(eval_dataset)
    elif eval_dataset is not None:
        named["eval"] = eval_dataset

    results: dict[str | None, ValidationResult] = {}
    allow_cut = getattr(args, "allow_truncated_end_of_turn", False)
    with args.main_process_first(desc="vlsft row validation"):
        for name, dataset in named.items():
            label = "train dataset" if name is None else f"eval dataset '{name}'"
            if isinstance(dataset, IterableDataset):
                logger.warning(
                    f"The {label} is an IterableDataset, whose rows cannot be checked before training: a bad row "
                    "will fail in the middle of training. Load it as a `datasets.Dataset` to have it validated."
                )
                continue
            if not isinstance(dataset, Dataset):
                logger.warning(f"The {label} is a {type(dataset).__name__}, not a `datasets.Dataset`; not validated.")
                continue
            results[name] = result = validate_rows(
                dataset, collator, name=name, num_proc=args.dataset_num_proc, allow_truncated_end_of_turn=allow_cut
            )
            if result.truncated_rows:
                logger.warning(truncation_summary(label, result, collator.max_length))

    problems = [problem for result in results.values() for problem in result.problems]
    if not problems:
        return train_dataset, eval_dataset
    checked = {("train" if name is None else f"eval '{name}'"): result.num_rows for name, result in results.items()}
    if args.invalid_rows != "skip":
        raise InvalidRowsError(problems, checked)

    filtered = {}
    for name, result in results.items():
        if not result.problems:
            continue
        label = "train" if name is None else f"eval '{name}'"
        if len(result.problems) == result.num_rows:
            raise InvalidRowsError(result.problems, {label: result.num_rows})
        bad = set(result.bad_indices)
        kept = [i for i in range(result.num_rows) if i not in bad]
        filtered[name] = named[name].select(kept)
        if kept_indices is not None:
            kept_indices[name] = kept
        logger.warning(skip_summary(label, result))
    train_dataset = filtered.get(None, train_dataset)
    if isinstance(eval_dataset, dict):
        eval_dataset = {name: filtered.get(name, dataset) for name, dataset in eval_dataset.items()}
    elif eval_dataset is not None:
        eval_dataset = filtered.get("eval", eval_dataset)
    return train_dataset, eval_dataset
