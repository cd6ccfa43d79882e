"""Tiny Granite-Docling, VideoLLaMA3 and GOT-OCR2 models on the generic exact path: each family's real model class
built from its config class with random weights, and its real processor class (real image processor) with a
tokenizer trained in-process (`vlsft.testing.tiny_generic._byte_level_tokenizer`).

TRL ships none of these templates; each builder's docstring says where its template's text comes from.
"""

from __future__ import annotations

from transformers import (
    GotOcr2Config,
    GotOcr2ForConditionalGeneration,
    GotOcr2ImageProcessor,
    GotOcr2Processor,
    GraniteDoclingConfig,
    GraniteDoclingForConditionalGeneration,
    GraniteDoclingImageProcessor,
    GraniteDoclingProcessor,
    PPChart2TableConfig,
    PPChart2TableImageProcessor,
    PPChart2TableProcessor,
    VideoLlama3Config,
    VideoLlama3ForConditionalGeneration,
    VideoLlama3ImageProcessor,
    VideoLlama3Processor,
    VideoLlama3VideoProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer

# -- Granite-Docling -----------------------------------------------------------------------------------------------

# Granite-Docling's chat template as ibm-granite/granite-docling-258M ships it (its chat_template.jinja, as public
# copies and runtimes that embed it carry it): Granite's `<|start_of_role|>ROLE<|end_of_role|>` turns, each ended by
# `<|end_of_text|>` and a newline, an image item written as `<image>` in place; no system default, no tools. The
# generation prompt may carry the DocTags `controls` as JSON.
GRANITE_DOCLING_TEMPLATE = """{%- for message in messages -%}
{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' -}}
{%- if message['content'] is string -%}
{{- message['content'] -}}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'text' -%}
{{- part['text'] -}}
{%- elif part['type'] == 'image' -%}
{{- '<image>' -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<|end_of_text|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_of_role|>assistant' -}}
{%- if controls -%}{{- ' ' + controls | tojson() -}}{%- endif -%}
{{- '<|end_of_role|>' -}}
{%- endif -%}
"""
# The tile positions of a grid of at most 2x2 tiles (the checkpoint's tokenizer has them up to 16x16).
_GRANITE_DOCLING_TILE_TAGS = [f"<row_{i}_col_{j}>" for i in range(1, 3) for j in range(1, 3)]


def build_tiny_granite_docling(seed: int = 0, hidden_size: int = HIDDEN):
    """Granite-Docling (`granite_docling`, the granite-for-docling generation of transformers 5.23):
    `GraniteDoclingForConditionalGeneration` (a SigLIP-style tower whose `connector`, inside `vision_model`,
    pixel-shuffles each tile and feeds DeepStack features into the first decoder layers, a Granite language model
    `text_model`) + `GraniteDoclingProcessor` (Idefics3's image text: 32 px tiles on the grid nearest the page's aspect
    ratio, at most 4, and a global thumbnail when there are several), with `GRANITE_DOCLING_TEMPLATE`. A tile of
    8 px patches is a 4x4 grid, shuffled by 2 into 4 image tokens. Built without the fine connector path (as the 2B
    checkpoint), so that every parameter trains on the coarse path the processor uses by default."""
    named = {"image_token": "<image>"}
    special = ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|pad|>", "<image>",
               "<fake_token_around_image>", "<global-img>", *_GRANITE_DOCLING_TILE_TAGS]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|end_of_text|>", pad_token="<|pad|>")
    processor = GraniteDoclingProcessor(
        image_processor=GraniteDoclingImageProcessor(size={"height": 32, "width": 32}, max_patches=4),
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=GRANITE_DOCLING_TEMPLATE,
    )
    text_sizes = {k: v for k, v in language_model_sizes(hidden_size).items() if k != "head_dim"}
    config = GraniteDoclingConfig(
        text_config=dict(
            vocab_size=len(tokenizer), **text_sizes, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            **VISION_ENCODER_SIZES, image_size=32, patch_size=8, out_hidden_size=hidden_size, scale_factor=2,
            deepstack_visual_indexes=[0], use_fine_route=False,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(GraniteDoclingForConditionalGeneration, config, processor, seed)


# -- VideoLLaMA3 ---------------------------------------------------------------------------------------------------

# VideoLLaMA3's chat format (its checkpoints' Qwen2.5 language model's ChatML turns, `<|im_start|>ROLE\n` ...
# `<|im_end|>\n`), written for the tests: an image item is `<|image_pad|>` and a newline, a video item `<|video_pad|>`
# and a newline, in place; no tools.
VIDEO_LLAMA_3_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<|image_pad|>\n' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<|video_pad|>\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<|im_end|>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def build_tiny_video_llama_3(seed: int = 0, hidden_size: int = HIDDEN):
    """VideoLLaMA3: `VideoLlama3ForConditionalGeneration` (a SigLIP-style tower of any resolution with 2D rope,
    `vision_model`, an MLP `projector`, a Qwen2 language model) + `VideoLlama3Processor` (its real image and video
    processors, 8 px patches, 16 to 32 px a side), with `VIDEO_LLAMA_3_FORMAT_TEMPLATE`. An image is one token per
    patch (merge size 1). Videos are not trained on the generic path (refused by row)."""
    named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    tokenizer = _byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()], named,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    pixels = dict(patch_size=8, min_pixels=16 * 16, max_pixels=32 * 32)
    processor = VideoLlama3Processor(
        image_processor=VideoLlama3ImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=VideoLlama3VideoProcessor(**pixels),
        chat_template=VIDEO_LLAMA_3_FORMAT_TEMPLATE,
    )
    config = VideoLlama3Config(
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(**VISION_ENCODER_SIZES, patch_size=8),
        image_token_id=tokenizer.convert_tokens_to_ids(named["image_token"]),
        video_token_id=tokenizer.convert_tokens_to_ids(named["video_token"]),
    )
    return instantiate(VideoLlama3ForConditionalGeneration, config, processor, seed)


# -- GOT-OCR 2.0 and PP-Chart2Table (refused) ----------------------------------------------------------------------

_GOT_OCR2_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]


