"""Tiny MiniCPM-V 4.7, FastVLM, LightOnOCR and PaddleOCR-VL models on the generic exact path (`vlsft.testing.
tiny_generic` holds the shared tokenizer helper): each family's real model class built from its config class with
random weights, and its real processor class with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import (
    LightOnOcrConfig,
    LightOnOcrForConditionalGeneration,
    LightOnOcrProcessor,
    MiniCPMV4_7Config,
    MiniCPMV4_7ForConditionalGeneration,
    MiniCPMV4_7Processor,
    PixtralImageProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer
from vlsft.testing.tiny_generic_molmo_ovis_minicpm import MINICPMV4_6_FORMAT_TEMPLATE, minicpmv_processor
from vlsft.testing.tiny_qwen import qwen3_5_text_config


def build_tiny_minicpmv4_7(seed: int = 0, hidden_size: int = HIDDEN):
    """MiniCPM-V 4.7: `MiniCPMV4_7ForConditionalGeneration` (4.6's vision tower and merger, a Qwen3.5 hybrid language
    model, positions laid out by "canvas M-RoPE" from `mm_token_type_ids`: each image's and slice's markers pinned to
    its corners) + `MiniCPMV4_7Processor` over 4.6's image processor, with 4.6's ChatML format template (4.7's
    checkpoint template could not be found offline; its Qwen3.5 base writes the same turns)."""
    processor = minicpmv_processor(MiniCPMV4_7Processor)
    tokenizer = processor.tokenizer
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert len(newline) == 1, "canvas M-RoPE pins slice rows by the one newline token"
    config = MiniCPMV4_7Config(
        text_config=dict(model_type="qwen3_5_text", **qwen3_5_text_config(tokenizer, hidden_size)),
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=56, patch_size=14),
        insert_layer_id=0,
        image_size=56,
        downsample_mode="4x",
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        image_start_id=tokenizer.image_start_token_id,
        image_end_id=tokenizer.image_end_token_id,
        slice_start_id=tokenizer.slice_start_token_id,
        slice_end_id=tokenizer.slice_end_token_id,
        newline_id=newline[0],
    )
    return instantiate(MiniCPMV4_7ForConditionalGeneration, config, processor, seed)


def build_tiny_lighton_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """LightOnOCR: `LightOnOcrForConditionalGeneration` (a Pixtral vision encoder, `vision_encoder`; a projector that
    merges 2x2 patches, `vision_projection`; a Qwen3 language model) + `LightOnOcrProcessor` over Pixtral's image
    processor: images up to 32 px in 8 px patches, each 2x2 merged patch one `<|image_pad|>`. Its checkpoints
    (lightonai/LightOnOCR-*) speak ChatML with each image as `<|image_pad|>` in place (transformers' docs and
    processor tests), which is `MINICPMV4_6_FORMAT_TEMPLATE`'s text; the stop token is `<|im_end|>`."""
    named = {"image_token": "<|image_pad|>", "image_break_token": "<|vision_pad|>", "image_end_token": "<|vision_end|>"}
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for name, token in named.items():  # the processor reads each token's id as an attribute too
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    processor = LightOnOcrProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 32}, patch_size={"height": 8, "width": 8}),
        tokenizer=tokenizer,
        patch_size=8,
        spatial_merge_size=2,
        chat_template=MINICPMV4_6_FORMAT_TEMPLATE,
    )
    config = LightOnOcrConfig(
        text_config=dict(
            model_type="qwen3",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(model_type="pixtral", **VISION_ENCODER_SIZES, head_dim=16, image_size=32, patch_size=8),
        spatial_merge_size=2,
        image_token_id=tokenizer.image_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(LightOnOcrForConditionalGeneration, config, processor, seed)
