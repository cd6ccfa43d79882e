"""What validation reports: the problems of each invalid row, the error that lists them (`InvalidRowsError`), and
the warnings when rows are truncated or skipped (grouped by kind of problem)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

# Rows listed in an error before the rest are only counted.
MAX_LISTED_ROWS = 20


@dataclass(frozen=True)
class RowProblem:
    """One invalid row: `dataset` is None for the train dataset, else the eval dataset's name."""

    dataset: str | None
    index: int
    reason: str

    def __str__(self) -> str:
        where = f"row {self.index}" if self.dataset is None else f"eval dataset '{self.dataset}' row {self.index}"
        return f"{where}: {self.reason}"


class InvalidRowsError(ValueError):
    """Rows that cannot be trained on, each as `row N: reason` (N counts from 0 in its dataset).

    `problems` holds every `RowProblem`, including those the message leaves out.
    """

    def __init__(self, problems: list[RowProblem], checked: dict[str, int] | None = None):
        self.problems = list(problems)
        listed = "\n".join(f"  {problem}" for problem in self.problems[:MAX_LISTED_ROWS])
        rest = len(self.problems) - MAX_LISTED_ROWS
        if rest > 0:
            listed += f"\n  ... and {rest} more invalid row(s)"
        scope = ""
        if checked:
            scope = " (checked " + ", ".join(f"{count} {name} rows" for name, count in checked.items()) + ")"
        super().__init__(
            f"{len(self.problems)} row(s) cannot be trained on{scope}:\n{listed}\n"
            "Fix or remove these rows, or drop them at load time with `VLSFTConfig(invalid_rows='skip')` "
            "(`invalid_rows: skip` in a recipe's training section). `validate_rows=False` turns this check off."
        )


@dataclass
class ValidationResult:
    num_rows: int
    problems: list[RowProblem]
    truncated_rows: int = 0  # rows longer than `max_length` (valid or not)
    supervised_tokens_removed: int = 0  # supervised tokens truncation cuts from them

    @property
    def bad_indices(self) -> list[int]:
        return [problem.index for problem in self.problems]



def truncation_summary(label: str, result: ValidationResult, max_length: int | None) -> str:
    return (
        f"max_length={max_length} truncates {result.truncated_rows} of {result.num_rows} {label} rows, removing "
        f"{result.supervised_tokens_removed} supervised token(s). Raise `max_length` to train on them whole."
    )


def skip_summary(label: str, result: ValidationResult) -> str:
    kinds = Counter(_reason_kind(problem.reason) for problem in result.problems)
    listed = "\n".join(f"  {problem}" for problem in result.problems[:MAX_LISTED_ROWS])
    rest = len(result.problems) - MAX_LISTED_ROWS
    if rest > 0:
        listed += f"\n  ... and {rest} more"
    by_kind = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    return (
        f"invalid_rows='skip': dropped {len(result.problems)} of {result.num_rows} {label} rows ({by_kind}), "
        f"training on the other {result.num_rows - len(result.problems)}:\n{listed}"
    )


def _reason_kind(reason: str) -> str:
    """A short category of a reason, for the skip summary."""
    for marker, kind in (
        ("`videos` must be a list", "videos not a list"),
        ("cuts video tokens", "video tokens truncated"),
        ("cuts image and video tokens", "image and video tokens truncated"),
        ("video placeholder(s) but", "video/placeholder mismatch"),
        ("video placeholder(s)", "unrendered video"),
        ("frame(s) sampled", "too few video frames"),
        ("video ", "bad video"),
        (" not found: ", "missing image"),
        ("cannot be decoded", "corrupt image"),
        ("cannot be processed", "unusable image"),
        ("image placeholder(s) but", "image/placeholder mismatch"),
        ("renders", "unrendered image"),
        ("spells out the image token", "literal image token"),
        ("no assistant turn", "no assistant turn"),
        ("no trained assistant turn", "no trained assistant turn"),
        ("only assistant turns are trained", "weight on a non-assistant message"),
        (" has weight ", "bad turn weight"),
        (" has train ", "bad turn weight"),
        ("cuts image tokens", "image tokens truncated"),
        ("cuts the final end-of-turn", "end-of-turn truncated"),
        ("contains the control token", "control token in text"),
        ("no preceding tool call", "orphan tool message"),
        ("`arguments`", "malformed tool call"),
        ("is a remote image", "remote image"),
        ("conversations", "unmapped ShareGPT/LLaVA turn"),
        ("`images` must be a list", "images not a list"),
        ("supervised token", "no supervised token"),
    ):
        if marker in reason:
            return kind
    return "malformed messages"

