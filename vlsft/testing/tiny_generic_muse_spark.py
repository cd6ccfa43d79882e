"""Tiny Muse Spark on the generic exact path (`vlsft.testing.tiny_generic_mistral_gemma_glm5` holds this branch's
other families; `vlsft.testing.tiny_generic_llama4_muse` Muse Glimmer, whose processor pieces and template it shares).
"""

from __future__ import annotations

from transformers import (
    MuseGlimmerImageProcessor,
    MuseGlimmerVideoProcessor,
    MuseSparkConfig,
    MuseSparkFeatureExtractor,
    MuseSparkForConditionalGeneration,
    MuseSparkProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer, trl_template

_MUSE_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad|>", "<|start|>", "<|message|>", "<|eot|>", "<|eom|>",
    "<|patch|>", "<|image_start|>", "<|image_end|>", "<|video|>", "<|vid_frame_separator|>", "<|vid_start|>",
    "<|vid_end|>", "<|audio|>", "<|soft_audio_start|>", "<|soft_audio_end|>",
]


def build_tiny_muse_spark(seed: int = 0, hidden_size: int = HIDDEN):
    """Muse Spark: `MuseSparkForConditionalGeneration` (Muse Glimmer's windowed ViT, MLP adapter and projection, an
    audio tower, a Muse Spark MoE language model: 2 experts, 1 per token, sliding and NoPE full-attention layers) +
    `MuseSparkProcessor` (Muse Glimmer's image and video processors, its own audio feature extractor), with TRL's
    stock Muse Glimmer template (`trl/chat_templates/muse_glimmer.jinja`): the Muse chat format, as Muse Spark's
    processor carries the same `<|patch|>` / `<|image_start|>` tokens; Muse Spark's own template cannot be downloaded
    here. Images are 8 px patches merged 2x2; the assistant turn ends with `<|eot|>` (or `<|eom|>`), the default system
    block writes today's date unless `current_date` pins it."""
    named = {"image_token": "<|patch|>", "video_token": "<|video|>"}
    tokenizer = _byte_level_tokenizer(
        _MUSE_SPECIAL, named, bos_token="<|begin_of_text|>", eos_token="<|eot|>", pad_token="<|finetune_right_pad|>"
    )
    vision = dict(patch_size=8, temporal_patch_size=2, merge_size=2)
    processor = MuseSparkProcessor(
        feature_extractor=MuseSparkFeatureExtractor(),
        image_processor=MuseGlimmerImageProcessor(**vision, max_image_tokens=64),
        video_processor=MuseGlimmerVideoProcessor(**vision),
        tokenizer=tokenizer,
        chat_template=trl_template("muse_glimmer"),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = MuseSparkConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            sliding_window=4096,  # the sliding layers' window covers every test row
            moe_intermediate_size=hidden_size // 2,
            moe_hidden_size=hidden_size // 2,
            num_local_experts=2,
            num_experts_per_tok=1,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[ids("<|end_of_text|>"), ids("<|eot|>"), ids("<|eom|>")],
        ),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, intermediate_size=64,
            pos_emb_height=8, pos_emb_width=8, patch_temporal=2, merge_size=2, max_position_embeddings=64,
        ),
        # One stage of width 16: the audio tower exists (the config requires it) but no row feeds it.
        audio_config=dict(patch_sizes=[4], hidden_sizes=[16], depths=[1], num_hidden_layers=1,
                          out_hidden_size=hidden_size),
        image_token_id=ids("<|patch|>"),
        video_token_id=ids("<|video|>"),
        audio_token_id=ids("<|audio|>"),
        out_hidden_size=32 * 4,  # the tower's width after the 2x2 merge
        projector_hidden_size=64,
    )
    return instantiate(MuseSparkForConditionalGeneration, config, processor, seed)
