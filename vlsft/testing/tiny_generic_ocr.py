"""Tiny OCR models on the generic exact path (GLM-OCR...): each family's real model class built from its config class
with random weights, and the real processor class its checkpoints use, with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import (
    GotOcr2ImageProcessor,
    Glm46VImageProcessor,
    Glm46VProcessor,
    Glm46VVideoProcessor,
    GlmOcrConfig,
    GlmOcrForConditionalGeneration,
    MiniCPMOcrConfig,
    MiniCPMOcrForConditionalGeneration,
    MiniCPMOcrImageProcessor,
    MiniCPMOcrProcessor,
    MiniCPMOcrVideoProcessor,
    QianfanOCRConfig,
    QianfanOCRForConditionalGeneration,
    QianfanOCRProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer
from vlsft.testing.tiny_generic_molmo_ovis_minicpm import (
    _MINICPMV_NAMED_TOKENS,
    MINICPMV4_6_FORMAT_TEMPLATE,
    MINICPMV_SCALING,
)
from vlsft.testing.tiny_generic_qwen2_glm import glm4_5v_format_template, glm_config, glm_processor
from vlsft.testing.tiny_qwen import qwen3_5_text_config


def build_tiny_glm_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """GLM-OCR: `GlmOcrForConditionalGeneration` (GLM-4.1V's layout: a CogViT-style ViT with a merger, `visual`; a
    GLM language model with 3D rope) + `Glm46VProcessor`, which its checkpoint (zai-org/GLM-OCR) names as its
    `processor_class` (transformers maps no processor to `glm_ocr`). Its checkpoint's template is GLM-4.6V's:
    `[gMASK]<sop>`, tools in a system block, `<|assistant|>` + a `<think>` block + the text, images as
    `<|begin_of_image|><|image|><|end_of_image|>`, no end-of-turn marker (generation stops on `<|user|>` or
    `<|observation|>`, supervised as the turn's stop token), which `glm4_5v_format_template()` writes."""
    processor = glm_processor(
        Glm46VProcessor, Glm46VImageProcessor, Glm46VVideoProcessor, glm4_5v_format_template(), glm4_5=True
    )
    config = glm_config(GlmOcrConfig, processor.tokenizer, hidden_size)
    return instantiate(GlmOcrForConditionalGeneration, config, processor, seed)


# Qianfan-OCR's chat format (its checkpoint's template could not be found offline): ChatML, as its Qwen3 language
# model's and the InternVL chat format it descends from, each image item written as `<image>` on its own line (the
# placeholder `QianfanOCRProcessor` expands into `<img>` + the tiles' `<IMG_CONTEXT>` tokens + `</img>`), a turn
# ended by `<|im_end|>`.
QIANFAN_OCR_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message.role }}\n"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}<image>\n{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def build_tiny_qianfan_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """Qianfan-OCR: `QianfanOCRForConditionalGeneration` (Qianfan-ViT, `vision_tower`; a pixel-shuffle MLP projector,
    `multi_modal_projector`; a Qwen3 language model) + `QianfanOCRProcessor` over GOT-OCR2's image processor (the one
    transformers maps to `qianfan_ocr`), with `QIANFAN_OCR_FORMAT_TEMPLATE`. Images are cut into up to 2 tiles of
    32 px (plus a thumbnail when there are 2), each tile 8 px patches shuffled by 0.5: 4 `<IMG_CONTEXT>` tokens."""
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}
    # `<image>` is plain text, not a token (as in the InternVL tokenizers Qianfan's descends from): the processor
    # replaces it in the text before tokenizing.
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for name, token in named.items():  # the processor reads each token's id as an attribute too
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    processor = QianfanOCRProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": 32, "width": 32}, max_patches=2),
        tokenizer=tokenizer,
        image_seq_length=4,
        chat_template=QIANFAN_OCR_FORMAT_TEMPLATE,
    )
    config = QianfanOCRConfig(
        text_config=dict(
            model_type="qwen3",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        # No stochastic depth: a training step must be a function of its batch (exact gradient accumulation).
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=32, patch_size=8, drop_path_rate=0.0),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    return instantiate(QianfanOCRForConditionalGeneration, config, processor, seed)


def build_tiny_minicpm_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """MiniCPM-OCR: `MiniCPMOcrForConditionalGeneration` (MiniCPM-V 4.6's layout: a SigLIP-style ViT with a
    window-attention merger inserted after its first layer, an MLP merger, a Qwen3.5 hybrid language model) +
    `MiniCPMOcrProcessor` over its own image processor (small images and slices upscaled to the slice resolution),
    with MiniCPM-V 4.6's tokens and ChatML format template (`MINICPMV4_6_FORMAT_TEMPLATE`: MiniCPM-OCR's checkpoint
    template could not be found offline; its Qwen3.5 base writes the same turns), images about 56 px in 14 px
    patches, merged 4x, cut into up to 2 slices."""
    named = _MINICPMV_NAMED_TOKENS
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values(), "<think>", "</think>"]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for name, token in named.items():  # the processor reads each token's id as an attribute too
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    processor = MiniCPMOcrProcessor(
        image_processor=MiniCPMOcrImageProcessor(**MINICPMV_SCALING),
        video_processor=MiniCPMOcrVideoProcessor(**MINICPMV_SCALING),
        tokenizer=tokenizer,
        chat_template=MINICPMV4_6_FORMAT_TEMPLATE,
    )
    config = MiniCPMOcrConfig(
        text_config=dict(model_type="qwen3_5_text", **qwen3_5_text_config(tokenizer, hidden_size)),
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=56, patch_size=14),
        insert_layer_id=0,
        downsample_mode="4x",
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(MiniCPMOcrForConditionalGeneration, config, processor, seed)
