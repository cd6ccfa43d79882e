"""Tiny Command A Vision, LFM3-VL and Perception LM on the generic exact path (`vlsft.generic_masks`): each family's
real model class built from its config class with random weights (2-layer language model, small vision tower), and
its real processor class with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import (
    Cohere2VisionConfig,
    Cohere2VisionForConditionalGeneration,
    Cohere2VisionImageProcessor,
    Cohere2VisionProcessor,
    Lfm3VlConfig,
    Lfm3VlForConditionalGeneration,
    Lfm3VlProcessor,
    PerceptionLMConfig,
    PerceptionLMForConditionalGeneration,
    PerceptionLMImageProcessor,
    PerceptionLMProcessor,
    PerceptionLMVideoProcessor,
    Qwen2VLImageProcessor,
    Qwen3VLVideoProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes, llama_text_config
from vlsft.testing.tiny_generic import _byte_level_tokenizer, trl_template
from vlsft.testing.tiny_generic_aya import (
    COHERE_IMAGE_TOKENS,
    cohere2_text_config,
    cohere_format_template,
    cohere_tokenizer,
)

# -- Command A Vision ----------------------------------------------------------------------------------------------

# Command A Vision's chat format: Cohere's turns (`vlsft.testing.tiny_generic_aya.cohere_format_template`), an
# assistant's text between Command A's `<|START_RESPONSE|>` and `<|END_RESPONSE|>` (as TRL's stock Cohere2 template
# writes them), the generation prompt ending with `<|START_RESPONSE|>`, and an image as the processor's image token,
# which `Cohere2VisionProcessor` expands to `<|START_OF_IMG|>`, each tile's patches ended by `<|IMG_LINE_BREAK|>`, and
# `<|END_OF_IMG|>`. Written for these tests: the checkpoint's own template cannot be downloaded here.
COMMAND_A_VISION_FORMAT_TEMPLATE = cohere_format_template("<|IMG_PATCH|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>")


def build_tiny_cohere2_vision(seed: int = 0, hidden_size: int = HIDDEN):
    """Command A Vision: `Cohere2VisionForConditionalGeneration` (a SigLIP tower, a pixel-shuffle SwiGLU projector, a
    Cohere2 language model) + `Cohere2VisionProcessor` with `COMMAND_A_VISION_FORMAT_TEMPLATE`. Tiles of 32 px (at most
    2, plus the thumbnail when there are 2) of 8 px patches, pixel-shuffled by 2: 2x2 tokens a tile."""
    named = dict(zip(("boi_token", "eoi_token", "image_token", "img_line_break_token"), COHERE_IMAGE_TOKENS))
    tokenizer = cohere_tokenizer([*COHERE_IMAGE_TOKENS, "<|START_RESPONSE|>", "<|END_RESPONSE|>"], named)
    processor = Cohere2VisionProcessor(
        # `patch_size`: the tokens along a tile's side after the pixel shuffle (the checkpoint's 512 / 16 / 2 = 16).
        image_processor=Cohere2VisionImageProcessor(size={"height": 32, "width": 32}, max_patches=2, patch_size=2),
        tokenizer=tokenizer,
        chat_template=COMMAND_A_VISION_FORMAT_TEMPLATE,
    )
    config = Cohere2VisionConfig(
        text_config=cohere2_text_config(tokenizer, hidden_size),
        vision_config=dict(model_type="siglip_vision_model", **VISION_ENCODER_SIZES, image_size=32, patch_size=8),
        downsample_factor=2,
        alignment_intermediate_size=64,
        image_token_id=tokenizer.image_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(Cohere2VisionForConditionalGeneration, config, processor, seed)


# -- LFM3-VL -------------------------------------------------------------------------------------------------------

def lfm3_vl_format_template() -> str:
    """LFM3-VL's chat format, written for these tests (TRL ships no LFM3 template, and the checkpoint's cannot be
    downloaded here): Liquid AI's LFM2.5-VL template as TRL ships it (ChatML turns, `<think>` reasoning kept only after
    the last user message, Pythonic tool calls), its image item written as LFM3-VL's Qwen-style
    `<|vision_start|><|image_pad|><|vision_end|>` (`Lfm3VlProcessor` expands only the pad), and a video item as
    `<|video_pad|>` (the processor writes each frame's `<|vision_start|>` ... `<|vision_end|>` itself)."""
    text = trl_template("lfm2_2_5_vl")
    image, text_item = '+ "<image>" -%}', '{%- elif item is mapping and item.get("type") == "text" -%}'
    assert text.count(image) == 1 and text.count(text_item) == 1, "TRL's LFM2.5-VL template changed its media items"
    video_item = (
        '{%- elif item is mapping and item.get("type") == "video" -%}'
        '{%- set _ns.result = _ns.result + "<|video_pad|>" -%}'
    )
    image_item = '+ "<|vision_start|><|image_pad|><|vision_end|>" -%}'
    return text.replace(image, image_item).replace(text_item, video_item + text_item)


def build_tiny_lfm3_vl(seed: int = 0, hidden_size: int = HIDDEN):
    """LFM3-VL: `Lfm3VlForConditionalGeneration` (a conv/attention ViT over Qwen-style flattened patches, a merging
    projector, an LFM3 hybrid language model) + `Lfm3VlProcessor` (Qwen2-VL's image processor, Qwen3-VL's video
    processor) with `lfm3_vl_format_template()`. 8 px patches merged 2x2: a 64 px image makes 16 tokens at most."""
    named = {
        "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    special = [
        "<|pad|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>", *named.values(), "<think>", "</think>",
        "<|tool_call_start|>", "<|tool_call_end|>",
    ]
    tokenizer = _byte_level_tokenizer(
        special, named, bos_token="<|startoftext|>", eos_token="<|im_end|>", pad_token="<|pad|>"
    )
    size = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}
    vision = dict(patch_size=8, merge_size=2, temporal_patch_size=2, size=size)
    processor = Lfm3VlProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**vision),
        chat_template=lfm3_vl_format_template(),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Lfm3VlConfig(
        text_config=dict(
            model_type="lfm3",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            layer_types=["conv", "full_attention"],
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(
            **VISION_ENCODER_SIZES, num_key_value_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
            layer_types=["conv", "full_attention"],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        projector_hidden_size=32,
        tie_word_embeddings=False,
    )
    return instantiate(Lfm3VlForConditionalGeneration, config, processor, seed)


# -- Perception LM -------------------------------------------------------------------------------------------------

# Perception LM's chat format (Llama 3's header tokens), as the checkpoint's template renders it (transformers'
# PerceptionLM processor tests carry that template; it cannot be downloaded here): a system turn always (the default
# vision-assistant prompt when the conversation has none), then each message's images, its videos, and its text
# items trimmed, in that order, each turn ended by `<|eot_id|>`.
PERCEPTION_LM_FORMAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0].role == 'system' -%}"
    "{%- set system_message = messages[0].content | trim -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = 'You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural language.' -%}"
    "{%- endif -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' -}}"
    "{%- for item in message.content | selectattr('type', 'equalto', 'image') -%}<|image|>{%- endfor -%}"
    "{%- for item in message.content | selectattr('type', 'equalto', 'video') -%}<|video|>{%- endfor -%}"
    "{%- for item in message.content | selectattr('type', 'equalto', 'text') -%}{{ item.text | trim }}{%- endfor -%}"
    "<|eot_id|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


