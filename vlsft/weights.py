"""Per-turn loss weights: which assistant turns train, and how much each counts.

An assistant message may carry `"weight": w` (a number >= 0; 0 keeps the turn as context only) or `"train": false`
(the same as weight 0). `train_on_turns="last"` trains only the final assistant turn. The trainer's loss over an
optimizer step is then `sum(w_t * nll_t) / sum(w_t)` over its supervised tokens t, each token carrying its turn's
weight (times `reasoning_weight` inside the turn's reasoning block).
"""

from __future__ import annotations

import math
from typing import Any

TRAIN_ON_TURNS = ("all", "last")


class TurnWeightError(ValueError):
    """A row's per-turn weights are malformed, or leave no assistant turn to train on; the message is the reason."""


def weight_key_problems(messages: list[dict[str, Any]]) -> list[str]:
    """Problems with the `weight` / `train` keys of a conversation's messages (a None value counts as absent: Arrow
    storage gives every message every key)."""
    problems = []
    for position, message in enumerate(messages):
        weight, train = message.get("weight"), message.get("train")
        if weight is None and train is None:
            continue
        role = message.get("role")
        if role != "assistant":
            keys = " and ".join(f"'{k}'" for k in ("weight", "train") if message.get(k) is not None)
            problems.append(f"message {position} is a {role!r} message with {keys}; only assistant turns are trained")
            continue
        if weight is not None and (
            isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0
        ):
            problems.append(f"message {position} has weight {weight!r}; a weight is a finite number >= 0")
        if train is not None and not isinstance(train, bool):
            problems.append(f"message {position} has train {train!r}; train is true or false")
        elif train is False and weight is not None and not isinstance(weight, bool) and weight != 0:
            problems.append(f"message {position} has train false and weight {weight!r}; set one of them")
    return problems


def turn_weights(messages: list[dict[str, Any]], train_on_turns: str = "all") -> list[float]:
    """The weight of each assistant turn, in order. Raises `TurnWeightError` for malformed keys or when no turn is
    left to train on."""
    problems = weight_key_problems(messages)
    if problems:
        raise TurnWeightError("; ".join(problems))
    weights = []
    for message in messages:
        if message.get("role") != "assistant":
            continue
        weight = message.get("weight")
        weights.append(0.0 if message.get("train") is False else 1.0 if weight is None else float(weight))
    if train_on_turns == "last":
        weights = [0.0] * (len(weights) - 1) + weights[-1:]
    if weights and not any(w > 0 for w in weights):
        raise TurnWeightError("no trained assistant turn" + (" (train_on_turns='last')" if train_on_turns == "last" else ""))
    return weights
