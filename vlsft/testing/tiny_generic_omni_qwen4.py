"""Tiny Qwen2.5-Omni thinker, Qwen4-Exp, Cosmos3 (reasoner) and GLM-GA models, each the family's real model class
built from its config class with random weights and its real processor class (real image processor) with a tokenizer
trained in-process; each builder says where its chat format comes from."""

from __future__ import annotations

from transformers import (
    Cosmos3OmniConfig,
    Cosmos3OmniForConditionalGeneration,
    Glm46VForConditionalGeneration,
    Glm46VProcessor,
    GlmgaConfig,
    GlmgaImageProcessor,
    GlmgaVideoProcessor,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen4ExpConfig,
    Qwen4ExpForConditionalGeneration,
    WhisperFeatureExtractor,
)

from vlsft.testing.tiny_build import HIDDEN, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer, trl_template
from vlsft.testing.tiny_generic_qwen2_glm import glm4_5v_format_template, glm_config, glm_processor
from vlsft.testing.tiny_qwen import qwen3_5_processor, qwen3_5_text_config
from vlsft.testing.tiny_qwen3_vl import (
    build_tiny_qwen3_vl_processor,
    qwen_vision_token_ids,
    tiny_qwen3_vision_config,
    tiny_qwen3_vl_config,
)
from vlsft.testing.tiny_tokenizers import FAMILY_CORPUS, train_qwen3_5_tokenizer

# -- Qwen2.5-Omni's thinker ----------------------------------------------------------------------------------------

# Qwen2.5-VL's template (TRL's `qwen2_5_vl.jinja`) writes each image and video between `<|vision_start|>` and
# `<|vision_end|>` around `<|image_pad|>` / `<|video_pad|>`; Qwen2.5-Omni's checkpoint template is the same text with
# Qwen2.5-Omni's own tokens, an audio counter, and an audio item before the video item.
_QWEN2_5_VL_TO_OMNI = {
    "<|vision_start|><|image_pad|><|vision_end|>": "<|vision_bos|><|IMAGE|><|vision_eos|>",
    "<|vision_start|><|video_pad|><|vision_end|>": "<|vision_bos|><|VIDEO|><|vision_eos|>",
    "{% set image_count = namespace(value=0) %}":
        "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}",
    "{% elif content['type'] == 'video' or 'video' in content %}":
        "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
        "{% set audio_count.value = audio_count.value + 1 %}"
        "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
        "{% elif content['type'] == 'video' or 'video' in content %}",
}


def qwen2_5_omni_format_template() -> str:
    """Qwen2.5-Omni's chat template as its checkpoints (Qwen/Qwen2.5-Omni-3B, -7B) ship it: ChatML with the default
    system prompt `You are a helpful assistant.`, images as `<|vision_bos|><|IMAGE|><|vision_eos|>`, audio as
    `<|audio_bos|><|AUDIO|><|audio_eos|>`, videos as `<|vision_bos|><|VIDEO|><|vision_eos|>`; no tool calls. Built from
    Qwen2.5-VL's template as TRL ships it (the same text but for those tokens and the audio item), which the checkpoint
    template cannot be downloaded here to compare with."""
    template = trl_template("qwen2_5_vl")
    for qwen2_5_vl, omni in _QWEN2_5_VL_TO_OMNI.items():
        if template.count(qwen2_5_vl) != 1:
            raise ValueError(f"TRL's qwen2_5_vl.jinja changed: {qwen2_5_vl!r} is not written once")
        template = template.replace(qwen2_5_vl, omni)
    return template


def build_tiny_qwen2_5_omni_thinker(seed: int = 0, hidden_size: int = HIDDEN):
    """Qwen2.5-Omni's thinker: `Qwen2_5OmniThinkerForConditionalGeneration` (Qwen2.5-VL's windowed ViT with its patch
    merger, a Whisper-style audio encoder, a Qwen2 language model with 3D rope) + `Qwen2_5OmniProcessor` (Qwen2-VL's
    image and video processors, Whisper's feature extractor), with `qwen2_5_omni_format_template()`. Images of 28 to
    56 px: 14 px patches merged 2x2 (1 to 4 tokens). vlsft trains it on text and images; a row with audio is refused
    by row (its placeholders would have no features behind them)."""
    named = {
        "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "audio_token": "<|AUDIO|>",
        "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
    }
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    vision = dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                  size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        video_processor=Qwen2VLVideoProcessor(**vision),
        feature_extractor=WhisperFeatureExtractor(feature_size=16),
        tokenizer=tokenizer,
        chat_template=qwen2_5_omni_format_template(),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5OmniThinkerConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=56, out_hidden_size=hidden_size, fullatt_block_indexes=[1],
        ),
        audio_config=dict(
            num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
            output_dim=hidden_size,
        ),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_token_index=ids("<|AUDIO|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        user_token_id=ids("user"),
        tie_word_embeddings=False,
    )
    return instantiate(Qwen2_5OmniThinkerForConditionalGeneration, config, processor, seed)


# -- Qwen4-Exp -----------------------------------------------------------------------------------------------------