def perception_lm_processor(tokenizer) -> PerceptionLMProcessor:
    """`PerceptionLMProcessor` over `tokenizer` (which names `image_token` and `video_token`), with
    `PERCEPTION_LM_FORMAT_TEMPLATE`: 32 px tiles of 8 px patches, pooled 2x2."""
    return PerceptionLMProcessor(
        video_processor=PerceptionLMVideoProcessor(size={"height": 32, "width": 32}),
        image_processor=PerceptionLMImageProcessor(tile_size=32, max_num_tiles=2, size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        pooling_ratio=2,
        chat_template=PERCEPTION_LM_FORMAT_TEMPLATE,
    )


def build_tiny_perception_lm(seed: int = 0, hidden_size: int = HIDDEN):
    """Perception LM: `PerceptionLMForConditionalGeneration` (a Perception Encoder ViT through timm, an MLP projector
    with 2x2 average pooling, a Llama language model) + `PerceptionLMProcessor` with `PERCEPTION_LM_FORMAT_TEMPLATE`.
    Tiles of 32 px (a thumbnail, plus 2 tiles for a wide or tall image) of 8 px patches, pooled 2x2: 4 tokens a tile.
    Needs `timm` (the test extra), as the checkpoint's vision tower does."""
    named = {"image_token": "<|image|>", "video_token": "<|video|>"}
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               *named.values()]
    tokenizer = _byte_level_tokenizer(
        special, named, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>"
    )
    processor = perception_lm_processor(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    config = PerceptionLMConfig(
        text_config=llama_text_config(tokenizer, hidden_size),
        # The checkpoint's PE-core ViT (a class token, 2D rope), 2 layers of width 32 over 32 px tiles.
        vision_config=dict(
            model_type="timm_wrapper",
            architecture="vit_pe_core_tiny_patch16_384",
            model_args=dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32, ref_feat_shape=(4, 4),
                            global_pool=""),
        ),
        vision_use_cls_token=True,
        projector_pooling_ratio=2,
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        tie_word_embeddings=False,
    )
    return instantiate(PerceptionLMForConditionalGeneration, config, processor, seed)
