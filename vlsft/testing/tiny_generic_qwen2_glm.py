"""Tiny GLM-4.xV models (GLM-4.1V, GLM-4.5V, GLM-4.6V) and Qwen2-VL, each the family's real model class built from its
config class with random weights and its real processor class with a tokenizer trained in-process. The three GLM
families share the tokenizer, the 14 px / 2x2-merge vision sizes and the token ids (`glm_*` below); they differ in
model class (GLM-4.5V's language model is a mixture of experts), processor class (GLM-4.6V's own) and chat format
(GLM-4.5V and 4.6V write a `<think>` block in each assistant turn)."""

from __future__ import annotations

from transformers import (
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessor,
    Glm4vMoeConfig,
    Glm4vMoeForConditionalGeneration,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    Glm46VConfig,
    Glm46VForConditionalGeneration,
    Glm46VImageProcessor,
    Glm46VProcessor,
    Glm46VVideoProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from vlsft.templates import stock_template
from vlsft.testing.tiny_build import HIDDEN, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer, trl_template
from vlsft.testing.tiny_qwen3_vl import qwen_vision_token_ids, train_tokenizer
from vlsft.testing.tiny_tokenizers import FAMILY_CORPUS

# -- What the GLM-4.xV families share ------------------------------------------------------------------------------

# The control tokens of GLM-4.xV's tokenizer that these tests use: role tokens, image and video markers and the
# reasoning block; GLM-4.5V and 4.6V also add whole the `/nothink` switch and the tool-call tags (`_GLM_4_5_TOKENS`).
_GLM_SPECIAL = [
    "<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|video|>", "<|end_of_video|>",
    "<think>", "</think>",
]
_GLM_4_5_TOKENS = ["/nothink", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<arg_key>",
                    "</arg_key>", "<arg_value>", "</arg_value>"]
# Images of 28 to 56 px a side: 14 px patches merged 2x2, as in the checkpoints.
_GLM_VISION = dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                   size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})


def glm_processor(processor_class, image_processor_class, video_processor_class, chat_template: str, glm4_5=False):
    """A GLM-4.xV processor over a tokenizer with GLM's control tokens (and GLM-4.5's, with `glm4_5`)."""
    named = {"image_token": "<|image|>", "video_token": "<|video|>"}
    special = _GLM_SPECIAL + (_GLM_4_5_TOKENS if glm4_5 else [])
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return processor_class(
        image_processor=image_processor_class(**_GLM_VISION),
        tokenizer=tokenizer,
        video_processor=video_processor_class(**_GLM_VISION),
        chat_template=chat_template,
    )


def glm_config(config_class, tokenizer, hidden_size: int, **text_config):
    """A GLM-4.xV config: a 2-layer language model of width `hidden_size` with 3D rope on half of each 16-wide head
    (as in the checkpoints: 4 frequencies, split over t, h, w) and `text_config`'s extra fields, a 2-block ViT, and the
    image/video token ids of `tokenizer`. Generation stops on `<|endoftext|>`, `<|user|>` and `<|observation|>`, as the
    checkpoints' generation configs do."""
    ids = tokenizer.convert_tokens_to_ids
    return config_class(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                             "partial_rotary_factor": 0.5},
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=[ids("<|endoftext|>"), ids("<|user|>"), ids("<|observation|>")],
            **text_config,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=hidden_size, image_size=56,
        ),
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"),
        tie_word_embeddings=False,
    )


# -- GLM-4.1V ------------------------------------------------------------------------------------------------------

# GLM-4.1V's chat format, written for these tests (the checkpoint's own template cannot be downloaded here): the
# `[gMASK]<sop>` prefix, role tokens that open each turn, images as `<|begin_of_image|><|image|><|end_of_image|>`, and
# an assistant turn that ends with its text: no end-of-turn marker, the model stops by generating `<|user|>` (one of
# the checkpoint's `eos_token_id`s). What the generic path must handle: it supervises that `<|user|>`.
GLM4V_FORMAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{%- set content = message.content -%}"
    "<|{{ 'observation' if message.role == 'tool' else message.role }}|>\n"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item.type == 'image' -%}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{%- endif -%}"
)


