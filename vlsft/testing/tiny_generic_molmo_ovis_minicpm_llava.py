"""Tiny LLaVA-NeXT-Video and Video-LLaVA models on the generic exact path (their images; their videos are refused by
row there): each family's real model class built from its config class with random weights, and its real processor
class with a tokenizer trained in-process (`vlsft.testing.tiny_generic`)."""

from __future__ import annotations

from transformers import (
    LlavaNextImageProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VideoLlavaProcessor,
    VideoLlavaVideoProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, llama_text_config
from vlsft.testing.tiny_generic import _byte_level_tokenizer


# -- LLaVA-NeXT-Video ----------------------------------------------------------------------------------------------

# LLaVA-NeXT-Video-34B's chat format (ChatML, as its Yi language model's), written for these tests (the checkpoint's
# own template cannot be downloaded here): in each message its images first, each `<image>` on its own line, then its
# videos (`<video>`), then its text; each turn ended by `<|im_end|>`.
LLAVA_NEXT_VIDEO_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'image') -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'video') -%}{{ '<video>\\n' }}{%- endfor -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}{{ '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_tiny_llava_next_video(seed: int = 0, hidden_size: int = HIDDEN):
    """LLaVA-NeXT-Video: `LlavaNextVideoForConditionalGeneration` (a CLIP tower, LLaVA-NeXT's any-resolution tiles and
    projector, a pooler for video frames, a Llama-style language model) + `LlavaNextVideoProcessor` with
    `LLAVA_NEXT_VIDEO_FORMAT_TEMPLATE`. A 32 px base view of 8 px patches is 16 tokens, plus the tiles."""
    named = {"image_token": "<image>", "video_token": "<video>"}
    special = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<unk>", unk_token="<unk>")
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    view = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(**view),
        image_processor=LlavaNextImageProcessor(**view, image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_NEXT_VIDEO_FORMAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaNextVideoConfig(
        text_config=llama_text_config(tokenizer, hidden_size),
        vision_config=dict(
            model_type="clip_vision_model", **VISION_ENCODER_SIZES, image_size=32, patch_size=8, projection_dim=32
        ),
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=16,
        video_seq_length=4,
        tie_word_embeddings=False,
    )
    return instantiate(LlavaNextVideoForConditionalGeneration, config, processor, seed)


# -- Video-LLaVA ---------------------------------------------------------------------------------------------------

# Video-LLaVA's chat format (Vicuna v1, as its original conversation template writes it), written for these tests (the
# checkpoint's own template cannot be downloaded here): `USER: ... ASSISTANT: ...</s>`, each image `<image>` on its
# own line before the text; the generation prompt is `ASSISTANT:`, the turn's text follows after a space.
VIDEO_LLAVA_FORMAT_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set ns = namespace(text='') -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set ns.text = ns.text + '<image>\\n' -%}"
    "{%- elif item['type'] == 'video' -%}{%- set ns.text = ns.text + '<video>\\n' -%}"
    "{%- elif item['type'] == 'text' -%}{%- set ns.text = ns.text + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = ns.text -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{ text + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + text + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + text + eos_token }}"
    "{%- else -%}{{ raise_exception('Only system, user and assistant messages are supported.') }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def build_tiny_video_llava(seed: int = 0, hidden_size: int = HIDDEN):
    """Video-LLaVA: `VideoLlavaForConditionalGeneration` (two CLIP towers, one for images and one for videos, a
    projector, a Llama language model) + `VideoLlavaProcessor` with `VIDEO_LLAVA_FORMAT_TEMPLATE`. A 32 px image of
    8 px patches is 16 tokens (the CLS token is dropped)."""
    named = {"image_token": "<image>", "video_token": "<video>"}
    special = ["<unk>", "<s>", "</s>", *named.values()]
    tokenizer = _byte_level_tokenizer(
        special, named, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    view = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(**view),
        video_processor=VideoLlavaVideoProcessor(**view),
        tokenizer=tokenizer,
        patch_size=8,
        chat_template=VIDEO_LLAVA_FORMAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = VideoLlavaConfig(
        text_config=llama_text_config(tokenizer, hidden_size),
        vision_config=dict(
            model_type="clip_vision_model", **VISION_ENCODER_SIZES, image_size=32, patch_size=8, projection_dim=32
        ),
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        vision_feature_layer=-1,
        image_seq_length=16,
        tie_word_embeddings=False,
    )
    return instantiate(VideoLlavaForConditionalGeneration, config, processor, seed)
