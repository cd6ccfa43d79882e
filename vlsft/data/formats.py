"""Conversation formats other than TRL's `messages`: ShareGPT and LLaVA, converted on load (recipe key `format:` on
a data source, or `convert_conversations` from Python).

Both store `conversations`, a list of turns `{"from": "human" | "gpt" | "system" | ..., "value": "text"}`; LLaVA marks
where each image goes with `<image>` in the text and names the image in an `image` column (ShareGPT datasets use
`images`). A converted row has `messages` in TRL's conversational format, each `<image>` / `<video>` marker turned, in
place, into an image / video placeholder (`{"type": "image"}`, `{"type": "video"}`; the files are in the `images` /
`videos` columns). A turn's `weight` and `train` keys (axolotl / OpenHermes style) are carried over to its message,
where they mean what they mean on a native message (`vlsft.weights`) and are checked the same way. A turn that cannot
be mapped does not stop the load: the row gets `CONVERSION_ERROR` naming the field, and validation reports it as that
row's reason (`row 4: conversations[1].from is 'bot' ...`).
"""

from __future__ import annotations

import re
from typing import Any

FORMATS = ("messages", "sharegpt", "llava")
CONVERSATION_COLUMN = "conversations"
CONVERSION_ERROR = "vlsft_conversion_error"
IMAGE_MARKER = "<image>"
VIDEO_MARKER = "<video>"
MARKERS = {IMAGE_MARKER: "image", VIDEO_MARKER: "video"}
_MARKER_SPLIT = re.compile("(" + "|".join(re.escape(marker) for marker in MARKERS) + ")")
# Per-turn keys a message keeps: their meaning and checks are those of native messages (`vlsft.weights`).
CARRIED_KEYS = ("weight", "train")
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}


def convert_row(conversations: Any) -> tuple[list[dict[str, Any]], str]:
    """(messages, "") for one row's `conversations`, or ([], the reason naming the field) when a turn cannot be
    mapped."""
    if not isinstance(conversations, list) or not conversations:
        return [], f"`{CONVERSATION_COLUMN}` must be a non-empty list of turns, got {type(conversations).__name__}"
    messages = []
    for position, turn in enumerate(conversations):
        where = f"{CONVERSATION_COLUMN}[{position}]"
        if not isinstance(turn, dict):
            return [], f"{where} must be a mapping with `from` and `value`, got {type(turn).__name__}"
        speaker, value = turn.get("from"), turn.get("value")
        role = ROLES.get(speaker.strip().lower()) if isinstance(speaker, str) else None
        if role is None:
            return [], f"{where}.from is {speaker!r}; the known speakers are {', '.join(ROLES)}"
        if not isinstance(value, str):
            return [], f"{where}.value must be a string, got {type(value).__name__}"
        # Every key present is copied, None included: rows read from Arrow all have the same keys, so the converted
        # messages do too.
        carried = {key: turn[key] for key in CARRIED_KEYS if key in turn}
        messages.append({"role": role, "content": _content(value), **carried})
    return messages, ""


def _content(text: str) -> list[dict[str, Any]]:
    """Text with `<image>` / `<video>` markers as content items, each marker a placeholder where it stood. The newline
    LLaVA writes between a marker and the text (`<image>\nWhat is ...`) is dropped: the template separates them."""
    parts = _MARKER_SPLIT.split(text)  # text, marker, text, marker, ..., text
    items: list[dict[str, Any]] = []
    for number, part in enumerate(parts):
        if number % 2:
            items.append({"type": MARKERS[part], "text": None})
            continue
        if number > 0:
            part = part.removeprefix("\n")
        if number < len(parts) - 1:
            part = part.removesuffix("\n")
        if part:
            items.append({"type": "text", "text": part})
    return items or [{"type": "text", "text": ""}]


def convert_batch(batch: dict[str, list]) -> dict[str, list]:
    """`Dataset.map(batched=True)` function: `conversations` -> `messages` and `CONVERSION_ERROR`."""
    converted = [convert_row(conversations) for conversations in batch[CONVERSATION_COLUMN]]
    return {"messages": [messages for messages, _ in converted], CONVERSION_ERROR: [error for _, error in converted]}


def convert_conversations(dataset, format: str = "sharegpt"):
    """A `datasets.Dataset` in ShareGPT or LLaVA form (`conversations` of `from`/`value` turns) with `messages` in
    TRL's format instead. Images stay in their `image` / `images` column."""
    if format not in ("sharegpt", "llava"):
        raise ValueError(f"`format` must be 'sharegpt' or 'llava' to convert, got {format!r}")
    if CONVERSATION_COLUMN not in dataset.column_names:
        raise ValueError(
            f"format {format!r} reads a `{CONVERSATION_COLUMN}` column, and the dataset has none (columns: "
            f"{dataset.column_names}); map one with `columns: {{{CONVERSATION_COLUMN}: <column>}}` in a recipe, or "
            f"`dataset.rename_column(<column>, {CONVERSATION_COLUMN!r})` in Python"
        )
    drop = [CONVERSATION_COLUMN] + [c for c in ("messages", CONVERSION_ERROR) if c in dataset.column_names]
    return dataset.map(convert_batch, batched=True, remove_columns=drop, desc=f"converting {format} conversations")


def looks_like(column_names: list[str], first_row: dict[str, Any] | None) -> str | None:
    """'llava' or 'sharegpt' when a dataset without `messages` is in one of those forms, else None."""
    if CONVERSATION_COLUMN not in column_names:
        return None
    turns = (first_row or {}).get(CONVERSATION_COLUMN)
    first = turns[0] if isinstance(turns, list) and turns else None
    if not isinstance(first, dict) or "from" not in first:
        return "sharegpt"
    text = " ".join(str(t.get("value")) for t in turns if isinstance(t, dict))
    return "llava" if any(m in text for m in MARKERS) or "image" in column_names else "sharegpt"


def missing_messages_message(column_names: list[str], first_row: dict[str, Any] | None, where: str) -> str:
    """The error for a dataset without `messages`: which format it looks like and what converts it."""
    form = looks_like(column_names, first_row)
    if form is not None:
        shape = "LLaVA" if form == "llava" else "ShareGPT"
        return (
            f"{where} has no `messages` column; it looks like the {shape} format (`{CONVERSATION_COLUMN}` of "
            f"`from`/`value` turns). Convert it on load with the data source key `format: {form}` in a recipe, or "
            f"`vlsft.data.formats.convert_conversations(dataset, {form!r})` in Python."
        )
    return (
        f"{where} has no `messages` column (columns: {column_names}). vlsft trains on TRL's conversational format "
        "(`messages`: a list of {role, content}); map a column with `columns: {messages: <column>}`, or convert a "
        "ShareGPT/LLaVA dataset with `format: sharegpt` / `format: llava`."
    )
