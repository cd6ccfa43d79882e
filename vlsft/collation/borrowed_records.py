"""A family record borrowed by another family's processor: the processor ships the record's template (Qwen2-VL ships
Qwen2.5-VL's, Cosmos 3 Edge Qwen3-VL's), so the record trains it, and its images expand as the record expands them.
The record's video expansion, though, is written for its own processor: a processor that replaces its media
placeholders its own way expands a video otherwise, and such rows are refused rather than trained on other tokens."""

from __future__ import annotations

from transformers import ProcessorMixin

from vlsft.families import FAMILIES
from vlsft.templates import UnsupportedConversationError


def borrowed_video_refusal(family: str, processor) -> str | None:
    """Why `family`'s record cannot collate `processor`'s videos, or None where it can: the processor is of the
    record's class, or it replaces placeholders as `ProcessorMixin` does (Qwen2-VL's: the record's expansion is its
    own). Cosmos 3 Edge's processor overrides `get_text_with_replacements` to replace the template's whole
    `<|vision_start|><|video_pad|><|vision_end|>` with timestamped frames, where Qwen3-VL's keeps the wrapper."""
    record = FAMILIES[family]
    if record.processor_class in {cls.__name__ for cls in type(processor).__mro__}:
        return None
    if type(processor).get_text_with_replacements is ProcessorMixin.get_text_with_replacements:
        return None
    return (
        f"vlsft trains {type(processor).__name__} through the {family} record (its template), whose video expansion "
        f"is {record.processor_class}'s, and {type(processor).__name__} expands videos its own way: it is trained on "
        "text and images only; drop the video (it can be given as its frames, as images) or skip such rows with "
        "`invalid_rows='skip'`"
    )


def refuse_borrowed_videos(reason: str, row: dict, messages: list[dict]) -> None:
    """Raise `UnsupportedConversationError` with `reason` for a row with a video item (naming the message) or a
    `videos` column."""
    for position, message in enumerate(messages):
        content = message.get("content")
        if any(isinstance(item, dict) and item.get("type") == "video" for item in content if isinstance(content, list)):
            raise UnsupportedConversationError(f"message {position} has a 'video' item: {reason}")
    for column in ("video", "videos"):
        if row.get(column):
            raise UnsupportedConversationError(f"the row has a `{column}` column: {reason}")
