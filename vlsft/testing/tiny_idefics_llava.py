"""Tiny Idefics3, SmolVLM and LLaVA-NeXT models (SigLIP and CLIP vision towers): the real model classes with the real
processor classes and stock chat templates."""

from __future__ import annotations

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from vlsft.templates import stock_template
from vlsft.testing.tiny_build import (
    llama_text_config,
    HIDDEN,
    VISION_ENCODER_SIZES,
    instantiate,
    mistral_text_config,
)
from vlsft.testing.tiny_tokenizers import train_llama3_tokenizer, train_mistral_tokenizer, train_smolvlm_tokenizer


def _idefics3_like_config(config_class, tokenizer, hidden_size: int):
    """Shared by Idefics3 and SmolVLM: 32 px tiles of 8 px patches (16 patches), pixel-shuffled by 2 to 4 tokens."""
    return config_class(
        text_config=llama_text_config(tokenizer, hidden_size),
        vision_config=dict(
            **VISION_ENCODER_SIZES, image_size=32, patch_size=8,
        ),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )


# Images up to 64 px are split into 32 px tiles (2x2 for a 64x64 image) plus the whole image resized to 32 px.
_IDEFICS_SIZES = dict(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
_IDEFICS_IMAGE_TOKENS = 4


def build_tiny_idefics3(seed: int = 0, hidden_size: int = HIDDEN):
    """Idefics3: `Idefics3ForConditionalGeneration` + `Idefics3Processor` (a Llama 3 style tokenizer)."""
    tokenizer = train_llama3_tokenizer()
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**_IDEFICS_SIZES),
        tokenizer=tokenizer,
        image_seq_len=_IDEFICS_IMAGE_TOKENS,
        chat_template=stock_template("idefics3"),
    )
    config = _idefics3_like_config(Idefics3Config, tokenizer, hidden_size)
    return instantiate(Idefics3ForConditionalGeneration, config, processor, seed)


def build_tiny_smolvlm(seed: int = 0, hidden_size: int = HIDDEN):
    """SmolVLM: `SmolVLMForConditionalGeneration` + `SmolVLMProcessor` (a SmolLM2 style tokenizer). The processor
    needs the `num2words` package."""
    tokenizer = train_smolvlm_tokenizer()
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**_IDEFICS_SIZES),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(**_IDEFICS_SIZES),
        image_seq_len=_IDEFICS_IMAGE_TOKENS,
        chat_template=stock_template("smolvlm"),
    )
    config = _idefics3_like_config(SmolVLMConfig, tokenizer, hidden_size)
    return instantiate(SmolVLMForConditionalGeneration, config, processor, seed)


def build_tiny_llava_next(seed: int = 0, hidden_size: int = HIDDEN):
    """LLaVA-NeXT (Mistral flavour): `LlavaNextForConditionalGeneration` with a CLIP tower + `LlavaNextProcessor`.
    A 32 px base view of 8 px patches is 16 tokens (the CLS token is dropped), plus the any-resolution tiles."""
    tokenizer = train_mistral_tokenizer()
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=stock_template("llava_next"),
    )
    config = LlavaNextConfig(
        text_config=mistral_text_config(tokenizer, hidden_size),
        vision_config=dict(
            model_type="clip_vision_model",
            **VISION_ENCODER_SIZES,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=16,
        tie_word_embeddings=False,
    )
    return instantiate(LlavaNextForConditionalGeneration, config, processor, seed)
