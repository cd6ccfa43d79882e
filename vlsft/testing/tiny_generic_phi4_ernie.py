"""Tiny Phi-4-multimodal and ERNIE 4.5-VL-MoE models on the generic exact path: each family's real model class from
its config class with random weights, and its real processor class (real image processor) with a tokenizer trained
in-process (`vlsft.testing.tiny_generic._byte_level_tokenizer`).

TRL ships neither template, and no checkpoint's can be downloaded here: each is the checkpoint's template as
transformers' own sources spell it (named in each builder's docstring).
"""

from __future__ import annotations

from transformers import (
    Ernie4_5_VLMoeConfig,
    Ernie4_5_VLMoeForConditionalGeneration,
    Ernie4_5_VLMoeImageProcessor,
    Ernie4_5_VLMoeProcessor,
    Ernie4_5_VLMoeVideoProcessor,
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalImageProcessor,
    Phi4MultimodalProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer

# Phi-4-multimodal-instruct's template in transformers' format (the `chat_template` of transformers'
# tests/models/phi4_multimodal/test_processing_phi4_multimodal.py, the HF-format checkpoint's: the original
# checkpoint's Phi-4-mini template, `'<|' + role + '|>' + content + '<|end|>'`, reading content items): each message
# `<|role|>` + its items (`<|image|>`, `<|audio|>`, text) + `<|end|>`, tools after a system message's text; the
# generation prompt `<|assistant|>`, and a rendering without it ends with the eos token.
PHI4_MULTIMODAL_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'audio' %}{{ '<|audio|>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% endif %}{{ '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI4_MEDIA_TOKENS = {"image_token": "<|image|>", "audio_token": "<|audio|>"}
PHI4_CONTROL = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|/tool|>", "<|end|>"]
# The crop (the vision tower's image size) and its patch: the image processor counts 16x16 global-view tokens after
# the tower's 2x2 pooling (`num_img_tokens` = 256 + 1 + ... + 16), so a crop must be 32 patches a side.
PHI4_CROP, PHI4_PATCH = 64, 2


def build_tiny_phi4_multimodal(seed: int = 0, hidden_size: int = HIDDEN):
    """Phi-4-multimodal: `Phi4MultimodalForCausalLM` (a Phi-3-style decoder, `model.layers` with fused `qkv_proj` and
    `gate_up_proj`, whose embedding `model.embed_tokens_extend` holds the SigLIP tower `image_embed.img_processor`, its
    projector `img_projection_up`/`img_projection_down` and learned separators, and a Conformer audio encoder) +
    `Phi4MultimodalProcessor` (dynamic-HD crops of 64 px, each 32x32 patches of 2 px pooled 2x2, plus a global view),
    with `PHI4_MULTIMODAL_TEMPLATE`. A 64x64 image is 256 + 1 + 16 global tokens, 256 + 16 per crop row."""
    tokenizer = _byte_level_tokenizer(
        [*PHI4_CONTROL, *PHI4_MEDIA_TOKENS.values()], PHI4_MEDIA_TOKENS,
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    processor = Phi4MultimodalProcessor(
        image_processor=Phi4MultimodalImageProcessor(
            size={"height": PHI4_CROP, "width": PHI4_CROP}, patch_size=PHI4_PATCH, dynamic_hd=4
        ),
        audio_processor=Phi4MultimodalFeatureExtractor(),
        tokenizer=tokenizer,
        chat_template=PHI4_MULTIMODAL_TEMPLATE,
    )
    text_sizes = {k: v for k, v in language_model_sizes(hidden_size).items() if k != "head_dim"}
    config = Phi4MultimodalConfig(
        vocab_size=len(tokenizer),
        **text_sizes,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        # The checkpoint stops on `<|endoftext|>` and `<|end|>` (its default eos ids 199999 and 200020).
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")],
        vision_config=dict(
            **VISION_ENCODER_SIZES, image_size=PHI4_CROP, crop_size=PHI4_CROP, patch_size=PHI4_PATCH,
            image_token_id=tokenizer.convert_tokens_to_ids(PHI4_MEDIA_TOKENS["image_token"]),
        ),
        audio_config=dict(
            hidden_size=32, intermediate_size=32, num_blocks=1, num_attention_heads=2, ext_pw_out_channel=32,
            depthwise_separable_out_channel=32, nemo_conv_channels=32,
            audio_token_id=tokenizer.convert_tokens_to_ids(PHI4_MEDIA_TOKENS["audio_token"]),
        ),
        tie_word_embeddings=False,
    )
    # transformers 5.23's SigLIP attention here says `is_causal = True`: under SDPA a batch whose crops need no
    # padding mask gets none, and attends causally, while one with padding attends both ways, so a row's loss would
    # depend on its batch. Eager attention reads the mask alone: both ways, as the checkpoint's SigLIP was trained.
    config.vision_config._attn_implementation = "eager"
    return instantiate(Phi4MultimodalForCausalLM, config, processor, seed)


# ERNIE 4.5-VL's template: the `DEFAULT_CHAT_TEMPLATE` of transformers' `convert_ernie4_5_vl_moe_to_hf.py` (which the
# converted checkpoints ship), its line breaks written as `\n` (the script's source indents some of them). The prompt
# opens with `<|begin_of_sentence|>`; a system text is followed by a newline; a user turn is `User: ` + its items
# (`Picture N:<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>`, text); an answer `\nAssistant: ` + its text (after
# `<think>\n` + its reasoning + `\n</think>\n` where it carries any) + `<|end_of_sentence|>`. The generation prompt
# is `\nAssistant: ` then `<think>\n\n</think>\n\n` (`enable_thinking` unset or false) or `<think>` (true). Other
# roles render nothing.
ERNIE_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}{%- set video_count = namespace(value=0) -%}"
    "{{- '<|begin_of_sentence|>' }}"
    "{%- for message in messages -%}"
    "{%- if message.role in ['system', 'user'] -%}"
    "{%- if message.role == 'user' -%}{{- 'User: ' -}}{%- endif -%}"
    "{%- if message.content is string -%}{{- message.content -}}{%- else -%}"
    "{%- for content_item in message.content -%}"
    "{%- if content_item.type == 'text' -%}{{- content_item.text -}}"
    "{%- elif content_item.type in ['image_url', 'image'] -%}{%- set image_count.value = image_count.value + 1 -%}"
    "Picture {{ image_count.value }}:<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>"
    "{%- elif content_item.type in ['video_url', 'video'] -%}{%- set video_count.value = video_count.value + 1 -%}"
    "Video {{ video_count.value }}:<|VIDEO_START|><|VIDEO_PLACEHOLDER|><|VIDEO_END|>"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- if message.role == 'system' -%}{{- '\n' -}}{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- macro extract_text_content(content_field) -%}"
    "{%- if content_field is string -%}{{- content_field -}}"
    "{%- elif content_field is iterable and content_field is not string -%}"
    "{%- set ns = namespace(text_parts=[]) -%}"
    "{%- for item in content_field -%}{%- if item.type == 'text' -%}"
    "{%- set ns.text_parts = ns.text_parts + [item.text] -%}{%- endif -%}{%- endfor -%}"
    "{{- ns.text_parts | join('') -}}"
    "{%- else -%}{{- '' -}}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set reasoning_content = extract_text_content(message.reasoning_content) -%}"
    "{%- set content = extract_text_content(message.content) -%}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{%- endif %}"
    "{%- if reasoning_content %}"
    "{{- '\n' + 'Assistant: ' + '<think>\n' + reasoning_content.strip('\n') + '\n</think>\n' + content.lstrip('\n') }}"
    "{%- else %}{{- '\n' + 'Assistant: ' + content }}{%- endif %}"
    "{{- '<|end_of_sentence|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt is not defined or add_generation_prompt is true %}"
    "{{- '\nAssistant: ' -}}"
    "{%- if (enable_thinking is defined and enable_thinking is false) or enable_thinking is not defined %}"
    "{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- if enable_thinking is defined and enable_thinking is true %}{{- '<think>' }}{%- endif %}"
    "{%- endif %}"
)
ERNIE_MEDIA_TOKENS = {
    "image_token": "<|IMAGE_PLACEHOLDER|>",
    "image_start_token": "<|IMAGE_START|>",
    "image_end_token": "<|IMAGE_END|>",
    "video_token": "<|VIDEO_PLACEHOLDER|>",
    "video_start_token": "<|VIDEO_START|>",
    "video_end_token": "<|VIDEO_END|>",
}
ERNIE_CONTROL = ["<unk>", "</s>", "<|begin_of_sentence|>", "<|end_of_sentence|>", "<think>", "</think>"]


