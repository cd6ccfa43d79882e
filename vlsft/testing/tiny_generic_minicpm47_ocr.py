"""Tiny MiniCPM-V 4.7, FastVLM, LightOnOCR and PaddleOCR-VL models on the generic exact path (`vlsft.testing.
tiny_generic` holds the shared tokenizer helper): each family's real model class built from its config class with
random weights, and its real processor class with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import MiniCPMV4_7Config, MiniCPMV4_7ForConditionalGeneration, MiniCPMV4_7Processor

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate
from vlsft.testing.tiny_generic_molmo_ovis_minicpm import minicpmv_processor
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
