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


@dataclass(frozen=True)
class TemplateFamily:
    """What vlsft needs to know about one VLM family's chat format."""

    name: str
    stock_template: str  # name of the stock template as TRL ships it (trl/chat_templates/<name>.jinja)
    training_template: str  # our generation-marked file in vlsft/templates/
    vision_tokens: tuple[str, ...]  # never supervised
    image_token: str  # the placeholder the processor expands, one per image
    end_of_turn: str  # must be supervised, so the model learns to stop


FAMILIES = {
    "qwen3_vl": TemplateFamily(
        name="qwen3_vl",
        stock_template="qwen3_vl",
        training_template="qwen3_vl_training.jinja",
        vision_tokens=("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
        image_token="<|image_pad|>",
        end_of_turn="<|im_end|>",
    ),
}


@lru_cache
def stock_template(family: str) -> str:
    """The stock chat template of a family, as TRL ships it (read, not copied, so it stays TRL's)."""
    return resources.files("trl").joinpath("chat_templates", f"{FAMILIES[family].stock_template}.jinja").read_text()


def stock_qwen3_vl_template() -> str:
    return stock_template("qwen3_vl")


@lru_cache
def training_template(family: str) -> str:
    """vlsft's generation-marked training template of a family (package data)."""
    return resources.files("vlsft").joinpath("templates", FAMILIES[family].training_template).read_text()


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
