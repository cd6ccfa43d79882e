"""Tiny models on the generic exact path (`vlsft.generic_masks`) of Dots 3 Note, Cohere Compass and Cosmos 3 Edge, each the family's real model class
built from its config class with random weights and its real processor class with a tokenizer trained in-process
(`vlsft.testing.tiny_generic._byte_level_tokenizer`)."""

from __future__ import annotations

from transformers import (
    CohereCompassConfig,
    CohereCompassForConditionalGeneration,
    CohereCompassImageProcessor,
    CohereCompassProcessor,
    CohereCompassVideoProcessor,
    Cosmos3EdgeConfig,
    Cosmos3EdgeForConditionalGeneration,
    Cosmos3EdgeImageProcessor,
    Cosmos3EdgeProcessor,
    Cosmos3EdgeVideoProcessor,
    Dots3NoteConfig,
    Dots3NoteFeatureExtractor,
    Dots3NoteForConditionalGeneration,
    Dots3NoteProcessor,
    Qwen2VLImageProcessor,
    Qwen3VLVideoProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer, trl_template
from vlsft.testing.tiny_generic_aya import cohere_format_template, cohere_tokenizer

# -- Dots 3 Note ---------------------------------------------------------------------------------------------------

# The dots chat format (dots.llm1, dots.ocr, Dots 3 Note), written for these tests (no checkpoint's template can be
# downloaded here): `<|system|>...<|endofsystem|>` and a newline, `<|user|>...<|endofuser|>`, `<|assistant|>` and the
# answer closed by `<|endofassistant|>` (which the checkpoint's generation config stops on, besides
# `<|endoftext|>`); an image as `<|img|><|imgpad|><|endofimg|>`, whose `<|imgpad|>` the processor expands. Tool calls
# in the dots (Qwen3-Coder XML) style, a tool's result as a user turn inside `<tool_response>`, consecutive results in
# one turn.
DOTS3_NOTE_FORMAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content -%}{%- for item in content -%}"
    "{%- if item.type == 'image' -%}<|img|><|imgpad|><|endofimg|>"
    "{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if tools -%}<|system|># Tools\n\nYou have access to the following functions:\n"
    "{%- for tool in tools -%}\n{{ tool | tojson }}{%- endfor -%}"
    "{%- if messages[0].role == 'system' -%}\n\n{{ text(messages[0].content) }}{%- endif -%}<|endofsystem|>\n"
    "{%- elif messages[0].role == 'system' -%}<|system|>{{ text(messages[0].content) }}<|endofsystem|>\n"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}<|user|>{{ text(message.content) }}<|endofuser|>"
    "{%- elif message.role == 'assistant' -%}<|assistant|>{{ text(message.content) }}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- set call = call.function if call.function is defined else call -%}"
    "{%- if loop.first and message.content -%}\n{%- endif -%}"
    "<tool_call>\n<function={{ call.name }}>\n"
    "{%- for name, value in call.arguments.items() -%}<parameter={{ name }}>\n{{ value }}\n</parameter>\n{%- endfor -%}"
    "</function>\n</tool_call>"
    "{%- endfor -%}<|endofassistant|>"
    "{%- elif message.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}<|user|>{%- endif -%}"
    "<tool_response>\n{{ text(message.content) }}\n</tool_response>"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}<|endofuser|>{%- endif -%}"
    "{%- elif message.role != 'system' or not loop.first -%}"
    "{{ raise_exception('Only system, user, assistant and tool messages are supported.') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def build_tiny_dots3_note(seed: int = 0, hidden_size: int = HIDDEN):
    """Dots 3 Note: `Dots3NoteForConditionalGeneration` (a language model of multi-head latent attention with a
    sparse-attention indexer and a mixture of experts, a ViT whose second block is a mixture of experts with its
    `merger` inside, and an audio tower) + `Dots3NoteProcessor` (a Qwen2-VL image processor: 8 px patches, no
    temporal patch, merged 2x2), with `DOTS3_NOTE_FORMAT_TEMPLATE`."""
    special = [
        "<|endoftext|>", "<|system|>", "<|endofsystem|>", "<|user|>", "<|endofuser|>", "<|assistant|>",
        "<|endofassistant|>", "<|img|>", "<|imgpad|>", "<|endofimg|>", "<|video_pad|>", "<|audio_comp_pad|>",
        "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    ]
    tokenizer = _byte_level_tokenizer(special, {}, eos_token="<|endofassistant|>", pad_token="<|endoftext|>")
    vision = dict(patch_size=8, merge_size=2, temporal_patch_size=1, size={"shortest_edge": 256, "longest_edge": 2304})
    processor = Dots3NoteProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**vision),  # videos and audio are refused by row on the generic path
        feature_extractor=Dots3NoteFeatureExtractor(feature_size=16),
        chat_template=DOTS3_NOTE_FORMAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    heads = hidden_size // 16
    config = Dots3NoteConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            moe_intermediate_size=32,
            shared_experts_intermediate_size=32,
            num_hidden_layers=2,  # the first dense, the second a mixture of 4 experts (2 per token) + a shared one
            n_routed_experts=4,
            num_experts_per_tok=2,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            head_dim=16,
            index_head_dim=16,
            index_n_heads=2,
            index_topk=2048,
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=[ids("<|endoftext|>"), ids("<|endofassistant|>")],
        ),
        vision_config=dict(
            **VISION_ENCODER_SIZES, patch_size=8, spatial_merge_size=2, adapter_merge_size=2, adapter_in_dim=32,
            adapter_out_dim=hidden_size, moe_intermediate_size=32, pyramid_num_routed=[-1, 4],
            num_experts_per_tok=2,
        ),
        audio_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, feature_size=16,
            downsample_hidden_size=8, adapter_input_size=32, adapter_out_dim=hidden_size,
        ),
        image_token_id=ids("<|imgpad|>"),
        video_token_id=ids("<|video_pad|>"),
        audio_token_id=ids("<|audio_comp_pad|>"),
        tie_word_embeddings=False,
    )
    return instantiate(Dots3NoteForConditionalGeneration, config, processor, seed)


