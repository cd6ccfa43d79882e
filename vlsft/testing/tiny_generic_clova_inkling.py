"""Tiny HyperCLOVA X SEED Vision (v2), Inkling 2, MiniMax M3 VL and Nemotron 3 Nano Omni models, each the family's
real model class built from its config class with random weights and its real processor class (real image processor)
with a tokenizer trained in-process. TRL ships no template of these checkpoints: each builder writes the family's chat
format as its checkpoints render it, and says where that comes from."""

from __future__ import annotations

from transformers import (
    HyperCLOVAXVisionV2Config,
    HyperCLOVAXVisionV2ForConditionalGeneration,
    HyperCLOVAXVisionV2Processor,
    Inkling2Config,
    Inkling2ForConditionalGeneration,
    Inkling2ImageProcessor,
    Inkling2Processor,
    MiniMaxM3SparseForConditionalGeneration,
    MiniMaxM3VLConfig,
    MiniMaxM3VLImageProcessor,
    MiniMaxM3VLProcessor,
    MiniMaxM3VLVideoProcessor,
    NemotronH_Omni_Reasoning_V3,
    NemotronH_Omni_Reasoning_V3_Config,
    NemotronH_Omni_Reasoning_V3ImageProcessor,
    NemotronH_Omni_Reasoning_V3Processor,
    NemotronH_Omni_Reasoning_V3VideoProcessor,
    ParakeetFeatureExtractor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer
from vlsft.testing.tiny_generic_kimi_step_exaone import _content_items

# Images of 28 to 56 px a side: 14 px patches merged 2x2, as in the checkpoints (1 to 4 tokens each).
_QWEN_STYLE_VISION = dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                          size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})


# -- HyperCLOVA X SEED Vision (v2) ---------------------------------------------------------------------------------

# HyperCLOVA X SEED's chat format, written for these tests (the checkpoint's template cannot be downloaded here) from
# the model cards and the usage they show: ChatML turns `<|im_start|>role\n` ... `<|im_end|>\n`, an assistant turn
# closed by `<|im_end|><|endofturn|>` (generation stops on `<|endofturn|>`, the checkpoints' `stop_strings`), and
# images as `<|IMAGE_PAD|>` (the processor expands it; its token in transformers' tests of the 32B checkpoint). So a
# turn's supervised text ends with `<|im_end|><|endofturn|>`, the two tokens the model writes before it stops.
HYPERCLOVAX_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    + _content_items("<|IMAGE_PAD|>") +
    "{%- if message.role == 'assistant' -%}{{ '<|im_end|><|endofturn|>\\n' }}"
    "{%- else -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_tiny_hyperclovax_vision_v2(seed: int = 0, hidden_size: int = HIDDEN):
    """HyperCLOVA X SEED Think 32B: `HyperCLOVAXVisionV2ForConditionalGeneration` (a Qwen2.5-VL windowed ViT with its
    patch merger, a linear `projector`, a HyperCLOVA X language model: muP multipliers and peri-layer norms) +
    `HyperCLOVAXVisionV2Processor` over Qwen2-VL's image and video processors (as its auto mapping pairs them), with
    `HYPERCLOVAX_FORMAT_TEMPLATE`."""
    named = {"image_token": "<|IMAGE_PAD|>", "video_token": "<|VIDEO_PAD|>"}
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|endofturn|>", "<|stop|>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|endofturn|>", pad_token="<|endoftext|>")
    processor = HyperCLOVAXVisionV2Processor(
        image_processor=Qwen2VLImageProcessor(**_QWEN_STYLE_VISION),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**_QWEN_STYLE_VISION),
        chat_template=HYPERCLOVAX_FORMAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = HyperCLOVAXVisionV2Config(
        text_config=dict(
            model_type="hyperclovax",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            # muP multipliers of the checkpoints' kind (not 1), so a step exercises them.
            embedding_multiplier=2.0, logits_scaling=0.5, residual_multiplier=0.5,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=56, out_hidden_size=hidden_size, fullatt_block_indexes=[1],
        ),
        image_token_id=ids("<|IMAGE_PAD|>"),
        video_token_id=ids("<|VIDEO_PAD|>"),
        tie_word_embeddings=False,
    )
    return instantiate(HyperCLOVAXVisionV2ForConditionalGeneration, config, processor, seed)


# -- Inkling 2 -----------------------------------------------------------------------------------------------------

# Inkling 2's chat format, written for these tests (no checkpoint template can be downloaded here). Its tokenizer is
# o200k's (a 201,024-row vocabulary, `<|unused_200054|>` its image token and id 200006, `<|start|>` there, its eos),
# so this is the harmony layout of those control tokens: `<|start|>role<|message|>` ... `<|end|>` for each turn, the
# generation prompt `<|start|>assistant`, and images as `<|unused_200054|>` (the processor expands it to one token per
# 40 px cell). A turn's supervised text is `<|message|>` + its text + `<|end|>`.
INKLING2_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|start|>' + message.role + '<|message|>' }}"
    + _content_items("<|unused_200054|>") +
    "{{ '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start|>assistant' }}{%- endif -%}"
)


