"""Tiny Granite 4 Vision, HunYuan-VL and ERNIE 4.5-VL-MoE models on the generic exact path: each family's real model
class from its config class with random weights, and its real processor class (real image processor) with a
tokenizer trained in-process (`vlsft.testing.tiny_generic._byte_level_tokenizer`).

TRL ships none of these templates, and no checkpoint's can be downloaded here: each is written in the chat format its
checkpoints use, as the family's documentation spells it (named in each builder's docstring).
"""

from __future__ import annotations

from transformers import (
    Granite4VisionConfig,
    Granite4VisionForConditionalGeneration,
    Granite4VisionProcessor,
    LlavaNextImageProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, language_model_sizes, instantiate
from vlsft.testing.tiny_generic import _byte_level_tokenizer

# Granite 4.0's chat format (IBM's Granite 4.0 prompt guide): `<|start_of_role|>ROLE<|end_of_role|>` then the text,
# each message ended by `<|end_of_text|>` and a newline; images written first as `<image>\n` (LLaVA-NeXT style, as the
# Granite Vision checkpoints do); tools listed in a system message, calls as `<tool_call>` JSON, results as
# `<tool_response>` blocks in a user turn.
GRANITE4_VISION_TEMPLATE = (
    "{%- macro text(content) -%}{%- if content is string -%}{{ content }}{%- else -%}"
    "{%- for item in content if item['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}"
    "{%- for item in content if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if tools -%}{{ '<|start_of_role|>system<|end_of_role|>You are a helpful assistant with access to the "
    "following tools. You may call one or more tools to assist with the user query.\n\n<tools>' }}"
    "{%- for tool in tools -%}{{ '\n' + (tool | tojson) }}{%- endfor -%}"
    "{{ '\n</tools>\n\nFor each tool call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags.<|end_of_text|>\n' }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{ '<|start_of_role|>user<|end_of_role|>' }}{%- endif -%}"
    "{{ '<tool_response>\n' + text(message['content']) + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{ '<|end_of_text|>\n' }}{%- endif -%}"
    "{%- else -%}"
    "{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + text(message['content']) }}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set call = call['function'] if call['function'] is defined else call -%}"
    "{%- if not loop.first or message['content'] -%}{{ '\n' }}{%- endif -%}"
    "{{ '<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' + (call['arguments'] | tojson) + "
    "'}\n</tool_call>' }}"
    "{%- endfor -%}{{ '<|end_of_text|>\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif -%}"
)


def build_tiny_granite4_vision(seed: int = 0, hidden_size: int = HIDDEN):
    """Granite 4 Vision: `Granite4VisionForConditionalGeneration` (a CLIP tower whose layers feed window Q-Former
    projectors, `layerwise_projectors` and `spatial_projectors`, injected into decoder layers DeepStack-style, a
    learned `image_newline`, a Granite language model) + `Granite4VisionProcessor` (LLaVA-NeXT any-resolution tiles),
    with `GRANITE4_VISION_TEMPLATE`. A 16 px view of 4 px patches is a 4x4 grid, halved by the Q-Former (downsample
    rate 1/2): 4 tokens a view, plus the tiles of the best of 4 grids up to 32 px and a newline per row."""
    named = {"image_token": "<image>"}
    tokenizer = _byte_level_tokenizer(
        ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|pad|>", *named.values()], named,
        eos_token="<|end_of_text|>", pad_token="<|pad|>",
    )
    pinpoints = [[16, 16], [16, 32], [32, 16], [32, 32]]
    processor = Granite4VisionProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which the "default" strategy drops
        downsample_rate="1/2",
        chat_template=GRANITE4_VISION_TEMPLATE,
    )
    text_sizes = {k: v for k, v in language_model_sizes(hidden_size).items() if k != "head_dim"}
    config = Granite4VisionConfig(
        text_config=dict(
            model_type="granite4_vision_text",
            vocab_size=len(tokenizer),
            **text_sizes,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        ),
        # The Q-Former's width is the tower's, in heads of 64: a tower of width 64.
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=64, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=16, patch_size=4, projection_dim=32,
        ),
        qformer_config=dict(  # without dropout, so that gradient accumulation is exact
            model_type="blip_2_qformer", intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        image_grid_pinpoints=pinpoints,
        downsample_rate="1/2",
        deepstack_layer_map=[[1, 0]],  # the tower's first layer's output into decoder layer 0
        spatial_target_layers=[0, 1, 0, 1],  # the 4 spatial offset groups into the 2 decoder layers
        projector_dropout=0.0,  # so that gradient accumulation is exact
        tie_word_embeddings=False,
    )
    return instantiate(Granite4VisionForConditionalGeneration, config, processor, seed)
