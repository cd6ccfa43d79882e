"""Chat templates: the generation-marked training templates vlsft ships, and how a processor's template is matched.

A training template renders exactly what the stock template renders, with `{% generation %}` markers around the
part of each assistant turn that the model must learn to produce. A new model family is one entry in `FAMILIES`,
one `.jinja` file in `vlsft/templates/` and one test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


# Conversation features a stock template may be unable to express, as vlsft names them in errors.
FEATURES = {
    "tools": "tool definitions (`tools`)",
    "tool_calls": "assistant tool calls (`tool_calls`)",
    "tool_messages": "'tool' messages (tool responses)",
}


@dataclass(frozen=True)
class TemplateFamily:
    """What vlsft needs to know about one VLM family's chat format and processor."""

    name: str
    display_name: str
    stock_template: str  # name of the stock template as TRL ships it (trl/chat_templates/<name>.jinja)
    training_template: str  # our generation-marked file in vlsft/templates/
    processor_class: str  # the family's processor class, which finds the family when the template is a custom one
    model_types: tuple[str, ...]  # `config.model_type` of the family's models
    vision_tokens: tuple[str, ...]  # never supervised
    image_token: str  # the placeholder the template writes, one per image, that the processor expands
    end_of_turn: str  # must be supervised, so the model learns to stop
    # The placeholder expands to n copies of itself: expand it on token ids (fast, exact: the copies are special tokens
    # that never merge with their neighbours). Otherwise its replacement text is tokenized in context.
    expand_on_ids: bool = False
    # Name of the per-token image map (1 on image tokens) the model takes, if any: Qwen's rope positions, Gemma 3's
    # bidirectional attention over each image.
    image_map_key: str | None = None
    unsupported: tuple[str, ...] = ()  # keys of FEATURES the stock template cannot express
    # Content item types (besides images) the template renders but vlsft does not collate yet: a row with one fails
    # by name instead of training on a placeholder with no features behind it.
    unsupported_media: tuple[str, ...] = ()
    # (open, close) of a reasoning block inside an assistant turn, each one token of the family's tokenizer (Qwen3's
    # `<think>`, `</think>`): `reasoning_weight` scales the tokens from open to close, both included. None where the
    # family has no reasoning format.
    reasoning_markers: tuple[str, str] | None = None
    # The text that opens a reasoning block as the template writes it, when it is more than the open marker (Gemma 4:
    # `<|channel>thought\n`): how reasoning written inline in an assistant message is recognised.
    reasoning_opening: str | None = None


_QWEN_VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Qwen3's reasoning block: the stock Qwen3-VL template renders it as written in the assistant content.
_QWEN3_THINK = ("<think>", "</think>")
_NO_TOOLS = ("tools", "tool_calls", "tool_messages")
# Idefics3 / SmolVLM image text: the fake token around each tile, the global-image tag and the tile positions.
_IDEFICS_VISION = ("<fake_token_around_image>", "<image>", "<global-img>") + tuple(
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
)

FAMILIES = {
    "qwen3_vl": TemplateFamily(
        name="qwen3_vl",
        display_name="Qwen3-VL",
        stock_template="qwen3_vl",
        training_template="qwen3_vl_training.jinja",
        processor_class="Qwen3VLProcessor",
        model_types=("qwen3_vl",),
        vision_tokens=_QWEN_VISION,
        image_token="<|image_pad|>",
        end_of_turn="<|im_end|>",
        expand_on_ids=True,
        image_map_key="mm_token_type_ids",
        reasoning_markers=_QWEN3_THINK,
    ),
    # The MoE checkpoints ship the Qwen3-VL processor and template: same collation, other model parts.
    "qwen3_vl_moe": TemplateFamily(
        name="qwen3_vl_moe",
        display_name="Qwen3-VL-MoE",
        stock_template="qwen3_vl",
        training_template="qwen3_vl_training.jinja",
        processor_class="Qwen3VLProcessor",
        model_types=("qwen3_vl_moe",),
        vision_tokens=_QWEN_VISION,
        image_token="<|image_pad|>",
        end_of_turn="<|im_end|>",
        expand_on_ids=True,
        image_map_key="mm_token_type_ids",
        reasoning_markers=_QWEN3_THINK,
    ),
    "qwen2_5_vl": TemplateFamily(
        name="qwen2_5_vl",
        display_name="Qwen2.5-VL",
        stock_template="qwen2_5_vl",
        training_template="qwen2_5_vl_training.jinja",
        processor_class="Qwen2_5_VLProcessor",
        model_types=("qwen2_5_vl",),
        vision_tokens=_QWEN_VISION,
        image_token="<|image_pad|>",
        end_of_turn="<|im_end|>",
        expand_on_ids=True,
        image_map_key="mm_token_type_ids",
        unsupported=_NO_TOOLS,
    ),
    "gemma3": TemplateFamily(
        name="gemma3",
        display_name="Gemma 3",
        stock_template="gemma3",
        training_template="gemma3_training.jinja",
        processor_class="Gemma3Processor",
        model_types=("gemma3",),
        vision_tokens=("<start_of_image>", "<image_soft_token>", "<end_of_image>"),
        image_token="<start_of_image>",
        end_of_turn="<end_of_turn>",
        image_map_key="token_type_ids",
        unsupported=_NO_TOOLS,
    ),
    "idefics3": TemplateFamily(
        name="idefics3",
        display_name="Idefics3",
        stock_template="idefics3",
        training_template="idefics3_training.jinja",
        processor_class="Idefics3Processor",
        model_types=("idefics3",),
        vision_tokens=_IDEFICS_VISION,
        image_token="<image>",
        end_of_turn="<end_of_utterance>",
        unsupported=_NO_TOOLS,
    ),
    "smolvlm": TemplateFamily(
        name="smolvlm",
        display_name="SmolVLM",
        stock_template="smolvlm",
        training_template="smolvlm_training.jinja",
        processor_class="SmolVLMProcessor",
        model_types=("smolvlm",),
        vision_tokens=_IDEFICS_VISION,
        image_token="<image>",
        end_of_turn="<end_of_utterance>",
        unsupported=_NO_TOOLS,
    ),
    "llava_next": TemplateFamily(
        name="llava_next",
        display_name="LLaVA-NeXT",
        stock_template="llava_next",
        training_template="llava_next_training.jinja",
        processor_class="LlavaNextProcessor",
        model_types=("llava_next",),
        vision_tokens=("<image>",),
        image_token="<image>",
        end_of_turn="</s>",
        expand_on_ids=True,
        unsupported=_NO_TOOLS,
    ),
}