def build_tiny_qwen4_exp(seed: int = 0, hidden_size: int = HIDDEN, template: str = "qwen3_8"):
    """Qwen4-Exp: `Qwen4ExpForConditionalGeneration` (Qwen3.5's vision tower; a language model of hyper-connected
    residual streams: one GatedDeltaNet layer with a per-layer n-gram embedding (PLE), then one full-attention layer
    with its QSA token indexer, each with a mixture of 4 experts, 2 per token, and a shared expert) +
    `Qwen3VLProcessor` over Qwen3.5's tokenizer, as transformers' auto mappings pair them (its default vision token ids
    are Qwen3.5's). Its checkpoint's template cannot be downloaded here: `template` is a Qwen3.5-generation template as
    TRL ships it, by default the newest (`qwen3_8`, which keeps earlier reasoning, so every row meets the prefix
    rule)."""
    processor = qwen3_5_processor(train_qwen3_5_tokenizer(), template)
    tokenizer = processor.tokenizer
    vision = tiny_qwen3_vision_config(hidden_size)
    vision.pop("deepstack_visual_indexes")
    text = qwen3_5_text_config(tokenizer, hidden_size, moe=True)
    text.update(
        layer_types=["linear_attention", "indexed_attention"],
        # QSA: each query attends to the top blocks of 4 keys (16 tokens), one 16-dim index key head.
        indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=16, indexer_compress_ratio=4,
        # 2 residual streams; the n-gram embedding on the GatedDeltaNet layer, over 2 hashed tables per n-gram order.
        hc_count=2, hc_lowrank=8, ple_layer_ids=[1], heads_per_ngram=2, ngram_vocab_size_base=101,
        make_ngram_vocab_size_divisible_by=8, split_ngram_parts=1,
        # Without the load-balancing loss: a mean per micro-batch, so a batch of 2 could not equal 2 accumulated
        # micro-batches of 1. `router_aux_loss_coef` in the recipe turns it on.
        router_aux_loss_coef=0.0,
    )
    config = Qwen4ExpConfig(
        text_config=text, vision_config=vision, **qwen_vision_token_ids(tokenizer), tie_word_embeddings=False
    )
    return instantiate(Qwen4ExpForConditionalGeneration, config, processor, seed)


# -- Cosmos3 (Nano, Super): its reasoner ---------------------------------------------------------------------------


def build_tiny_cosmos3_omni(seed: int = 0, hidden_size: int = HIDDEN):
    """Cosmos3's reasoner: `Cosmos3OmniForConditionalGeneration` (Qwen3-VL's architecture, DeepStack mergers
    included: transformers loads only the reasoner tower of the unified Cosmos3 checkpoint) + `Qwen3VLProcessor` with
    Qwen3-VL's stock template. transformers maps `cosmos3_omni` to no processor class but to Qwen3-VL's parts
    (Qwen2-VL's image processor, Qwen3-VL's video processor, Qwen2's tokenizer, Qwen3-VL's vision token ids); NVIDIA's
    Cosmos3 tooling takes its tokenizer and processor files from Qwen/Qwen3-VL-8B-Instruct by default, so its
    checkpoints' `AutoProcessor` is Qwen3-VL's, with its template."""
    processor = build_tiny_qwen3_vl_processor(extra_text=FAMILY_CORPUS)
    qwen3_vl = tiny_qwen3_vl_config(processor.tokenizer, hidden_size)
    config = Cosmos3OmniConfig(
        text_config=qwen3_vl.text_config.to_dict(),
        vision_config=qwen3_vl.vision_config.to_dict(),
        **qwen_vision_token_ids(processor.tokenizer),
        tie_word_embeddings=False,
    )
    return instantiate(Cosmos3OmniForConditionalGeneration, config, processor, seed)


# -- GLM-GA --------------------------------------------------------------------------------------------------------


def build_tiny_glmga(seed: int = 0, hidden_size: int = HIDDEN, patch_expand_factor: int = 1):
    """GLM-GA (`glmga`): GLM-4.6V's model (`Glm46VForConditionalGeneration`, as transformers' auto mapping loads it)
    with its own image and video processors (`GlmgaImageProcessor`: images resized to multiples of
    `patch_size * merge_size * patch_expand_factor`; `GlmgaVideoProcessor`: its own frame sampling), in GLM-4.6V's
    `Glm46VProcessor` (transformers maps `glmga` to no processor class), with GLM-4.5V/4.6V's chat format
    (`glm4_5v_format_template()`; the checkpoint's own template cannot be downloaded here). What sets it apart from
    GLM-4.6V is its processors: the model, tokens and chat format are GLM-4.6V's."""
    processor = glm_processor(
        Glm46VProcessor, GlmgaImageProcessor, GlmgaVideoProcessor, glm4_5v_format_template(), glm4_5=True
    )
    processor.image_processor.patch_expand_factor = patch_expand_factor
    config = glm_config(GlmgaConfig, processor.tokenizer, hidden_size)
    return instantiate(Glm46VForConditionalGeneration, config, processor, seed)
