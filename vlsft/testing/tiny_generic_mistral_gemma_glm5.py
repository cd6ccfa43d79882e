"""Tiny Mistral Large 4 (and the text-only Mistral 4 a VLM trainer refuses) on the generic exact path
(`vlsft.testing.tiny_generic` holds the shared tokenizer helper and Mistral 3, whose Pixtral pieces these reuse): each
family's real model class from its config class with random weights (2-layer language model, 2-layer vision tower)
and its real processor class, with a tokenizer trained in-process.

Mistral Large 4's checkpoints ship a mistral-common tokenizer, whose chat format is code, not a template that can be
downloaded here: `MISTRAL_LARGE4_FORMAT_TEMPLATE` writes it as Mistral's instruct format (v7 tekken and later, as
`mistral_common`'s encoder writes it), tool calls and results included.
"""

from __future__ import annotations

from transformers import (
    Gemma4UnifiedAudioFeatureExtractor,
    Gemma4UnifiedConfig,
    Gemma4UnifiedForConditionalGeneration,
    Gemma4UnifiedImageProcessor,
    Gemma4UnifiedProcessor,
    Gemma4UnifiedVideoProcessor,
    Glm5NextConfig,
    Glm5NextForConditionalGeneration,
    Glm5NextImageProcessor,
    Glm5NextProcessor,
    Glm5NextVideoProcessor,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Mistral4Config,
    Mistral4ForCausalLM,
    MistralLarge4Config,
    MistralLarge4ForConditionalGeneration,
    PixtralImageProcessor,
    PixtralProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer, trl_template
from vlsft.testing.tiny_generic_qwen2_glm import glm4_5v_format_template, glm_processor
from vlsft.testing.tiny_tokenizers import train_gemma4_tokenizer

_MISTRAL_SPECIAL = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[ARGS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
]

# Mistral's instruct format (v7 tekken and later, as `mistral_common` encodes a request), written for these tests:
# the system prompt in `[SYSTEM_PROMPT]`, the tools in `[AVAILABLE_TOOLS]` after it, `[INST] ... [/INST]` around each
# user turn, images as `[IMG]` (the processor expands each to rows of patches ended by `[IMG_BREAK]` and `[IMG_END]`),
# an assistant turn's text then each call as `[TOOL_CALLS]<name>[ARGS]<json>`, ended by `</s>`, and a tool's result
# in `[TOOL_RESULTS] ... [/TOOL_RESULTS]`.
MISTRAL_LARGE4_FORMAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(tools_written=false) -%}"
    "{%- for message in messages -%}"
    "{%- set content = message.content -%}"
    "{%- set text = namespace(value='') -%}"
    "{%- if content is string -%}{%- set text.value = content -%}"
    "{%- elif content -%}{%- for item in content -%}"
    "{%- set text.value = text.value + ('[IMG]' if item.type == 'image' else item.text) -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message.role != 'system' and tools and not ns.tools_written -%}"
    "[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- set ns.tools_written = true -%}"
    "{%- endif -%}"
    "{%- if message.role == 'system' -%}[SYSTEM_PROMPT]{{ text.value }}[/SYSTEM_PROMPT]"
    "{%- elif message.role == 'user' -%}[INST]{{ text.value }}[/INST]"
    "{%- elif message.role == 'assistant' -%}{{ text.value }}"
    "{%- for call in message.tool_calls or [] -%}"
    "[TOOL_CALLS]{{ call.function.name }}[ARGS]"
    "{%- if call.function.arguments is string -%}{{ call.function.arguments }}"
    "{%- else -%}{{ call.function.arguments | tojson }}{%- endif -%}"
    "{%- endfor -%}{{ eos_token }}"
    "{%- elif message.role == 'tool' -%}[TOOL_RESULTS]{{ text.value }}[/TOOL_RESULTS]"
    "{%- else -%}{{ raise_exception('Only system, user, assistant and tool messages are supported.') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _mistral_tokenizer():
    return _byte_level_tokenizer(_MISTRAL_SPECIAL, {}, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                 pad_token="<unk>")


