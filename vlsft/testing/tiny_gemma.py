"""Tiny Gemma 3 and Gemma 4 models: the real model classes with the real processor classes and stock chat templates
(Gemma 4 with the template of any of its revisions)."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessor,
    Gemma4Processor,
    Gemma4VideoProcessor,
)

from vlsft.templates import stock_template
from vlsft.testing.tiny_build import HEAD_DIM, HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_tokenizers import train_gemma3_tokenizer, train_gemma4_tokenizer


def build_tiny_gemma3(seed: int = 0, hidden_size: int = HIDDEN):
    """Gemma 3: `Gemma3ForConditionalGeneration` + `Gemma3Processor`. A 32 px image is 4x4 SigLIP patches pooled to
    4 soft tokens. `final_logit_softcapping` is set, as a trap: the conditional-generation head does not apply it,
    so a loss that did would no longer match the model's own logits."""
    tokenizer = train_gemma3_tokenizer()
    tokens_per_image = 4
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=stock_template("gemma3"),
        image_seq_length=tokens_per_image,
    )
    config = Gemma3Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            query_pre_attn_scalar=HEAD_DIM,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=30.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_turn>"),
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(
            **VISION_ENCODER_SIZES,
            image_size=32,
            patch_size=8,
            vision_use_head=False,
        ),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.convert_tokens_to_ids(tokenizer.eoi_token),
        image_token_index=tokenizer.image_token_id,
        tie_word_embeddings=True,
    )
    model, processor = instantiate(Gemma3ForConditionalGeneration, config, processor, seed)
    # Gemma 3 initialises its image projection to zeros: images would reach the language model as zeros, and no
    # gradient would reach the vision tower. A trained checkpoint has a real projection; so does the tiny model.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.02)
    return model, processor


def build_tiny_gemma4(seed: int = 0, hidden_size: int = HIDDEN, template: str = "gemma4_v5"):
    """Gemma 4: `Gemma4ForConditionalGeneration` + `Gemma4Processor` with the stock template of revision `template`.
    Images are cut into 4 px patches, pooled 2x2 into at most 70 soft tokens (the smallest budget the image processor
    accepts): a 64x48 picture is 63 soft tokens. The language model has Gemma 4's per-layer input embeddings, a
    sliding and a full attention layer (with its own head size), bidirectional attention over each image and
    `final_logit_softcapping`; no audio tower."""
    tokenizer = train_gemma4_tokenizer()
    vision_sizes = dict(patch_size=4, max_soft_tokens=70, pooling_kernel_size=2)
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(**vision_sizes),
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(**vision_sizes),
        chat_template=stock_template(template),
        image_seq_length=70,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma4Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            global_head_dim=2 * HEAD_DIM,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=len(tokenizer),
            use_bidirectional_attention="vision",
            final_logit_softcapping=30.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=ids("<turn|>"),
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(
            **VISION_ENCODER_SIZES,
            num_key_value_heads=2,
            head_dim=16,
            patch_size=4,
            pooling_kernel_size=2,
            position_embedding_size=64,
        ),
        audio_config=None,
        boi_token_id=ids("<|image>"),
        eoi_token_id=ids("<image|>"),
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        boa_token_id=ids("<|audio>"),
        eoa_token_index=ids("<audio|>"),
        audio_token_id=ids("<|audio|>"),
        tie_word_embeddings=True,
    )
    return instantiate(Gemma4ForConditionalGeneration, config, processor, seed)