def build_tiny_inkling2(seed: int = 0, hidden_size: int = HIDDEN):
    """Inkling 2: `Inkling2ForConditionalGeneration` (a ViT of 20 px patches with 2D rope and a 2x2 merging MLP
    projector, the `merger` of its `vision_tower`; a hybrid language model: one sliding-window layer then one global
    layer, both with short convolutions, relative-position logits and attention sinks, mixture-of-experts MLPs of 4
    routed experts, 2 per token; its logits softcapped and cut to the unpadded vocabulary) + `Inkling2Processor` with
    its own image processor, with `INKLING2_FORMAT_TEMPLATE`. The head keeps 8 padding rows beyond the tokenizer's
    vocabulary, as the checkpoints do (their logits are cut off before the loss)."""
    special = ["<|endoftext|>", "<|start|>", "<|message|>", "<|end|>", "<|unused_200054|>"]
    tokenizer = _byte_level_tokenizer(special, {}, eos_token="<|end|>", pad_token="<|endoftext|>")
    processor = Inkling2Processor(
        image_processor=Inkling2ImageProcessor(), tokenizer=tokenizer, chat_template=INKLING2_FORMAT_TEMPLATE,
        image_token="<|unused_200054|>",
    )
    sizes = language_model_sizes(hidden_size)
    heads = dict(num_attention_heads=sizes["num_attention_heads"], num_key_value_heads=2, head_dim=16)
    config = Inkling2Config(
        text_config=dict(
            vocab_size=len(tokenizer) + 8,
            unpadded_vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=2,
            layer_types=["hybrid_sliding", "hybrid"],
            n_layers_per_attn_res_block=1,
            **heads, **{f"swa_{k}": v for k, v in heads.items()},
            sliding_window_size=16, rel_extent=16, d_rel=4,
            moe_intermediate_size=hidden_size, n_routed_experts=4, num_experts_per_tok=2,
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=20, spatial_merge_size=2,
            posemb_grid_size=4, projection_hidden_dim=32, text_hidden_size=hidden_size,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<|unused_200054|>"),
    )
    return instantiate(Inkling2ForConditionalGeneration, config, processor, seed)


# -- MiniMax M3 VL -------------------------------------------------------------------------------------------------

# MiniMax's chat format (M1/M2's, as their checkpoints render it, without the reasoning block), written for these tests
# (the M3 checkpoint's template cannot be downloaded here): `]~!b[` opens the conversation, `]~b]role\n` each turn
# (the assistant's role is `ai`) and `[e~[\n` closes it (`[e~[`, the eos); images are `]<]image[>[`, which the processor
# expands between `]<]start of image[>[` and `]<]end of image[>[`. A turn's supervised text ends with `[e~[`.
MINIMAX_M3_FORMAT_TEMPLATE = (
    "{{- ']~!b[' -}}"
    "{%- for message in messages -%}"
    "{{ ']~b]' + ('ai' if message.role == 'assistant' else message.role) + '\\n' }}"
    + _content_items("]<]image[>[") +
    "{{ '[e~[\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ']~b]ai\\n' }}{%- endif -%}"
)


def build_tiny_minimax_m3_vl(seed: int = 0, hidden_size: int = HIDDEN):
    """MiniMax M3 VL: `MiniMaxM3SparseForConditionalGeneration` (a ViT of 14 px patches with 2D rope, a two-stage GELU
    `multi_modal_projector` that merges 2x2 patches, a MiniMax M3 language model: one dense layer then one
    mixture-of-experts layer of 4 routed experts, 2 per token, and a shared expert; full attention, then the lightning
    indexer's block-sparse attention; partial rope; SwiGLU-OAI) +
    `MiniMaxM3VLProcessor` with its own image and video processors, with `MINIMAX_M3_FORMAT_TEMPLATE`. Images of 28
    to 56 px a side (1 to 4 tokens)."""
    markers = [MiniMaxM3VLProcessor.IMAGE_TOKEN, MiniMaxM3VLProcessor.VIDEO_TOKEN,
               MiniMaxM3VLProcessor.VISION_START_TOKEN, MiniMaxM3VLProcessor.VISION_END_TOKEN]
    special = ["<pad>", "]~!b[", "]~b]", "[e~[", *markers]
    tokenizer = _byte_level_tokenizer(special, {}, bos_token="]~!b[", eos_token="[e~[", pad_token="<pad>")
    vision = dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                  size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})
    processor = MiniMaxM3VLProcessor(
        image_processor=MiniMaxM3VLImageProcessor(**vision),
        tokenizer=tokenizer,
        video_processor=MiniMaxM3VLVideoProcessor(**vision),
        chat_template=MINIMAX_M3_FORMAT_TEMPLATE,
    )
    sizes = language_model_sizes(hidden_size)
    config = MiniMaxM3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **sizes,
            mlp_layer_types=["dense", "sparse"],
            # A full-attention layer, then one with the lightning indexer's block-sparse attention (blocks of 4 tokens,
            # the top 2 and the local one kept), as the checkpoints interleave them.
            layer_types=["full_attention", "minimax_m3_sparse"],
            index_n_heads=2, index_head_dim=16, index_block_size=4, index_topk_blocks=2, index_local_blocks=1,
            dense_intermediate_size=sizes["intermediate_size"], shared_intermediate_size=hidden_size,
            num_local_experts=4, num_experts_per_tok=2, rotary_dim=8,
            # Without the load-balancing loss (the checkpoint's coefficient is 0.001): it is a mean per micro-batch,
            # so with it a batch of 2 cannot equal 2 accumulated micro-batches of 1.
            router_aux_loss_coef=0.0,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(markers[0]),
        video_token_index=tokenizer.convert_tokens_to_ids(markers[1]),
        projector_hidden_size=32,
        tie_word_embeddings=False,
    )
    return instantiate(MiniMaxM3SparseForConditionalGeneration, config, processor, seed)