# -- Cohere Compass ------------------------------------------------------------------------------------------------

# Cohere Compass's (North Vision's) chat format: Command A's (`vlsft.testing.tiny_generic_aya.cohere_format_template`:
# Cohere's turn tokens, the answer between `<|START_RESPONSE|>` and `<|END_RESPONSE|>`, the turn ended by
# `<|END_OF_TURN_TOKEN|>`), an image as `<|VISION_START|><|IMAGE_PAD|><|VISION_END|>`, whose pad the processor expands
# (its Qwen3-VL-style vision tokens). Written for these tests: the checkpoint's own template cannot be downloaded here.
COHERE_COMPASS_VISION_TOKENS = {
    "image_token": "<|IMAGE_PAD|>", "video_token": "<|VIDEO_PAD|>", "vision_start_token": "<|VISION_START|>",
    "vision_end_token": "<|VISION_END|>",
}
COHERE_COMPASS_FORMAT_TEMPLATE = cohere_format_template(
    "<|VISION_START|><|IMAGE_PAD|><|VISION_END|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>"
)


def build_tiny_cohere_compass(seed: int = 0, hidden_size: int = HIDDEN):
    """Cohere Compass: `CohereCompassForConditionalGeneration` (a Qwen3-VL-style ViT with DeepStack mergers as
    `visual`, a Cohere language model with 3D rope) + `CohereCompassProcessor` (its own image and video processors: 8 px
    patches, 2 frames a temporal patch, merged 2x2), with `COHERE_COMPASS_FORMAT_TEMPLATE`."""
    named = COHERE_COMPASS_VISION_TOKENS
    tokenizer = cohere_tokenizer([*named.values(), "<|START_RESPONSE|>", "<|END_RESPONSE|>"], named)
    vision = dict(patch_size=8, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 256, "longest_edge": 4096})
    processor = CohereCompassProcessor(
        image_processor=CohereCompassImageProcessor(**vision),
        tokenizer=tokenizer,
        video_processor=CohereCompassVideoProcessor(**vision),  # videos are refused by row on the generic path
        chat_template=COHERE_COMPASS_FORMAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = CohereCompassConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            # 3D rope over half of each 16-wide head (t, h, w), as Qwen3-VL's [24, 20, 20] of 128.
            layer_types=["full_attention", "full_attention"],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}},
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8, temporal_patch_size=2,
            spatial_merge_size=2, out_hidden_size=hidden_size, num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        ),
        image_token_id=ids(named["image_token"]),
        video_token_id=ids(named["video_token"]),
        vision_start_token_id=ids(named["vision_start_token"]),
        vision_end_token_id=ids(named["vision_end_token"]),
        tie_word_embeddings=False,
    )
    return instantiate(CohereCompassForConditionalGeneration, config, processor, seed)


# -- Cosmos 3 Edge -------------------------------------------------------------------------------------------------


def build_tiny_cosmos3_edge(seed: int = 0, hidden_size: int = HIDDEN):
    """Cosmos 3 Edge: `Cosmos3EdgeForConditionalGeneration` (a SigLIP-style ViT as `visual`, a 2x2 patch-merging MLP
    named `projector`, a Nemotron-style language model with squared-ReLU `fc1`/`fc2` MLPs and 3D rope) +
    `Cosmos3EdgeProcessor` (its own image processor: 8 px patches, no temporal patch, merged 2x2), with TRL's stock
    Qwen3-VL template: ChatML turns ended by `<|im_end|>` (the eos), an image as
    `<|vision_start|><|image_pad|><|vision_end|>`, the wrapper the processor's docstring says the Edge template writes
    (the Cosmos Reason checkpoints ship Qwen-VL's template; this checkpoint's own cannot be downloaded here)."""
    named = {
        "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values(), "<tool_call>", "</tool_call>"]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    vision = dict(patch_size=8, merge_size=2, temporal_patch_size=1, size={"shortest_edge": 256, "longest_edge": 4096})
    processor = Cosmos3EdgeProcessor(
        image_processor=Cosmos3EdgeImageProcessor(**vision),
        tokenizer=tokenizer,
        # The frames' timestamps the processor writes need the clip's metadata.
        video_processor=Cosmos3EdgeVideoProcessor(**vision, return_metadata=True),
        chat_template=trl_template("qwen3_vl"),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Cosmos3EdgeConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            # 3D rope over half of each 16-wide head (t, h, w), as the checkpoint's [24, 20, 20] of 128.
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(**VISION_ENCODER_SIZES, patch_size=8, num_patches=64, spatial_merge_size=2),
        projector_hidden_size=64,
        image_token_id=ids(named["image_token"]),
        video_token_id=ids(named["video_token"]),
        vision_start_token_id=ids(named["vision_start_token"]),
        vision_end_token_id=ids(named["vision_end_token"]),
        tie_word_embeddings=False,
    )
    return instantiate(Cosmos3EdgeForConditionalGeneration, config, processor, seed)