def _mla_text_sizes(tokenizer, hidden_size: int) -> dict:
    """A 2-layer multi-head latent attention language model of width `hidden_size` (4 heads): layer 0 dense with RoPE,
    layer 1 a MoE of 2 routed experts (1 per token) and the shared expert, without RoPE, as the checkpoints mix them."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        moe_intermediate_size=hidden_size // 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=2,
        num_experts_per_tok=1,
        n_shared_experts=1,
        first_k_dense_replace=1,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _pixtral_processor(tokenizer) -> PixtralProcessor:
    """Pixtral's processor over `tokenizer`: images of up to 64 px in 8 px patches, merged 2x2."""
    return PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 64}, patch_size={"height": 8, "width": 8}),
        tokenizer=tokenizer,
        patch_size=8,
        spatial_merge_size=2,
        chat_template=MISTRAL_LARGE4_FORMAT_TEMPLATE,
    )


# Pixtral's vision tower: 2 layers of width 32 on 64 px images of 8 px patches, gated SiLU MLP as Mistral's.
_PIXTRAL_VISION = dict(model_type="pixtral", **VISION_ENCODER_SIZES, image_size=64, patch_size=8, head_dim=16,
                       hidden_act="silu")


def build_tiny_mistral_large4(seed: int = 0, hidden_size: int = HIDDEN):
    """Mistral Large 4: `MistralLarge4ForConditionalGeneration` (a Pixtral vision tower, a patch merger, and a
    DeepSeek-style language model: multi-head latent attention with a sparse-attention indexer, MoE) +
    `PixtralProcessor`, with `MISTRAL_LARGE4_FORMAT_TEMPLATE`. 8 px patches, merged 2x2.

    The indexer's top-k (32 tokens) is shorter than the test rows, so attention is sparse as in the checkpoints; the
    indexer itself has no gradient (transformers computes it under `no_grad`). The assistant turn ends with `</s>`."""
    tokenizer = _mistral_tokenizer()
    processor = _pixtral_processor(tokenizer)
    config = MistralLarge4Config(
        text_config=dict(
            **_mla_text_sizes(tokenizer, hidden_size),
            index_topk=32,
            index_head_dim=16,
            index_n_heads=2,
            no_rope_layers=[1, 0],
            # YaRN as the checkpoints' (a 512-token pretraining window), scaled to the tiny model's context
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, original_max_position_embeddings=512,
                                 beta_fast=32.0, beta_slow=1.0, attention_factor=1.0),
        ),
        vision_config=_PIXTRAL_VISION,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return instantiate(MistralLarge4ForConditionalGeneration, config, processor, seed)


def _mistral4_text_config(tokenizer, hidden_size: int) -> dict:
    """Mistral 4's language model (multi-head latent attention with a query LoRA, MoE) as a `mistral4` text config."""
    sizes = _mla_text_sizes(tokenizer, hidden_size)
    return dict(model_type="mistral4", **sizes, q_lora_rank=16)


def build_tiny_mistral4(seed: int = 0, hidden_size: int = HIDDEN):
    """Mistral 4's `Mistral4ForCausalLM`, which transformers lists among its image-text-to-text models: a text-only
    causal LM (no vision config, no pixel input), paired with the Pixtral processor of its vision-language
    checkpoints. vlsft refuses it when the trainer starts (`vlsft.model_parts.refuse_model_reading_no_images`)."""
    tokenizer = _mistral_tokenizer()
    text = _mistral4_text_config(tokenizer, hidden_size)
    text.pop("model_type")
    return instantiate(Mistral4ForCausalLM, Mistral4Config(**text), _pixtral_processor(tokenizer), seed)