# Gemma 4: one entry per stock template revision TRL ships (recognised by exact text), all collated alike. Images are
# `<|image|>` placeholders that the processor expands to `<|image>` + n soft tokens + `<image|>` (as text: the
# replacement is not only copies of the placeholder). Audio and video are not collated yet.
_GEMMA4_REVISIONS = {
    "gemma4_v5": "Gemma 4 (current template)",
    "gemma4_v4": "Gemma 4 (template 905e84b)",
    "gemma4": "Gemma 4 (template 6b7e72c)",
    "gemma4_v3": "Gemma 4 (template b446025)",
    "gemma4_v2": "Gemma 4 (release template 4742fe8)",
}
for _name, _display in _GEMMA4_REVISIONS.items():
    FAMILIES[_name] = TemplateFamily(
        name=_name,
        display_name=_display,
        stock_template=_name,
        training_template=f"{_name}_training.jinja",
        processor_class="Gemma4Processor",
        model_types=("gemma4",),
        vision_tokens=("<|image>", "<|image|>", "<image|>", "<|video|>", "<|audio>", "<|audio|>", "<audio|>"),
        image_token="<|image|>",
        end_of_turn="<turn|>",
        image_map_key="mm_token_type_ids",
        unsupported_media=("audio", "input_audio", "video"),
        reasoning_markers=("<|channel>", "<channel|>"),
        reasoning_opening="<|channel>thought\n",
    )


def _qwen3_5_family(name: str, display_name: str) -> TemplateFamily:
    """A Qwen3.5-generation template (Qwen3.5 think / nothink, Qwen3.6, Qwen3.8). Every one of them serves the dense
    (`qwen3_5`) and the MoE (`qwen3_5_moe`) architecture with `Qwen3VLProcessor`; the templates differ in what they
    render (thinking default, preserved reasoning history, reasoning effort), not in how images are collated. Videos
    take Qwen3-VL's path (the same video processor, textual timestamps, and `mm_token_type_ids` 2 on video tokens)."""
    return TemplateFamily(
        name=name,
        display_name=display_name,
        stock_template=name,
        training_template=f"{name}_training.jinja",
        processor_class="Qwen3VLProcessor",
        model_types=("qwen3_5", "qwen3_5_moe"),
        vision_tokens=_QWEN_VISION,
        image_token="<|image_pad|>",
        end_of_turn="<|im_end|>",
        expand_on_ids=True,
        image_map_key="mm_token_type_ids",
        reasoning_markers=("<think>", "</think>"),
    )


QWEN3_5_FAMILIES = ("qwen3_5_think", "qwen3_5_nothink", "qwen3_6", "qwen3_8")
FAMILIES.update(
    {
        "qwen3_5_think": _qwen3_5_family("qwen3_5_think", "Qwen3.5 (thinking)"),
        "qwen3_5_nothink": _qwen3_5_family("qwen3_5_nothink", "Qwen3.5 (non-thinking)"),
        "qwen3_6": _qwen3_5_family("qwen3_6", "Qwen3.6"),
        "qwen3_8": _qwen3_5_family("qwen3_8", "Qwen3.8"),
    }
)


@lru_cache
def stock_template(family: str) -> str:
    """The stock chat template of a family, as TRL ships it (read, not copied, so it stays TRL's)."""
    return resources.files("trl").joinpath("chat_templates", f"{FAMILIES[family].stock_template}.jinja").read_text()


@lru_cache
def training_template(family: str) -> str:
    """vlsft's generation-marked training template of a family (package data)."""
    return resources.files("vlsft").joinpath("templates", FAMILIES[family].training_template).read_text()


def family_of_processor(processor) -> str | None:
    """The family whose processor class `processor` is (for a custom template on a known model), or None."""
    name = type(processor).__name__
    return next((family.name for family in FAMILIES.values() if family.processor_class == name), None)


def family_of_model(model) -> str | None:
    """The family of a model (or PEFT / wrapped model) from its `config.model_type`, or None."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    return next((family.name for family in FAMILIES.values() if model_type in family.model_types), None)


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
    `{% generation %}` markers, else an error saying how to pass one."""
    family = detect_family(template)
    if family is not None:
        return training_template(family)
    if has_generation_markers(template):
        return template
    known = ", ".join(sorted(FAMILIES))
    raise ValueError(
        "assistant_only_loss=True needs a chat template with {% generation %} / {% endgeneration %} markers around "
        f"the assistant turns, and the processor's template is not one vlsft knows (known stock templates: {known}). "
        "Write a copy of your template with the assistant body (text, tool calls, end-of-turn token) wrapped in "
        "{% generation %} ... {% endgeneration %} and pass its path as `VLSFTConfig(chat_template_path='my.jinja')` "
        "(or `training.chat_template_path` in a recipe)."
    )
