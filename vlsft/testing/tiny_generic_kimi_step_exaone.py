"""Tiny EXAONE 4.5, Kimi K2.5, Step 3.7 and Qwen3-Omni thinker models, each the family's real model class built from
its config class with random weights and its real processor class (real image processor) with a tokenizer trained
in-process. Only Qwen3-Omni's template derives from one TRL ships; for the others each builder writes the family's
chat format as its checkpoints render it, and says where that comes from."""

from __future__ import annotations

from transformers import (
    Exaone4_5_Config,
    Exaone4_5_ForConditionalGeneration,
    Exaone4_5_Processor,
    Kimi_K25Config,
    Kimi_K25ForConditionalGeneration,
    Kimi_K25ImageProcessor,
    Kimi_K25Processor,
    Kimi_K25VideoProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3OmniMoeProcessor,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
    Step3p7Config,
    Step3p7ForConditionalGeneration,
    Step3p7ImageProcessor,
    Step3p7Processor,
    WhisperFeatureExtractor,
)

from vlsft.testing.tiny_build import HIDDEN, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer, trl_template
from vlsft.testing.tiny_qwen3_vl import qwen_vision_token_ids, tiny_qwen3_vision_config

# Images of 28 to 56 px a side: 14 px patches merged 2x2, as in the checkpoints (1 to 4 tokens each).
_QWEN_STYLE_VISION = dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                          size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})


def _content_items(image: str) -> str:
    """A template fragment rendering `message.content` (a string, or a list of text and image items, each image as
    `image`)."""
    return (
        "{%- if message.content is string -%}{{ message.content }}"
        "{%- else -%}{%- for item in message.content -%}"
        "{%- if item.type == 'image' -%}" + image +
        "{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
    )


# -- EXAONE 4.5 ----------------------------------------------------------------------------------------------------

# EXAONE 4.x's chat format in non-reasoning mode, as transformers' Exaone4 docstring shows the checkpoint rendering it:
# `[|role|]\n` opens each turn, `[|endofturn|]\n` closes it, and an assistant turn starts with an empty reasoning block
# `<think>\n\n</think>\n\n` (which the generation prompt writes too, so it is context, not supervised). Images are
# Qwen-style `<vision><|image_pad|></vision>` (the processor expands `<|image_pad|>`, its default image token).
EXAONE4_5_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '[|' + message.role + '|]\\n' }}"
    "{%- if message.role == 'assistant' -%}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
    + _content_items("<vision><|image_pad|></vision>") +
    "{{ '[|endofturn|]\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '[|assistant|]\\n<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
)


