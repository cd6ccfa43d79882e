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
    HunYuanVLConfig,
    HunYuanVLForConditionalGeneration,
    HunYuanVLImageProcessor,
    HunYuanVLProcessor,
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


# HunyuanOCR's chat format (as vLLM's HunyuanOCR example and Tencent's Hunyuan templates write it): the prompt opens
# with `<｜hy_begin▁of▁sentence｜>`; a system text is closed by `<｜hy_place▁holder▁no▁3｜>`; a user turn writes its
# images (each `<｜hy_place▁holder▁no▁100｜><｜hy_place▁holder▁no▁102｜><｜hy_place▁holder▁no▁101｜>`: start, image,
# end) then its text, and is closed by `<｜hy_User｜>`, after which the model answers (the generation prompt adds
# nothing); an answer is closed by the eos `<｜hy_place▁holder▁no▁2｜>`. The OCR model knows no tools: other roles
# raise.
HUNYUAN_BOS, HUNYUAN_EOS = "<｜hy_begin▁of▁sentence｜>", "<｜hy_place▁holder▁no▁2｜>"
HUNYUAN_SYSTEM_END, HUNYUAN_USER_END = "<｜hy_place▁holder▁no▁3｜>", "<｜hy_User｜>"
HUNYUAN_IMAGE_TOKENS = {
    "image_start_token": "<｜hy_place▁holder▁no▁100｜>",
    "image_end_token": "<｜hy_place▁holder▁no▁101｜>",
    "image_token": "<｜hy_place▁holder▁no▁102｜>",
}
HUNYUAN_VL_TEMPLATE = (
    "{%- macro text(content) -%}{%- if content is string -%}{{ content }}{%- else -%}"
    "{%- for item in content -%}{%- if item['type'] == 'image' -%}"
    "{{ '" + "".join(HUNYUAN_IMAGE_TOKENS[k] for k in ("image_start_token", "image_token", "image_end_token")) + "' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{{ '" + HUNYUAN_BOS + "' }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ text(message['content']) + '" + HUNYUAN_SYSTEM_END + "' }}"
    "{%- elif message['role'] == 'user' -%}{{ text(message['content']) + '" + HUNYUAN_USER_END + "' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ text(message['content']) + '" + HUNYUAN_EOS + "' }}"
    "{%- else -%}{{ raise_exception('Only system, user and assistant roles are supported.') }}{%- endif -%}"
    "{%- endfor -%}"
)


def build_tiny_hunyuan_vl(seed: int = 0, hidden_size: int = HIDDEN):
    """HunYuan-VL (HunyuanOCR): `HunYuanVLForConditionalGeneration` (a ViT over 8 px patches whose `patch_merger`
    folds 2x2 patches by convolution and writes a learned newline after each row and begin/end embeddings around the
    image, a dense HunYuan language model with 4-axis rope) + `HunYuanVLProcessor`, with `HUNYUAN_VL_TEMPLATE`. An
    image of 16x16 to 32x32 px: (rows / 2) x (columns / 2 + 1) + 2 tokens."""
    tokenizer = _byte_level_tokenizer(
        [HUNYUAN_BOS, HUNYUAN_EOS, HUNYUAN_SYSTEM_END, HUNYUAN_USER_END, "<|pad|>", *HUNYUAN_IMAGE_TOKENS.values()],
        HUNYUAN_IMAGE_TOKENS, bos_token=HUNYUAN_BOS, eos_token=HUNYUAN_EOS, pad_token="<|pad|>",
    )
    processor = HunYuanVLProcessor(
        image_processor=HunYuanVLImageProcessor(
            min_pixels=16 * 16, max_pixels=32 * 32, patch_size=8, temporal_patch_size=1, merge_size=2
        ),
        tokenizer=tokenizer,
        chat_template=HUNYUAN_VL_TEMPLATE,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in HUNYUAN_IMAGE_TOKENS.items()}
    config = HunYuanVLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            # HunyuanOCR's rope: 4 axes (text position, and an image's width, height and frame), in quarters
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 2, 2, 2]),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
            spatial_merge_size=2, out_hidden_size=hidden_size, max_image_size=64, min_image_size=16,
        ),
        image_token_id=ids["image_token"],
        im_start_id=ids["image_start_token"],
        im_end_id=ids["image_end_token"],
        im_newline_id=tokenizer.pad_token_id,  # the newline is a learned embedding, never a token of the prompt
        tie_word_embeddings=False,
    )
    return instantiate(HunYuanVLForConditionalGeneration, config, processor, seed)
