"""Per-turn loss weights: which assistant turns train, and how much each counts.

An assistant message may carry `"weight": w` (0, which keeps the turn as context only, or a number from `MIN_WEIGHT`
to `MAX_WEIGHT`) or `"train": false` (the same as weight 0); `train: true` with weight 0, or `train: false` with a
weight above 0, contradict each other and are refused. Another message may say only that it is not trained (weight 0,
`train: false`), as ShareGPT data marking every turn does. `train_on_turns="last"` trains only the final assistant turn.
The trainer's loss over an optimizer step is then `sum(w_t * nll_t) / sum(w_t)` over its supervised tokens t, each
token carrying its turn's weight (times `reasoning_weight` inside the turn's reasoning block).

The range keeps every weight a normal float32 (token weights are float32) with room for a step's summed weight: a
weight like 1e39 overflows float32 and 1e-50 rounds to 0. Weights are relative, so the range limits no ratio worth
training with. With `assistant_only_loss=False` every token is supervised at weight 1, so a key that asks for
something else (`train: false`, a weight other than 1) is refused rather than ignored.
"""

from __future__ import annotations

from typing import Any

TRAIN_ON_TURNS = ("all", "last")


class TurnWeightError(ValueError):
    """A row's per-turn weights are malformed, or leave no assistant turn to train on; the message is the reason."""


MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
WEIGHT_RANGE = f"a weight is 0 (context only) or a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}"


def weight_key_problems(messages: list[dict[str, Any]], assistant_only_loss: bool = True) -> list[str]:
    """Problems with the `weight` / `train` keys of a conversation's messages (a None value counts as absent: Arrow
    storage gives every message every key). With `assistant_only_loss=False`, a key that would select or weigh a
    turn is a problem too: that loss supervises every token at weight 1."""
    problems = []
    for position, message in enumerate(messages):
        weight, train = message.get("weight"), message.get("train")
        if weight is None and train is None:
            continue
        role = message.get("role")
        malformed = [f"message {position} has weight {weight!r}; {WEIGHT_RANGE}"] if weight is not None and not (
            is_valid_weight(weight)
        ) else []
        if train is not None and not isinstance(train, bool):
            malformed.append(f"message {position} has train {train!r}; train is true or false")
        if malformed:
            problems.extend(malformed)
            continue
        if train is not None and weight is not None and train != (weight != 0):
            meaning = "context only" if weight == 0 else "trained"
            problems.append(
                f"message {position} has train {str(train).lower()} and weight {weight!r}, which contradict each other "
                f"(weight {weight!r} means {meaning}); keep one of the two keys"
            )
        elif not assistant_only_loss and (train is False or weight not in (None, 1)):
            key = "train false" if train is False else f"weight {weight!r}"
            problems.append(
                f"message {position} has {key}, but with `assistant_only_loss: false` every token trains at weight 1; "
                "set `assistant_only_loss: true` (the default) to weigh turns, or remove the key"
            )
        elif assistant_only_loss and role != "assistant" and train is not False and weight != 0:
            keys = " and ".join(f"'{k}'" for k in ("weight", "train") if message.get(k) is not None)
            problems.append(f"message {position} is a {role!r} message with {keys}; only assistant turns are trained")
    return problems


def is_valid_weight(weight: Any) -> bool:
    """0, or a real number (not a bool) from `MIN_WEIGHT` to `MAX_WEIGHT` (NaN and infinities are not)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        return False
    return weight == 0 or MIN_WEIGHT <= weight <= MAX_WEIGHT


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