def build_tiny_exaone4_5(seed: int = 0, hidden_size: int = HIDDEN):
    """EXAONE 4.5: `Exaone4_5_ForConditionalGeneration` (a Qwen2.5-VL-style windowed ViT with a patch merger, an
    EXAONE 4 language model: one sliding-window layer, one global) + `Exaone4_5_Processor` over Qwen2-VL's image and
    video processors (as its auto mapping pairs them), with `EXAONE4_5_FORMAT_TEMPLATE`."""
    named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    special = ["[PAD]", "[BOS]", "[|endofturn|]", "[|system|]", "[|user|]", "[|assistant|]", "[|tool|]",
               "<think>", "</think>", "<vision>", "</vision>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, bos_token="[BOS]", eos_token="[|endofturn|]", pad_token="[PAD]")
    processor = Exaone4_5_Processor(
        image_processor=Qwen2VLImageProcessor(**_QWEN_STYLE_VISION),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**_QWEN_STYLE_VISION),
        chat_template=EXAONE4_5_FORMAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Exaone4_5_Config(
        text_config=dict(
            model_type="exaone4",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, num_key_value_heads=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=hidden_size,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        tie_word_embeddings=False,
    )
    return instantiate(Exaone4_5_ForConditionalGeneration, config, processor, seed)


# -- Kimi K2.5 -----------------------------------------------------------------------------------------------------

# Kimi K2's chat format with K2-Thinking's reasoning block, written for these tests: `<|im_system|>`, `<|im_user|>`,
# `<|im_assistant|>` open each turn with the role name and `<|im_middle|>`, `<|im_end|>` closes it; a conversation
# without a system message gets Kimi's default one; an assistant turn writes its (here empty) `<think></think>` block
# before its text; images are `<|media_begin|>image<|media_content|><|media_pad|><|media_end|>` (the processor expands
# `<|media_pad|>`, its default image token, as the Kimi_K25Processor's video structure writes media).
KIMI_K25_FORMAT_TEMPLATE = (
    "{%- if not messages or messages[0].role != 'system' -%}"
    "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "<|im_{{ message.role }}|>{{ message.role }}<|im_middle|>"
    "{%- if message.role == 'assistant' -%}<think></think>{%- endif -%}"
    + _content_items("<|media_begin|>image<|media_content|><|media_pad|><|media_end|>") +
    "<|im_end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}"
)
_KIMI_SIZE = dict(size={"max_height": 4, "max_width": 4}, patch_size=14, merge_size=2)


def build_tiny_kimi_k25(seed: int = 0, hidden_size: int = HIDDEN):
    """Kimi K2.5: `Kimi_K25ForConditionalGeneration` (MoonViT with 2D rope and 2x2 patch merging, a projector, a
    DeepSeek-V3 language model: multi-head latent attention, one dense layer then one mixture-of-experts layer of 4
    routed experts, 2 per token, and a shared expert) + `Kimi_K25Processor` with its own image and video processors,
    with `KIMI_K25_FORMAT_TEMPLATE`. Images of up to 56 px (4 patches of 14 px a side): at most 4 tokens."""
    named = {"image_token": "<|media_pad|>", "video_token": "<|kimi_k25_video_placeholder|>"}
    special = ["[BOS]", "[EOS]", "[PAD]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>",
               "<|im_middle|>", "<|media_begin|>", "<|media_content|>", "<|media_end|>", "<think>", "</think>",
               *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, bos_token="[BOS]", eos_token="<|im_end|>", pad_token="[PAD]")
    processor = Kimi_K25Processor(
        image_processor=Kimi_K25ImageProcessor(**_KIMI_SIZE, max_patches=16),
        tokenizer=tokenizer,
        video_processor=Kimi_K25VideoProcessor(**_KIMI_SIZE, max_patches=16),
        chat_template=KIMI_K25_FORMAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    sizes = language_model_sizes(hidden_size)
    config = Kimi_K25Config(
        text_config=dict(
            model_type="deepseek_v3",
            vocab_size=len(tokenizer),
            # Multi-head latent attention has as many key/value heads as query heads.
            **{k: sizes[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                     "max_position_embeddings")},
            num_key_value_heads=sizes["num_attention_heads"],
            moe_intermediate_size=hidden_size, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
            n_group=1, topk_group=1, first_k_dense_replace=1, num_mtp_layers=0,
            kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            patch_size=14, pos_emb_height=8, pos_emb_width=8, pos_emb_time=4, num_attention_heads=2,
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, merge_kernel_size=[2, 2],
        ),
        projection_hidden_size=32,
        image_token_id=ids("<|media_pad|>"),
        video_token_id=ids("<|kimi_k25_video_placeholder|>"),
        vision_start_token_id=ids("<|media_begin|>"),
        vision_end_token_id=ids("<|media_end|>"),
        tie_word_embeddings=False,
    )
    return instantiate(Kimi_K25ForConditionalGeneration, config, processor, seed)


# -- Step 3.7 ------------------------------------------------------------------------------------------------------

# Step 3.5/3.7-Flash's chat format, written for these tests (no checkpoint's template can be downloaded here; this is
# its reasoning-only ChatML form): `<|im_start|>role\n` ... `<|im_end|>\n` for each turn, a generation prompt that opens
# the reasoning block (`<|im_start|>assistant\n<think>\n`, since these models only reason), and an assistant turn
# written with that block closed before its text; images are `<im_patch>`, which the processor expands to its local
# crops (`<patch_start>...<patch_end>`) and global view (`<im_start>...<im_end>`). So the supervised text of a turn
# starts at `</think>` (the model closes its reasoning) and ends with `<|im_end|>`.
STEP3P7_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.role == 'assistant' -%}{{ '<think>\\n</think>\\n' }}{%- endif -%}"
    + _content_items("<im_patch>") +
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif -%}"
)