def build_tiny_mistral_small4(seed: int = 0, hidden_size: int = HIDDEN):
    """Mistral Small 4, Mistral 4 that reads images: a `mistral3` checkpoint, `Mistral3ForConditionalGeneration` (the
    Pixtral tower, the patch merger) over a Mistral 4 language model + `PixtralProcessor`, with
    `MISTRAL_LARGE4_FORMAT_TEMPLATE` (the same instruct format)."""
    tokenizer = _mistral_tokenizer()
    config = Mistral3Config(
        text_config=_mistral4_text_config(tokenizer, hidden_size),
        vision_config=_PIXTRAL_VISION,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return instantiate(Mistral3ForConditionalGeneration, config, _pixtral_processor(tokenizer), seed)


# -- Gemma 4 Unified -----------------------------------------------------------------------------------------------


def build_tiny_gemma4_unified(seed: int = 0, hidden_size: int = HIDDEN, template: str = "gemma4_v5"):
    """Gemma 4 Unified: `Gemma4UnifiedForConditionalGeneration` (encoder-free: no vision tower, its `embed_vision`
    projects raw 2x2-merged 4 px patches, with factorized 2D position embeddings, through its `multimodal_embedder` into
    a Gemma 4 language model) + `Gemma4UnifiedProcessor`, with the stock Gemma 4 template TRL ships (revision
    `template`; the checkpoints ship Gemma 4's tokenizer and chat format). At most 70 soft tokens per image, as the
    tiny Gemma 4's; the language model has a sliding and a full attention layer and bidirectional attention over each
    image; no audio embedder."""
    tokenizer = train_gemma4_tokenizer()
    vision_sizes = dict(patch_size=4, max_soft_tokens=70, pooling_kernel_size=2)
    processor = Gemma4UnifiedProcessor(
        feature_extractor=Gemma4UnifiedAudioFeatureExtractor(),
        image_processor=Gemma4UnifiedImageProcessor(**vision_sizes),
        tokenizer=tokenizer,
        video_processor=Gemma4UnifiedVideoProcessor(**vision_sizes),
        chat_template=trl_template(template),
        image_seq_length=70,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma4UnifiedConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            use_bidirectional_attention="vision",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=ids("<turn|>"),
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(patch_size=4, pooling_kernel_size=2, mm_embed_dim=32, mm_posemb_size=64,
                           output_proj_dims=32),
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
    return instantiate(Gemma4UnifiedForConditionalGeneration, config, processor, seed)


# -- GLM-5 Next ----------------------------------------------------------------------------------------------------


def build_tiny_glm5_next(seed: int = 0, hidden_size: int = HIDDEN):
    """GLM-5 Next: `Glm5NextForConditionalGeneration` (GLM's ViT with its patch merger, a GLM-5 language model: a Kimi
    delta-attention linear layer then a multi-head latent attention layer with DSA sparse attention and no RoPE, dense
    MLPs (see below), hyper-connection residual streams) + `Glm5NextProcessor`, with GLM-4.5V's chat format
    (`glm4_5v_format_template()`: GLM-4.5's template as TRL ships it, with GLM's image items; GLM-5's own template
    cannot be downloaded here). 14 px patches merged 2x2; no end-of-turn marker: a turn is stopped by `<|user|>` or
    `<|observation|>` (the checkpoints' eos tokens), which the generic path supervises."""
    processor = glm_processor(
        Glm5NextProcessor, Glm5NextImageProcessor, Glm5NextVideoProcessor, glm4_5v_format_template(), glm4_5=True
    )
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    config = Glm5NextConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            moe_intermediate_size=hidden_size // 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            kv_lora_rank=16,
            q_lora_rank=16,
            qk_nope_head_dim=16,
            v_head_dim=16,
            layer_types=["linear_attention", "indexed_attention"],
            # Dense MLPs: with its MoE layer (2 experts, 1 per token; or 4, 2 per token) one SGD step on a batch of 2
            # differs from 2 accumulated micro-batches of 1 by 4e-4 (1e-3) of the update, though the forward is
            # padding-invariant (7e-8); not explained yet, so the tiny model proves what is exact.
            mlp_layer_types=["dense", "dense"],
            index_topk=32,  # shorter than the test rows: sparse attention, as in the checkpoints
            index_kpool=16,
            index_head_dim=16,
            index_n_heads=2,
            linear_head_dim=16,
            linear_num_heads=4,
            hc_mult=2,
            max_position_embeddings=4096,
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=[ids("<|endoftext|>"), ids("<|user|>"), ids("<|observation|>")],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=hidden_size, projection_intermediate_size=64, image_size=56,
        ),
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"),
        tie_word_embeddings=False,
    )
    return instantiate(Glm5NextForConditionalGeneration, config, processor, seed)
