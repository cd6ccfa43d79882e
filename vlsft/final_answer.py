"""The final answer of a conversation, on both sides of the answer-accuracy comparison: the reference (the text of
the last assistant turn, before which the prompt stops) and the generated ids that count as the answer (up to the end
of the turn, after the reasoning block where the family has one), both normalised alike."""

from __future__ import annotations

import re
import string
from typing import Any

from vlsft.collator import VisionChatCollator
from vlsft.data.rows import count_image_placeholders, normalize_messages, row_images

_PUNCTUATION = string.punctuation + " \t\n"


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no punctuation or whitespace at either end."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(_PUNCTUATION)


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(item.get("text") or "" for item in content or [] if item.get("type", "text") == "text")


def split_final_answer(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any], str] | None:
    """(prompt messages, their images, reference answer) of a row, or None if its last assistant turn has no text."""
    messages = normalize_messages(row["messages"])
    last = max((i for i, message in enumerate(messages) if message["role"] == "assistant"), default=None)
    if last is None:
        return None
    reference = _message_text(messages[last])
    if not reference.strip():
        return None
    prompt = messages[:last]
    images = row_images(row)[: count_image_placeholders(prompt)]
    return prompt, images, reference


def final_answer_ids(
    prompt: list[int], generated: list[int], stop_ids: set[int], reasoning_ids: tuple[int, int] | None
) -> list[int]:
    """The generated ids of the final answer: up to the end of the turn, and after the reasoning block where the
    family has one (the block opens in the generation prompt or in the generated text; an answer that never closes
    it has no final answer)."""
    end = next((i for i, token in enumerate(generated) if token in stop_ids), len(generated))
    generated = generated[:end]
    if reasoning_ids is None:
        return generated
    opening, closing = reasoning_ids
    ids = prompt + generated
    last_open = max((i for i, token in enumerate(ids) if token == opening), default=-1)
    last_close = max((i for i, token in enumerate(ids) if token == closing), default=-1)
    if last_open > last_close:
        return []
    return ids[max(last_close + 1, len(prompt)) :]


def reasoning_ids(collator: VisionChatCollator) -> tuple[int, int] | None:
    """The ids of the family's reasoning markers, when each is one token of the tokenizer."""
    markers = collator.family.reasoning_markers
    tokenizer = collator.processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(markers)) if markers else []
    if not ids or any(i is None or i == tokenizer.unk_token_id for i in ids):
        return None
    return ids[0], ids[1]
