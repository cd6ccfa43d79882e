"""Tiny LLaVA-1.5, ViP-LLaVA and LLaVA-OneVision models on the generic exact path (`vlsft.testing.tiny_generic` holds
the other families and the shared tokenizer helpers): each family's real model class from its config class with
random weights, and its real processor class with a tokenizer trained in-process.

TRL ships none of these templates. Each is the one the llava-hf checkpoints ship (their `chat_template.json`, as
transformers' own processor tests and conversion scripts spell them), with the `{% generation %}` markers some carry
turned into plain blocks (`without_generation_markers`): the same text, masked by the incremental-rendering rule.
"""

from __future__ import annotations

from transformers import (
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
    VipLlavaConfig,
    VipLlavaForConditionalGeneration,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes, llama_text_config
from vlsft.testing.tiny_generic import _byte_level_tokenizer, without_generation_markers
from vlsft.testing.tiny_tokenizers import train_mistral_tokenizer

# llava-hf/llava-1.5-*-hf's template (Vicuna v1 format): `USER: ` / `ASSISTANT: ` role prefixes, images first as
# `<image>\n`, every text followed by a space; a system message writes its text with no prefix. It writes no
# end-of-turn marker and no control token between turns: the model stops by generating `</s>`, its eos. As shipped,
# with generation markers around the answer text only (`LLAVA_1_5_TEMPLATE`: without them).
LLAVA_1_5_CHECKPOINT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAVA_1_5_TEMPLATE = without_generation_markers(LLAVA_1_5_CHECKPOINT_TEMPLATE)

# llava-hf/vip-llava-*-hf's template: `###Human: ` / `###Assistant: ` role prefixes, the system text first as it is,
# images first as `<image>\n`, texts joined with nothing. No end-of-turn marker either: the model stops on `</s>`.
VIPLLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }}"
    "{% elif message['role'] == 'user' %}{{ '###Human: '}}{% else %}{{ '###' + message['role'].title() + ': '}}"
    "{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '###Assistant:' }}{% endif %}"
)

# llava-hf/llava-onevision-qwen2-*-hf's template (ChatML over its Qwen2 language model, as transformers' processor
# tests spell it): `<|im_start|>role ` then images, videos, and each text after a newline, each turn ended by
# `<|im_end|>`. As shipped, with generation markers around the answer text only (`LLAVA_ONEVISION_TEMPLATE`: without).
LLAVA_ONEVISION_CHECKPOINT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAVA_ONEVISION_TEMPLATE = without_generation_markers(LLAVA_ONEVISION_CHECKPOINT_TEMPLATE)

# A 32 px CLIP view of 8 px patches: 16 image tokens (the CLS token dropped by the "default" feature strategy).
_CLIP_VIEW = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
_CLIP_TOWER = dict(
    model_type="clip_vision_model", **VISION_ENCODER_SIZES, image_size=32, patch_size=8, projection_dim=32
)


def _llava_processor(template: str) -> LlavaProcessor:
    """`LlavaProcessor` with a CLIP image processor (as the llava-hf checkpoints ship) and a Llama tokenizer with
    `<image>` added, BOS added on encode."""
    return LlavaProcessor(
        image_processor=CLIPImageProcessor(**_CLIP_VIEW),
        tokenizer=train_mistral_tokenizer(),
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )


def build_tiny_llava(seed: int = 0, hidden_size: int = HIDDEN):
    """LLaVA-1.5: `LlavaForConditionalGeneration` (a CLIP tower, a 2-layer MLP projector, a Llama language model) +
    `LlavaProcessor`, with `LLAVA_1_5_TEMPLATE`."""
    processor = _llava_processor(LLAVA_1_5_TEMPLATE)
    tokenizer = processor.tokenizer
    config = LlavaConfig(
        text_config=llama_text_config(tokenizer, hidden_size),
        vision_config=_CLIP_TOWER,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=16,
        tie_word_embeddings=False,
    )
    return instantiate(LlavaForConditionalGeneration, config, processor, seed)


def build_tiny_vipllava(seed: int = 0, hidden_size: int = HIDDEN):
    """ViP-LLaVA: `VipLlavaForConditionalGeneration` (a CLIP tower read at several layers, a layer-normed projector, a
    Llama language model) + `LlavaProcessor`, with `VIPLLAVA_TEMPLATE`."""
    processor = _llava_processor(VIPLLAVA_TEMPLATE)
    tokenizer = processor.tokenizer
    config = VipLlavaConfig(
        text_config=llama_text_config(tokenizer, hidden_size),
        vision_config=_CLIP_TOWER,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=[-3, -2, -1],  # the embeddings and both layers' outputs, concatenated
        image_seq_length=16,
        tie_word_embeddings=False,
    )
    return instantiate(VipLlavaForConditionalGeneration, config, processor, seed)


def build_tiny_llava_onevision(seed: int = 0, hidden_size: int = HIDDEN):
    """LLaVA-OneVision: `LlavaOnevisionForConditionalGeneration` (a SigLIP tower, any-resolution tiles with a learned
    row separator, a Qwen2 language model) + `LlavaOnevisionProcessor`, with `LLAVA_ONEVISION_TEMPLATE`. A 32 px base
    view of 8 px patches is 16 tokens, plus the tiles of the best of 4 grids up to 64 px."""
    named = {"image_token": "<image>", "video_token": "<video>"}
    tokenizer = _byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()], named,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    view = dict(size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(**view),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32}),
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(model_type="siglip_vision_model", **VISION_ENCODER_SIZES, image_size=32, patch_size=8),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    return instantiate(LlavaOnevisionForConditionalGeneration, config, processor, seed)