def build_tiny_step3p7(seed: int = 0, hidden_size: int = HIDDEN):
    """Step 3.7: `Step3p7ForConditionalGeneration` (a ViT with 2D rope and two strided convolutions that downsample
    its 14 px patches 4x, a linear projector, a Step 3.5 language model: one dense layer, then one mixture-of-experts
    layer of 4 routed experts, 2 per token, and a shared expert; a sliding-window layer, then a global one) +
    `Step3p7Processor` with its own image processor,
    with `STEP3P7_FORMAT_TEMPLATE`. A 112 px global view (4 tokens) and, for an elongated image, 56 px local crops
    (1 token each)."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<im_patch>", "<im_start>",
               "<im_end>", "<patch_start>", "<patch_end>", "<patch_newline>"]
    tokenizer = _byte_level_tokenizer(special, {}, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor = Step3p7Processor(
        image_processor=Step3p7ImageProcessor(size={"height": 112, "width": 112}, patch_size=56, max_image_size=224),
        tokenizer=tokenizer,
        chat_template=STEP3P7_FORMAT_TEMPLATE,
    )
    config = Step3p7Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            # Sliding-window and global attention interleaved, as in the checkpoints (3:1 there, 128-token windows).
            layer_types=["sliding_attention", "full_attention"], sliding_window=16,
            mlp_layer_types=["dense", "sparse"],
            moe_intermediate_size=hidden_size, n_routed_experts=4, num_experts_per_tok=2, share_expert_dim=hidden_size,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=112, patch_size=14, mlp_ratio=2.0,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<im_patch>"),
        tie_word_embeddings=False,
    )
    return instantiate(Step3p7ForConditionalGeneration, config, processor, seed)


# -- Qwen3-Omni's thinker ------------------------------------------------------------------------------------------

_QWEN3_VL_VIDEO_ITEM = "{%- elif content.type == 'video' or 'video' in content %}"
_OMNI_AUDIO_ITEM = (
    "{%- elif content.type == 'audio' or 'audio' in content -%}\n"
    "                    <|audio_start|><|audio_pad|><|audio_end|>\n"
    "                "
)


def qwen3_omni_format_template() -> str:
    """Qwen3-Omni's chat format: Qwen3-VL's template as TRL ships it (`qwen3_vl.jinja`: ChatML, images as
    `<|vision_start|><|image_pad|><|vision_end|>`), with audio items as Qwen3-Omni's checkpoints render them
    (`<|audio_start|><|audio_pad|><|audio_end|>`); the checkpoint's own template cannot be downloaded here."""
    template = trl_template("qwen3_vl")
    if _QWEN3_VL_VIDEO_ITEM not in template:  # in user and tool messages alike
        raise ValueError("TRL's qwen3_vl.jinja changed: its video item is no longer where Qwen3-Omni's audio item goes")
    return template.replace(_QWEN3_VL_VIDEO_ITEM, _OMNI_AUDIO_ITEM + _QWEN3_VL_VIDEO_ITEM)


def build_tiny_qwen3_omni_moe_thinker(seed: int = 0, hidden_size: int = HIDDEN):
    """Qwen3-Omni's thinker: `Qwen3OmniMoeThinkerForConditionalGeneration` (Qwen3-VL's vision tower with DeepStack
    mergers, an audio encoder, a Qwen3 mixture-of-experts language model with 3D rope: 4 experts, 2 per token) +
    `Qwen3OmniMoeProcessor` (Qwen2-VL's image and video processors, Whisper's feature extractor), with
    `qwen3_omni_format_template()`. Images of 32 to 64 px: 16 px patches merged 2x2. vlsft trains it on text and
    images; a row with audio is refused by row (its placeholders would have no features behind them)."""
    named = {
        "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "audio_token": "<|audio_pad|>",
        "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
        "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>",
    }
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
               "<tool_response>", "</tool_response>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    vision = dict(patch_size=16, merge_size=2, temporal_patch_size=2,
                  size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64})
    processor = Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        video_processor=Qwen2VLVideoProcessor(**vision),
        feature_extractor=WhisperFeatureExtractor(feature_size=16),
        tokenizer=tokenizer,
        chat_template=qwen3_omni_format_template(),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3OmniMoeThinkerConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                             "mrope_interleaved": True},
            moe_intermediate_size=hidden_size, num_experts=4, num_experts_per_tok=2,
            # Without the load-balancing loss (the checkpoint's coefficient is 0.001): it is a mean per micro-batch
            # (as TRL adds it), so with it a batch of 2 cannot equal 2 accumulated micro-batches of 1 (measured: 1.5e-4
            # of the update apart). `router_aux_loss_coef` in the recipe turns it on.
            router_aux_loss_coef=0.0,
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
        ),
        vision_config=tiny_qwen3_vision_config(hidden_size),
        audio_config=dict(
            num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
            output_dim=hidden_size, downsample_hidden_size=8,
        ),
        **{k: v for k, v in qwen_vision_token_ids(tokenizer).items() if k in ("image_token_id", "video_token_id")},
        vision_start_token_id=ids("<|vision_start|>"),
        audio_token_id=ids("<|audio_pad|>"),
        audio_start_token_id=ids("<|audio_start|>"),
        user_token_id=ids("user"),
        tie_word_embeddings=False,
    )
    return instantiate(Qwen3OmniMoeThinkerForConditionalGeneration, config, processor, seed)