def build_tiny_ernie4_5_vl_moe(seed: int = 0, hidden_size: int = HIDDEN):
    """ERNIE 4.5-VL-MoE: `Ernie4_5_VLMoeForConditionalGeneration` (a ViT over 8 px patches, the projector
    `resampler_model` folding 2x2 patches (and 2 frames) by MLPs, an ERNIE 4.5 language model with 3-axis rope whose
    sparse layers route text and image tokens to experts of their own by `moe_mm_token_type_ids`) +
    `Ernie4_5_VLMoeProcessor` (with its video processor, whose videos vlsft refuses by row), with `ERNIE_TEMPLATE`.
    An image of 16x16 to 32x32 px: (rows / 2) x (columns / 2) tokens between its start and end tokens."""
    tokenizer = _byte_level_tokenizer(
        [*ERNIE_CONTROL, *ERNIE_MEDIA_TOKENS.values()], ERNIE_MEDIA_TOKENS,
        bos_token="<|begin_of_sentence|>", eos_token="</s>", pad_token="<unk>",
    )
    processor = Ernie4_5_VLMoeProcessor(
        image_processor=Ernie4_5_VLMoeImageProcessor(
            size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, patch_size=8, merge_size=2
        ),
        tokenizer=tokenizer,
        video_processor=Ernie4_5_VLMoeVideoProcessor(patch_size=8, merge_size=2),
        chat_template=ERNIE_TEMPLATE,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in ERNIE_MEDIA_TOKENS.items()}
    config = Ernie4_5_VLMoeConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **{k: v for k, v in language_model_sizes(hidden_size).items() if k != "head_dim"},
            # 3 axes (text position, and an image's height and width), in the checkpoint's proportions 22:22:20
            rope_parameters=dict(rope_type="default", rope_theta=500000.0, mrope_section=[3, 3, 2]),
            moe_intermediate_size=[hidden_size, hidden_size], moe_k=2, moe_num_experts=4, moe_num_shared_experts=1,
            mlp_layer_types=["dense", "sparse"],
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            # The checkpoint stops on `</s>` and on the end of a turn, `<|end_of_sentence|>`.
            eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_sentence|>")],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=8, spatial_merge_size=2,
            temporal_merge_size=2,
        ),
        image_token_id=ids["image_token"],
        image_start_token_id=ids["image_start_token"],
        image_end_token_id=ids["image_end_token"],
        video_token_id=ids["video_token"],
        video_start_token_id=ids["video_start_token"],
        video_end_token_id=ids["video_end_token"],
        tie_word_embeddings=False,
    )
    # The experts as a loop (transformers' "eager" experts), not `torch._grouped_mm`, whose float32 sums on the CPU
    # differ with the number of tokens routed to each expert (2e-4 of an SGD step apart between a batch of 2 and 2
    # accumulated micro-batches of 1, against 3e-7 for the loop).
    config.text_config._experts_implementation = "eager"
    return instantiate(Ernie4_5_VLMoeForConditionalGeneration, config, processor, seed)
