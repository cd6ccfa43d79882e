"""Tiny Mllama (Llama 3.2 Vision) and Aria on the generic exact path (`vlsft.testing.tiny_generic` holds the other
families and the shared tokenizer helper): each family's real model class from its config class with random weights
(2-layer language model, tiny vision tower) and its real processor class, with a tokenizer trained in-process.
"""

from __future__ import annotations

import torch
from transformers import (
    AriaConfig,
    AriaForConditionalGeneration,
    AriaImageProcessor,
    AriaProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessor,
    MllamaProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer

# -- Mllama (Llama 3.2 Vision) -------------------------------------------------------------------------------------

# The chat format of Llama-3.2-11B-Vision-Instruct / 90B-Vision-Instruct as their `chat_template` writes it (the
# Llama 3.1 format, plus `<|image|>` for each image item, no system block when the conversation has an image and a
# refusal of a system message with images); no checkpoint can be downloaded here, so it is written out from it.
MLLAMA_TEMPLATE = (
    "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n"
    "{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}\n{%- endif %}\n"
    "{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n"
    "{#- Find out if there are any images #}\n{% set image_ns = namespace(has_images=false) %}      \n"
    "{%- for message in messages %}\n    {%- for content in message['content'] %}\n"
    "        {%- if content['type'] == 'image' %}\n            {%- set image_ns.has_images = true %}\n"
    "        {%- endif %}\n    {%- endfor %}\n{%- endfor %}\n\n"
    "{#- Error out if there are images and system message #}\n"
    "{%- if image_ns.has_images and not system_message == \"\" %}\n"
    "    {{- raise_exception(\"Prompting with images is incompatible with system messages.\") }}\n{%- endif %}\n\n"
    "{#- System message if there are no images #}\n{%- if not image_ns.has_images %}\n"
    "    {{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n    {%- if tools is not none %}\n"
    "        {{- \"Environment: ipython\\n\" }}\n    {%- endif %}\n"
    "    {{- \"Cutting Knowledge Date: December 2023\\n\" }}\n    {{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "    {%- if tools is not none and not tools_in_user_message %}\n"
    "        {{- \"You have access to the following functions. To call a function, please respond with JSON for a "
    "function call.\" }}\n"
    "        {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n        {{- \"Do not use variables.\\n\\n\" }}\n        {%- for t in tools %}\n"
    "            {{- t | tojson(indent=4) }}\n            {{- \"\\n\\n\" }}\n        {%- endfor %}\n    {%- endif %}\n"
    "    {{- system_message }}\n    {{- \"<|eot_id|>\" }}\n{%- endif %}\n\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user "
    "message!\") }}\n"
    "{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    "    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n"
    "    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n"
    "    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "        {%- if message['content'] is string %}\n            {{- message['content'] }}\n        {%- else %}\n"
    "            {%- for content in message['content'] %}\n                {%- if content['type'] == 'image' %}\n"
    "                    {{- '<|image|>' }}\n                {%- elif content['type'] == 'text' %}\n"
    "                    {{- content['text'] }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n        {{- '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    "            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n"
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n        {{- '\"parameters\": ' }}\n"
    "        {{- tool_call.arguments | tojson }}\n        {{- \"}\" }}\n        {{- \"<|eot_id|>\" }}\n"
    "    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n"
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n"
    "        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"
)

LLAMA3_CONTROL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
    "<|python_tag|>", "<|finetune_right_pad_id|>",
]


def build_tiny_mllama(seed: int = 0, hidden_size: int = HIDDEN):
    """Llama 3.2 Vision: `MllamaForConditionalGeneration` (its tiled ViT with local and global layers, a linear
    projector, a Llama language model whose layer 1 cross-attends to the image features) + `MllamaProcessor` with
    the checkpoints' chat format (`MLLAMA_TEMPLATE`).

    Each image is one `<|image|>` token in the text (not expanded); the processor's `cross_attention_mask` (batch,
    tokens, images, tiles) says which tokens see which image's tiles. Images are cut into up to 2 tiles of 32 px
    (8 px patches). The assistant turn ends with `<|eot_id|>`; the generation config stops on `<|end_of_text|>`,
    `<|eom_id|>` and `<|eot_id|>`, as the checkpoints' does."""
    tokenizer = _byte_level_tokenizer(
        [*LLAMA3_CONTROL_TOKENS, "<|image|>"], {}, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    image_processor = MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    config = MllamaConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **{k: v for k, v in language_model_sizes(hidden_size).items() if k != "head_dim"},
            cross_attention_layers=[1],  # layer 0 self-attends, layer 1 cross-attends to the image
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[ids("<|end_of_text|>"), ids("<|eom_id|>"), ids("<|eot_id|>")],
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
            intermediate_layers_indices=[0], vision_output_dim=64, image_size=32, patch_size=8, max_num_tiles=2,
            supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
        ),
        image_token_index=ids("<|image|>"),
    )
    model, processor = instantiate(MllamaForConditionalGeneration, config, processor, seed)
    return _gates_opened(model), processor


def _gates_opened(model):
    """`model` with its tanh gates (the cross-attention layers' and the tower's positional embeddings') at 0.5, as a
    trained checkpoint's are open: transformers initialises them to 0, which would let no gradient reach the vision
    tower (the language model then ignores the image)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gate") and parameter.numel() == 1:
                parameter.fill_(0.5)
    return model


# -- Aria ----------------------------------------------------------------------------------------------------------

# The chat format of rhymes-ai/Aria as transformers' conversion script (`convert_aria_weights_to_hf.py`) writes it
# into the converted checkpoint: ChatML, each image `<fim_prefix><|img|><fim_suffix>`.
ARIA_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% elif message['content'] is iterable %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% elif item['type'] == 'image' %}"
    "<fim_prefix><|img|><fim_suffix>{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_aria(seed: int = 0, hidden_size: int = HIDDEN):
    """Aria: `AriaForConditionalGeneration` (an Idefics3 vision tower, a cross-attention projector of learned
    queries, a fine-grained MoE language model) + `AriaProcessor` with the converted checkpoint's template
    (`ARIA_TEMPLATE`).

    The MoE is kept tiny: 2 experts of width 32, 1 routed per token, plus 1 shared expert. Images are resized to
    490 px (the smallest size the processor takes) and cut into 35 px patches: 196 patches, which the projector maps to
    4 queries, so each image is 4 `<|img|>` tokens. The assistant turn ends with `<|im_end|>`."""
    special = ["<|im_start|>", "<|im_end|>", "<pad>", "<unk>", "<fim_prefix>", "<fim_suffix>", "<|img|>"]
    tokenizer = _byte_level_tokenizer(
        special, {"image_token": "<|img|>"}, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>"
    )
    image_processor = AriaImageProcessor(max_image_size=490, min_image_size=336)
    processor = AriaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=ARIA_TEMPLATE,
        size_conversion={490: 4, 980: 16},
    )
    config = AriaConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **{**language_model_sizes(hidden_size), "intermediate_size": 32},
            moe_num_experts=2,
            moe_topk=1,
            moe_num_shared_experts=1,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=490, patch_size=35),
        projector_patch_to_query_dict={196: 4, 784: 16},
        image_token_index=tokenizer.convert_tokens_to_ids("<|img|>"),
    )
    return instantiate(AriaForConditionalGeneration, config, processor, seed)