def _tiny_got_ocr2_model(config_class, processor, seed: int, hidden_size: int):
    """`GotOcr2ForConditionalGeneration` (a SAM-style windowed ViT, a strided-convolution `multi_modal_projector`, a
    Qwen2 language model) from `config_class`: a 64 px image of 8 px patches, downsampled 4 times by the projector's
    convolutions, is 4 image tokens."""
    tokenizer = processor.tokenizer
    config = config_class(
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        ),
        vision_config=dict(
            hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
            patch_size=8, window_size=2, global_attn_indexes=[1], mlp_dim=64,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<imgpad>"),
        image_seq_length=4,
        tie_word_embeddings=False,
    )
    return instantiate(GotOcr2ForConditionalGeneration, config, processor, seed)


def build_tiny_got_ocr2(seed: int = 0, hidden_size: int = HIDDEN):
    """GOT-OCR 2.0: `GotOcr2ForConditionalGeneration` + `GotOcr2Processor`, without a chat template, as the
    checkpoints ship. vlsft refuses it (`vlsft.generic_family.PROMPT_BUILDING_PROCESSORS`): built to test that
    refusal."""
    tokenizer = _byte_level_tokenizer(_GOT_OCR2_TOKENS, {}, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    processor = GotOcr2Processor(image_processor=GotOcr2ImageProcessor(size={"height": 64, "width": 64}),
                                 tokenizer=tokenizer)
    return _tiny_got_ocr2_model(GotOcr2Config, processor, seed, hidden_size)


def build_tiny_pp_chart2table(seed: int = 0, hidden_size: int = HIDDEN):
    """PP-Chart2Table: `GotOcr2ForConditionalGeneration` from a `PPChart2TableConfig` + `PPChart2TableProcessor`.
    vlsft refuses it (`vlsft.generic_family.PROMPT_BUILDING_PROCESSORS`): built to test that refusal."""
    tokenizer = _byte_level_tokenizer(_GOT_OCR2_TOKENS, {}, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    processor = PPChart2TableProcessor(
        image_processor=PPChart2TableImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer
    )
    return _tiny_got_ocr2_model(PPChart2TableConfig, processor, seed, hidden_size)
