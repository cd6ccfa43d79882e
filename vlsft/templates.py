"""Chat templates: the template vlsft trains each family with, and how a processor's template is matched.

Most families train on their stock template, masked by the incremental-rendering rule (`vlsft.generic_masks`).
vlsft ships a generation-marked copy (`vlsft/templates/`) only where the stock template rewrites history the rule
cannot mask or cannot express what training needs (Gemma 4's inlined tool responses; `reasoning_history: keep` of
the thinking templates). Such a copy renders exactly what the stock template renders, with `{% generation %}`
markers around what the rule supervises: each assistant turn through its end-of-turn token
(`tests/test_generic_reference.py` holds every copy to the rule). The families are in `vlsft.families.FAMILIES`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from vlsft.families import FAMILIES, FEATURES

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@lru_cache
def stock_template(family: str) -> str:
    """The stock chat template of a family, as TRL ships it (read, not copied, so it stays TRL's)."""
    return resources.files("trl").joinpath("chat_templates", f"{FAMILIES[family].stock_template}.jinja").read_text()


@lru_cache
def training_template(family: str) -> str:
    """The template vlsft trains a family with: its generation-marked copy (package data) where it has one, else the
    stock template, which the collator masks by the incremental-rendering rule."""
    marked = FAMILIES[family].training_template
    if marked is None:
        return stock_template(family)
    return resources.files("vlsft").joinpath("templates", marked).read_text()


class UnsupportedConversationError(ValueError):
    """A conversation uses a feature (tools, tool calls, tool messages) that the family's stock template cannot
    express; rendering it anyway would silently drop that part."""


def conversation_features(messages: list[dict], tools: list | None) -> dict[str, list[int]]:
    """The FEATURES a conversation uses, each with the positions of the messages that use it."""
    used: dict[str, list[int]] = {}
    if tools:
        used["tools"] = []
    for position, message in enumerate(messages):
        if message.get("tool_calls"):
            used.setdefault("tool_calls", []).append(position)
        if message.get("role") == "tool":
            used.setdefault("tool_messages", []).append(position)
    return used


def check_expressible(family: str, messages: list[dict], tools: list | None = None) -> None:
    """Raise `UnsupportedConversationError` if the conversation uses a feature `family`'s template cannot express,
    naming the family, the feature and the messages."""
    spec = FAMILIES[family]
    used = conversation_features(messages, tools)
    missing = [(feature, positions) for feature, positions in used.items() if feature in spec.unsupported]
    if not missing:
        return
    described = "; ".join(
        FEATURES[feature] + (f" (message {', '.join(map(str, positions))})" if positions else "")
        for feature, positions in missing
    )
    missing_features = {feature for feature, _ in missing}
    capable = ", ".join(name for name, other in FAMILIES.items() if not missing_features & set(other.unsupported))
    raise UnsupportedConversationError(
        f"{spec.name} ({spec.display_name}): the stock chat template cannot express {described}; rendered, they "
        f"would be silently dropped or malformed. Train this on a family whose template can ({capable}), remove "
        "that part of the conversation, or pass your own generation-marked template with `chat_template_path`."
    )


def check_media(family: str, row: dict, messages: list[dict]) -> None:
    """Raise `UnsupportedConversationError` if the row carries media of a type `family` renders but vlsft does not
    collate yet (Gemma 4's audio and video), naming the type and the messages."""
    kinds = FAMILIES[family].unsupported_media
    if not kinds:
        return
    found: dict[str, list[int]] = {}
    for position, message in enumerate(messages):
        content = message.get("content")
        for item in content if isinstance(content, list) else ():
            if isinstance(item, dict) and item.get("type") in kinds:
                found.setdefault(item["type"], []).append(position)
    columns = [key for key in ("audio", "audios", "video", "videos") if row.get(key)]
    if not found and not columns:
        return
    described = "; ".join(
        [f"{kind} (message {', '.join(map(str, positions))})" for kind, positions in found.items()]
        + [f"a `{column}` column" for column in columns]
    )
    why = []
    if any("audio" in kind for kind in [*found, *columns]):
        why.append("audio is out of scope")
    if any("video" in kind for kind in [*found, *columns]):
        why.append("video is not collated for this family yet")
    display = FAMILIES[family].display_name
    raise UnsupportedConversationError(
        f"{family} ({display}): the row has {described}. vlsft trains {display} on text and images only: "
        f"{' and '.join(why)}. Drop those parts of the row (a video can be given as its frames, as images), or skip "
        "such rows with `invalid_rows='skip'`."
    )


def split_inline_reasoning(messages: list[dict], opening: str, closing: str) -> list[dict]:
    """Assistant messages whose text opens with the family's reasoning block (Gemma 4: `<|channel>thought\\n ...
    <channel|>`), as the model generated it, with that block moved to `reasoning_content`: the stock template renders
    reasoning only from that field (Gemma 4's strips an inline block from the content). A message that already has
    `reasoning_content` or `reasoning` is left as it is. The newline before the closing marker is the template's, so
    it is not kept twice."""
    out = []
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else None
        if isinstance(content, list) and content and content[0].get("type") == "text":
            text = content[0].get("text")
        if (
            message.get("role") != "assistant"
            or message.get("reasoning_content") or message.get("reasoning")
            or not isinstance(text, str)
            or not text.lstrip().startswith(opening)
            or closing not in text
        ):
            out.append(message)
            continue
        reasoning, answer = text.lstrip()[len(opening) :].split(closing, 1)
        reasoning = reasoning.removesuffix("\n")
        if isinstance(content, str):
            content = answer
        else:
            content = [{**content[0], "text": answer}, *content[1:]]
        out.append({**message, "content": content, "reasoning_content": reasoning})
    return out


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and _GENERATION_TAG.search(template) is not None


def _normalize(template: str) -> str:
    # Hub copies of a template differ from TRL's in trailing whitespace only.
    return template.strip()


def detect_family(template: str | None) -> str | None:
    """The family whose stock or training template this is, or None."""
    if not template:
        return None
    for name in FAMILIES:
        if _normalize(template) in (_normalize(stock_template(name)), _normalize(training_template(name))):
            return name
    return None


def resolve_training_template(template: str | None) -> str:
    """The template to train with: ours for a known stock template, the given one if it already has
    `{% generation %}` markers, else the stock template itself, which the collator masks by the
    incremental-rendering rule (`vlsft.generic_masks`); an error only when there is no template at all."""
    family = detect_family(template)
    if family is not None:
        return training_template(family)
    if template:
        return template
    raise ValueError(
        "assistant_only_loss=True needs the processor's chat template, and this processor has none. Pass one with "
        "`VLSFTConfig(chat_template_path='my.jinja')` (or `training.chat_template_path` in a recipe)."
    )
