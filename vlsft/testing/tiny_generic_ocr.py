"""Tiny OCR models on the generic exact path (GLM-OCR...): each family's real model class built from its config class
with random weights, and the real processor class its checkpoints use, with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import (
    Glm46VImageProcessor,
    Glm46VProcessor,
    Glm46VVideoProcessor,
    GlmOcrConfig,
    GlmOcrForConditionalGeneration,
)

from vlsft.testing.tiny_build import HIDDEN, instantiate
from vlsft.testing.tiny_generic_qwen2_glm import glm4_5v_format_template, glm_config, glm_processor


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
