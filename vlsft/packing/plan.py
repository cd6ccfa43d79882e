"""Planning packs: every row's length (image tokens included, counted as validation counts them) and the rows
placed best-fit decreasing into packs of at most `max_length` tokens."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Any

import torch

from vlsft.collator import VisionChatCollator
from vlsft.data.row_checker import RowChecker


def plan_packs(lengths: Sequence[int], budget: int, seed: int = 0) -> list[list[int]]:
    """Best-fit decreasing: row indices grouped into packs of at most `budget` tokens (a row longer than the budget
    counts as `budget`: the collator truncates it). Rows are placed longest first, each into the pack it fills
    most tightly, else into a new pack; rows of equal length are taken in an order drawn from `seed`, so a plan is
    the same for the same seed. Packs are returned in creation order, rows inside a pack in index order."""
    if budget < 1:
        raise ValueError(f"the pack budget (max_length) must be >= 1, got {budget}")
    tie_break = list(range(len(lengths)))
    random.Random(seed).shuffle(tie_break)
    order = sorted(range(len(lengths)), key=lambda i: (-min(lengths[i], budget), tie_break[i]))
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, pack index), sorted: the tightest fit is found by bisection
    for index in order:
        length = min(lengths[index], budget)
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            room, pack = free.pop(slot)
        else:
            room, pack = budget, len(packs)
            packs.append([])
        packs[pack].append(index)
        bisect.insort(free, (room - length, pack))
    return [sorted(pack) for pack in packs]


def row_lengths(
    dataset,
    collator: VisionChatCollator,
    batch_size: int = 256,
    allow_truncated_end_of_turn: bool = False,
    original_indices: Sequence[int] | None = None,
) -> list[int]:
    """Every row's token count with image tokens expanded, before truncation, as validation counts it (the training
    collator's own rendering and tokenization; image token counts from the image sizes where the family allows).
    The rows are judged by validation's own rule, `allow_truncated_end_of_turn` included: a row validation let
    through is never refused here. A row that fails is named by its index in the user's dataset
    (`original_indices[i]` for the dataset's row i, when validation dropped rows before)."""
    checker = RowChecker(
        collator, getattr(dataset, "features", None), allow_truncated_end_of_turn=allow_truncated_end_of_turn
    )
    lengths = []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for offset, verdict in enumerate(checker.check(rows)):
            if verdict.reason:
                index = start + offset if original_indices is None else original_indices[start + offset]
                raise ValueError(f"train dataset row {index} cannot be packed: {verdict.reason}")
            lengths.append(verdict.num_tokens)
    return lengths


class PackedRows(torch.utils.data.Dataset):
    """A dataset whose items are packs: lists of the rows of `dataset` that `plan` groups together."""

    def __init__(self, dataset, plan: list[list[int]]):
        self.dataset = dataset
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        return [self.dataset[i] for i in self.plan[index]]


def pack_dataset(
    dataset,
    collator: VisionChatCollator,
    budget: int,
    seed: int,
    allow_truncated_end_of_turn: bool = False,
    original_indices: Sequence[int] | None = None,
) -> PackedRows:
    """`dataset` planned into packs of at most `budget` tokens (see `row_lengths` for the other arguments)."""
    lengths = row_lengths(
        dataset, collator, allow_truncated_end_of_turn=allow_truncated_end_of_turn, original_indices=original_indices
    )
    return PackedRows(dataset, plan_packs(lengths, budget, seed))