# -- Nemotron 3 Nano Omni ------------------------------------------------------------------------------------------

# Nemotron 3 Nano's chat format in its non-reasoning form (TRL's `nemotron_3_nano.jinja` writes the same ChatML turns,
# but reads content as a string only and drops earlier reasoning), written for these tests since the Omni checkpoint's
# own template cannot be downloaded here: `<|im_start|>role\n` ... `<|im_end|>\n` for each turn, an assistant turn
# opened by an empty reasoning block `<think></think>` (which the generation prompt writes too, so it is context), and
# images as `<image>` (the processor expands it to `<img>` + its context tokens + `</img>`). A turn's supervised text
# ends with `<|im_end|>`.
NEMOTRON_H_OMNI_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.role == 'assistant' -%}{{ '<think></think>' }}{%- endif -%}"
    + _content_items("<image>") +
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think></think>' }}{%- endif -%}"
)


def build_tiny_nemotron_h_omni(seed: int = 0, hidden_size: int = HIDDEN):
    """Nemotron 3 Nano Omni: `NemotronH_Omni_Reasoning_V3` (a RADIO ViT of 16 px patches, a pixel-shuffle
    `multi_modal_projector`, a Nemotron-H hybrid language model: a Mamba-2 layer, a mixture-of-experts layer of 4
    routed experts, 2 per token, with a shared expert, and an attention layer) + `NemotronH_Omni_Reasoning_V3Processor`
    with its own image and video processors and Parakeet's feature extractor, with `NEMOTRON_H_OMNI_FORMAT_TEMPLATE`.
    Images of 4 to 16 patches, shuffled by 0.5: 1 to 4 tokens. Built without its audio tower (a config without
    `audio_config` has none): vlsft refuses audio by row."""
    named = {"image_token": "<image>", "video_token": "<video>", "audio_token": "<so_embedding>",
             "image_start_token": "<img>", "image_end_token": "</img>"}
    special = ["<unk>", "<s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<so_start>", "<so_end>",
               *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, bos_token="<s>", eos_token="<|im_end|>", pad_token="<unk>")
    patches = dict(patch_size=16, downsample_ratio=0.5)
    processor = NemotronH_Omni_Reasoning_V3Processor(
        image_processor=NemotronH_Omni_Reasoning_V3ImageProcessor(**patches, min_num_patches=4, max_num_patches=16),
        video_processor=NemotronH_Omni_Reasoning_V3VideoProcessor(**patches, video_target_num_patches=16),
        tokenizer=tokenizer,
        feature_extractor=ParakeetFeatureExtractor(),
        chat_template=NEMOTRON_H_OMNI_FORMAT_TEMPLATE,
    )
    sizes = language_model_sizes(hidden_size)
    config = NemotronH_Omni_Reasoning_V3_Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            layers_block_type=["linear_attention", "moe", "full_attention"],
            **{k: sizes[k] for k in ("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                                     "max_position_embeddings")},
            ssm_state_size=16, mamba_num_heads=8, mamba_head_dim=16, n_groups=2,
            chunk_size=16,
            n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size,
            moe_shared_expert_intermediate_size=hidden_size,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=64,
            max_img_size=64, num_cls_tokens=1, num_registers=1, video_temporal_patch_size=2,
        ),
        audio_config=None,
        vision_hidden_size=32,
        projector_hidden_size=32,
        downsample_ratio=0.5,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        audio_token_id=tokenizer.convert_tokens_to_ids("<so_embedding>"),
        tie_word_embeddings=False,
    )
    return instantiate(NemotronH_Omni_Reasoning_V3, config, processor, seed)