def build_tiny_glm4v(seed: int = 0, hidden_size: int = HIDDEN):
    """GLM-4.1V: `Glm4vForConditionalGeneration` (its ViT with a merger, a GLM-4 language model with 3D rope) +
    `Glm4vProcessor`, with `GLM4V_FORMAT_TEMPLATE`."""
    processor = glm_processor(Glm4vProcessor, Glm4vImageProcessor, Glm4vVideoProcessor, GLM4V_FORMAT_TEMPLATE)
    config = glm_config(Glm4vConfig, processor.tokenizer, hidden_size)
    return instantiate(Glm4vForConditionalGeneration, config, processor, seed)


# -- GLM-4.5V / GLM-4.6V -------------------------------------------------------------------------------------------

_TEXT_ITEM = "{%- if item is mapping and item.type == 'text' -%}\n                {{- item.text }}\n"
_MEDIA_ITEMS = (
    "{%- elif item is mapping and item.type == 'image' -%}<|begin_of_image|><|image|><|end_of_image|>\n"
    "            {%- elif item is mapping and item.type == 'video' -%}<|begin_of_video|><|video|><|end_of_video|>\n"
)


def glm4_5v_format_template() -> str:
    """GLM-4.5V's chat format: GLM-4.5's template as TRL ships it (`glm4moe.jinja`: `[gMASK]<sop>`, tools in a system
    block, each assistant turn `<|assistant|>` + `\\n<think>reasoning</think>` (empty for a turn before the last user
    message) + `\\n` + text, tool calls as `<tool_call>` with `<arg_key>`/`<arg_value>` pairs, no end-of-turn marker),
    with image and video items rendered as the checkpoint renders them
    (`<|begin_of_image|><|image|><|end_of_image|>`); the checkpoint's own template cannot be downloaded here."""
    template = trl_template("glm4moe")
    if template.count(_TEXT_ITEM) != 1:
        raise ValueError("TRL's glm4moe.jinja changed: its text item is no longer where GLM-4.5V's media items go")
    return template.replace(_TEXT_ITEM, _TEXT_ITEM + "            " + _MEDIA_ITEMS)


def build_tiny_glm4v_moe(seed: int = 0, hidden_size: int = HIDDEN):
    """GLM-4.5V: `Glm4vMoeForConditionalGeneration` (GLM-4.1V's ViT and merger, a GLM-4.5 mixture-of-experts language
    model: one dense layer, then one of 4 routed experts, 2 per token, and a shared expert) + `Glm4vProcessor`, with
    `glm4_5v_format_template()`."""
    processor = glm_processor(
        Glm4vProcessor, Glm4vImageProcessor, Glm4vVideoProcessor, glm4_5v_format_template(), glm4_5=True
    )
    config = glm_config(
        Glm4vMoeConfig, processor.tokenizer, hidden_size, moe_intermediate_size=hidden_size, n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
    )
    return instantiate(Glm4vMoeForConditionalGeneration, config, processor, seed)


def build_tiny_glm46v(seed: int = 0, hidden_size: int = HIDDEN):
    """GLM-4.6V: `Glm46VForConditionalGeneration` (GLM-4.1V's ViT, merger and dense language model) + its own
    `Glm46VProcessor` and image processor, with GLM-4.5V's chat format (`glm4_5v_format_template()`: the thinking
    format GLM-4.6V shares; its checkpoint's own template cannot be downloaded here)."""
    processor = glm_processor(
        Glm46VProcessor, Glm46VImageProcessor, Glm46VVideoProcessor, glm4_5v_format_template(), glm4_5=True
    )
    config = glm_config(Glm46VConfig, processor.tokenizer, hidden_size)
    return instantiate(Glm46VForConditionalGeneration, config, processor, seed)


# -- Qwen2-VL ------------------------------------------------------------------------------------------------------


def build_tiny_qwen2_vl(seed: int = 0, hidden_size: int = HIDDEN):
    """Qwen2-VL: `Qwen2VLForConditionalGeneration` (a ViT of 14 px patches merged 2x2, a Qwen2 language model with
    3D rope) + `Qwen2VLProcessor`, with its checkpoints' template, which is byte for byte Qwen2.5-VL's (TRL's
    `qwen2_5_vl.jinja` says so): vlsft recognises it as Qwen2.5-VL's and trains it through that family's record."""
    tokenizer = train_tokenizer(extra_text=FAMILY_CORPUS)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**_GLM_VISION),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**_GLM_VISION),
        chat_template=stock_template("qwen2_5_vl"),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            bos_token_id=None,
        ),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=hidden_size, mlp_ratio=2, num_heads=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2,
        ),
        **qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return instantiate(Qwen2VLForConditionalGeneration, config, processor, seed)
