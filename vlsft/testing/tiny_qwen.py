"""Tiny Qwen-VL models other than Qwen3-VL itself (`vlsft.testing.tiny_qwen3_vl`): Qwen2.5-VL, Qwen3-VL-MoE and
Qwen3.5 (dense and MoE, with any of its template generations), each the real model class with the real processor
class and stock chat template."""

from __future__ import annotations

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from vlsft.templates import stock_template
from vlsft.testing.tiny_build import HEAD_DIM, HIDDEN, instantiate, language_model_sizes
from vlsft.testing.tiny_qwen3_vl import (
    build_tiny_qwen3_vl_processor,
    qwen_vision_token_ids,
    tiny_qwen3_vision_config,
    train_tokenizer,
)
from vlsft.testing.tiny_tokenizers import FAMILY_CORPUS, train_qwen3_5_tokenizer


def build_tiny_qwen2_5_vl(seed: int = 0, hidden_size: int = HIDDEN):
    """Qwen2.5-VL: `Qwen2_5_VLForConditionalGeneration` + `Qwen2_5_VLProcessor` (Qwen's tokenizer and tokens)."""
    tokenizer = train_tokenizer(extra_text=FAMILY_CORPUS)
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        chat_template=stock_template("qwen2_5_vl"),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            bos_token_id=None,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=64,
            fullatt_block_indexes=[1],
            out_hidden_size=hidden_size,
        ),
        **qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return instantiate(Qwen2_5_VLForConditionalGeneration, config, processor, seed)


def build_tiny_qwen3_vl_moe(seed: int = 0, hidden_size: int = HIDDEN):
    """Qwen3-VL-MoE: `Qwen3VLMoeForConditionalGeneration` (4 experts, 2 per token) with the Qwen3-VL processor and
    template, which the MoE checkpoints share."""
    processor = build_tiny_qwen3_vl_processor()
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    sizes = language_model_sizes(hidden_size)
    config = Qwen3VLMoeConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **sizes,
            moe_intermediate_size=hidden_size,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            rope_parameters={
                "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True
            },
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            bos_token_id=None,
        ),
        vision_config=tiny_qwen3_vision_config(hidden_size),
        **qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return instantiate(Qwen3VLMoeForConditionalGeneration, config, processor, seed)


# -- Qwen3.5 / 3.6 / 3.8 ---------------------------------------------------------------------------------------------


def qwen3_5_text_config(tokenizer, hidden_size: int = HIDDEN, vocab_size: int | None = None, moe: bool = False) -> dict:
    """A 2-layer Qwen3.5 text stack: one GatedDeltaNet (linear attention) layer, then one full-attention layer, as
    the real models interleave them (3 linear : 1 full). Rope on half of each head, with the 3 M-RoPE sections."""
    ids = tokenizer.convert_tokens_to_ids
    config = dict(
        vocab_size=vocab_size or len(tokenizer),
        **language_model_sizes(hidden_size),
        layer_types=["linear_attention", "full_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=HEAD_DIM,
        linear_value_head_dim=HEAD_DIM,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        pad_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        bos_token_id=None,
    )
    if moe:
        config.update(
            moe_intermediate_size=hidden_size, shared_expert_intermediate_size=hidden_size, num_experts=4,
            num_experts_per_tok=2,
        )
    return config


def qwen3_5_processor(tokenizer, template: str = "qwen3_5_think") -> Qwen3VLProcessor:
    """The real `Qwen3VLProcessor` around `tokenizer`, with the stock `template`; a 64x64 image is 4 image tokens."""
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        chat_template=stock_template(template),
    )


def build_tiny_qwen3_5(
    seed: int = 0, hidden_size: int = HIDDEN, template: str = "qwen3_5_think", moe: bool = False,
    tokenizer=None, vocab_size: int | None = None,
):
    """Qwen3.5: `Qwen3_5ForConditionalGeneration` (or, with `moe`, `Qwen3_5MoeForConditionalGeneration`: 4 experts,
    2 per token, plus the shared expert) + `Qwen3VLProcessor` with the stock `template` (`qwen3_5_think`,
    `qwen3_5_nothink`, `qwen3_6` or `qwen3_8`: one architecture, several template generations). The vision tower is
    Qwen3-VL's without DeepStack. `tokenizer` replaces the tiny one (e.g. the real vocabulary)."""
    processor = qwen3_5_processor(tokenizer or train_qwen3_5_tokenizer(), template)
    tokenizer = processor.tokenizer
    vision = tiny_qwen3_vision_config(hidden_size)
    vision.pop("deepstack_visual_indexes")
    config_class, model_class = (
        (Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration) if moe else (Qwen3_5Config, Qwen3_5ForConditionalGeneration)
    )
    config = config_class(
        text_config=qwen3_5_text_config(tokenizer, hidden_size, vocab_size, moe=moe),
        vision_config=vision,
        **qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return instantiate(model_class, config, processor, seed)
