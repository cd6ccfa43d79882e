"""Tiny Llama 4 and Muse Glimmer on the generic exact path (`vlsft.testing.tiny_generic` holds the other families and
the shared tokenizer helper): each family's real model class from its config class with random weights (2-layer
language model, 2-layer vision tower) and its real processor class, with a tokenizer trained in-process.

Both templates are the ones the checkpoints ship: Llama 4's is the default `Llama4Processor` carries in transformers
(`transformers.models.llama4.processing_llama4.chat_template`, the Llama-4-Scout/Maverick template), Muse Glimmer's
the one TRL ships (`trl/chat_templates/muse_glimmer.jinja`, "as shipped by meta-models/Muse-Glimmer-30B").
"""

from __future__ import annotations

from transformers import (
    Llama4Config,
    Llama4ForConditionalGeneration,
    Llama4ImageProcessor,
    Llama4Processor,
    MuseGlimmerConfig,
    MuseGlimmerForConditionalGeneration,
    MuseGlimmerImageProcessor,
    MuseGlimmerProcessor,
    MuseGlimmerVideoProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer, trl_template

# The vision tower of both: 2 layers of width 32 with 2 heads, on 8 px patches.
_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8)

# -- Llama 4 -------------------------------------------------------------------------------------------------------

_LLAMA4_IMAGE_TOKENS = [
    "<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>",
]


def build_tiny_llama4(seed: int = 0, hidden_size: int = HIDDEN):
    """Llama 4 (Scout / Maverick): `Llama4ForConditionalGeneration` (its ViT with a pixel-shuffle adapter, a linear
    projector, a Llama 4 MoE language model) + `Llama4Processor` with its stock template (the processor's default).

    The language model alternates a MoE layer of 2 experts (1 routed per token, plus the shared expert) and a dense
    one, with chunked attention on the RoPE layer and a NoPE layer, as the checkpoints do. Images are tiles of 32 px
    of 8 px patches, pixel-shuffled by 0.5 (4 `<|patch|>` tokens per tile); an image larger than a tile is cut into
    up to 2 tiles plus the global view. The assistant turn ends with `<|eot|>` (tool calls too: this template never
    writes `<|eom|>`); the generation config stops on `<|end_of_text|>`, `<|eot|>` and `<|eom|>`."""
    special = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad|>", "<|header_start|>", "<|header_end|>",
        "<|eot|>", "<|eom|>", "<|python_start|>", "<|python_end|>", *_LLAMA4_IMAGE_TOKENS,
    ]
    tokenizer = _byte_level_tokenizer(
        special, {}, bos_token="<|begin_of_text|>", eos_token="<|eot|>", pad_token="<|finetune_right_pad|>"
    )
    image_processor = Llama4ImageProcessor(size={"height": 32, "width": 32}, max_patches=2)
    processor = Llama4Processor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8)
    ids = tokenizer.convert_tokens_to_ids
    config = Llama4Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            intermediate_size_mlp=hidden_size * 2,
            num_local_experts=2,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,  # layer 1 MoE, layer 0 dense
            no_rope_layers=[1, 0],  # layer 0 RoPE with chunked attention, layer 1 NoPE
            attention_chunk_size=4096,  # chunks cover every test row
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[ids("<|end_of_text|>"), ids("<|eot|>"), ids("<|eom|>")],
        ),
        vision_config=dict(
            **_VISION,
            intermediate_size=128,  # also the pixel-shuffled width: 32 * 4
            image_size=32,
            pixel_shuffle_ratio=0.5,
            projector_input_dim=64,
            projector_output_dim=64,
            vision_output_dim=64,
        ),
        boi_token_index=ids("<|image_start|>"),
        eoi_token_index=ids("<|image_end|>"),
        image_token_index=ids("<|patch|>"),  # the features go to the patch tokens, not the `<|image|>` placeholder
        tie_word_embeddings=False,
    )
    return instantiate(Llama4ForConditionalGeneration, config, processor, seed)


# -- Muse Glimmer --------------------------------------------------------------------------------------------------


def build_tiny_muse_glimmer(seed: int = 0, hidden_size: int = HIDDEN):
    """Muse Glimmer: `MuseGlimmerForConditionalGeneration` (its windowed ViT with a pixel-shuffle merge, an MLP
    adapter and projection, a Muse Glimmer language model) + `MuseGlimmerProcessor`, with TRL's stock template.

    Images are 8 px patches merged 2x2 (at most 16 merged tokens). The template renders the ATEM channels: a turn is
    `<|start|>assistant to=<recipient><|message|>...` ended by `<|eot|>` (to the user) or `<|eom|>` (reasoning, and a
    tool call followed by another assistant message). Its default system block writes today's date unless
    `current_date` is given (vlsft refuses a row that would hold the clock's date: `vlsft.collation.template_clock`)."""
    named = {"image_token": "<|patch|>", "video_token": "<|video|>"}
    special = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad|>", "<|start|>", "<|message|>", "<|eot|>",
        "<|eom|>", "<|patch|>", "<|image_start|>", "<|image_end|>", "<|video|>", "<|vid_frame_separator|>",
        "<|vid_start|>", "<|vid_end|>",
    ]
    tokenizer = _byte_level_tokenizer(
        special, named, bos_token="<|begin_of_text|>", eos_token="<|eot|>", pad_token="<|finetune_right_pad|>"
    )
    vision = dict(patch_size=8, temporal_patch_size=2, merge_size=2)
    processor = MuseGlimmerProcessor(
        image_processor=MuseGlimmerImageProcessor(**vision, max_image_tokens=64),
        video_processor=MuseGlimmerVideoProcessor(**vision),
        tokenizer=tokenizer,
        chat_template=trl_template("muse_glimmer"),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = MuseGlimmerConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            sliding_window=4096,  # the sliding layers' window covers every test row
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[ids("<|end_of_text|>"), ids("<|eot|>"), ids("<|eom|>")],
        ),
        vision_config=dict(
            **_VISION, intermediate_size=64, pos_emb_height=8, pos_emb_width=8, patch_temporal=2, merge_size=2,
            max_position_embeddings=64,
        ),
        image_token_id=ids("<|patch|>"),
        video_token_id=ids("<|video|>"),
        out_hidden_size=32 * 4,  # the tower's width after the 2x2 merge
        projector_hidden_size=64,
    )
    return instantiate(MuseGlimmerForConditionalGeneration, config, processor, seed)
