"""Tiny Command A Vision, LFM3-VL and Perception LM on the generic exact path (`vlsft.generic_masks`): each family's
real model class built from its config class with random weights (2-layer language model, small vision tower), and
its real processor class with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import (
    Cohere2VisionConfig,
    Cohere2VisionForConditionalGeneration,
    Cohere2VisionImageProcessor,
    Cohere2VisionProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate
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
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids(named["image_token"])  # the processor reads it
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
