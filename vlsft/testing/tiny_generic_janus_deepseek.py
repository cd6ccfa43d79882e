"""Tiny DeepSeek-VL (1.3B-style: SigLIP only; 7B-style hybrid: SigLIP + a SAM high-resolution tower) and Janus /
Janus-Pro models on the generic exact path: each family's real model class built from its config class with random weights,
and its real processor class (real image processor) with a byte-level tokenizer trained in-process, with the special
tokens of the checkpoints' DeepSeek LLM tokenizer.

Janus also generates images (its VQ-VAE, `generation_*` heads); vlsft trains its image understanding (text output)
only: the image-generation modules are built, as in every checkpoint, and get no gradient from a text loss.
"""

from __future__ import annotations

from transformers import (
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLHybridConfig,
    DeepseekVLHybridForConditionalGeneration,
    DeepseekVLHybridImageProcessor,
    DeepseekVLHybridProcessor,
    DeepseekVLImageProcessor,
    DeepseekVLProcessor,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessor,
    JanusProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

# The chat template of the deepseek-community DeepSeek-VL checkpoints (deepseek-vl-1.3b-chat, deepseek-vl-7b-chat), as
# transformers' own DeepSeek-VL processor tests carry it: the default system prompt always written first, `User: ` /
# `Assistant: ` turns (a tool or system message as `Tool: ` / `System: `), images as `<image_placeholder>` (which the
# processor expands to its image tokens), a user turn followed by a blank line and an assistant turn by the eos, but
# only once another message follows: the last message of a rendering ends with its text. So a turn's stop token is
# the eos the template writes when the next message follows.
DEEPSEEK_VL_TEMPLATE = (
    "{% set seps = ['\n\n', '" + EOS + "'] %}{% set i = 0 %}"
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.\n\n"
    "{% for message in messages %}{% if message['role']|lower == 'user' %}User: "
    "{% elif message['role']|lower == 'assistant' %}Assistant:{% if not (loop.last and not add_generation_prompt and "
    "message['content'][0]['type']=='text' and message['content'][0]['text']=='') %} {% endif %}"
    "{% else %}{{ message['role'].capitalize() }}: {% endif %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image_placeholder>"
    "{% elif content['type'] == 'text' %}{% set text = content['text'] %}"
    "{% if loop.first %}{% set text = text.lstrip() %}{% endif %}{% if loop.last %}{% set text = text.rstrip() %}"
    "{% endif %}{% if not loop.first and message['content'][loop.index0-1]['type'] == 'text' %}{{ ' ' + text }}"
    "{% else %}{{ text }}{% endif %}{% endif %}{% endfor %}"
    "{% if not loop.last or add_generation_prompt %}{% if message['role']|lower == 'user' %}{{ seps[0] }}"
    "{% else %}{{ seps[1] }}{% endif %}{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

# Janus-Pro's chat template as transformers' conversion script (`convert_janus_weights_to_hf.py`) writes it into the
# deepseek-community Janus checkpoints: DeepSeek-VL's turn format with `<|User|>: ` / `<|Assistant|>:` and no system
# prompt (the processor prepends its default one: `use_default_system_prompt=True` in those checkpoints), each image
# `<image_placeholder>` on a line of its own, which the processor expands to `<begin_of_image>`, its image tokens and
# `<end_of_image>`.
JANUS_TEMPLATE = (
    "{%set seps=['\n\n','" + EOS + "']%}{%set i=0%}"
    "{%for message in messages%}{%if message['role']|lower=='user'%}<|User|>: "
    "{%elif message['role']|lower=='assistant'%}<|Assistant|>:{%if not (loop.last and not add_generation_prompt and "
    "message['content'][0]['type']=='text' and message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}{{message['role'].capitalize()}}: {%endif%}"
    "{%for content in message['content']%}{%if content['type']=='image'%}{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}{%set text=content['text']%}{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}{{' '+text}}{%else%}{{text}}{%endif%}"
    "{%endif%}{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}{%if message['role']|lower=='user'%}{{seps[0]}}{%else%}{{seps[1]}}"
    "{%endif%}{%endif%}{%endfor%}{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)

# The special tokens of the DeepSeek LLM tokenizer the DeepSeek-VL and Janus checkpoints extend (their additional
# special tokens, the image markers and the chat roles).
_SPECIAL = [
    BOS, EOS, "<image_placeholder>", "<patch_placeholder>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>",
    "<|grounding|>", "<|User|>", "<|Assistant|>", "<begin_of_image>", "<end_of_image>",
]
_IMAGE = 32  # px: a 32 px image in 8 px patches is 16 image tokens


def train_deepseek_tokenizer(**named):
    """A byte-level tokenizer with the DeepSeek LLM tokenizer's special tokens, adding its BOS on encode like the
    checkpoints' (`add_bos_token=True`); `named`: the token attributes the family's processor reads."""
    return _byte_level_tokenizer(
        _SPECIAL, {"image_token": "<image_placeholder>", **named}, bos_token=BOS, eos_token=EOS, pad_token=EOS,
        add_bos_token=True,
    )


def _llama_text_config(tokenizer, hidden_size: int) -> dict:
    return dict(
        model_type="llama", vocab_size=len(tokenizer), **language_model_sizes(hidden_size),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )


def _siglip_config() -> dict:
    return dict(model_type="siglip_vision_model", **VISION_ENCODER_SIZES, image_size=_IMAGE, patch_size=8)


def build_tiny_deepseek_vl(seed: int = 0, hidden_size: int = HIDDEN):
    """DeepSeek-VL 1.3B: `DeepseekVLForConditionalGeneration` (a SigLIP tower, a 2-layer MLP `aligner`, a Llama
    language model) + `DeepseekVLProcessor` (`DeepseekVLImageProcessor`, which pads an image to a square), with
    `DEEPSEEK_VL_TEMPLATE`. A 32 px image is 16 image tokens."""
    tokenizer = train_deepseek_tokenizer()
    processor = DeepseekVLProcessor(
        image_processor=DeepseekVLImageProcessor(size={"height": _IMAGE, "width": _IMAGE}, min_size=4),
        tokenizer=tokenizer,
        chat_template=DEEPSEEK_VL_TEMPLATE,
        num_image_tokens=(_IMAGE // 8) ** 2,
    )
    config = DeepseekVLConfig(
        text_config=_llama_text_config(tokenizer, hidden_size),
        vision_config=_siglip_config(),
        image_token_id=processor.image_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(DeepseekVLForConditionalGeneration, config, processor, seed)


def build_tiny_deepseek_vl_hybrid(seed: int = 0, hidden_size: int = HIDDEN):
    """DeepSeek-VL 7B: `DeepseekVLHybridForConditionalGeneration` (a low-resolution SigLIP tower and a high-resolution
    SAM tower with its neck and downsampling projection, fused by the `aligner`, a Llama language model) +
    `DeepseekVLHybridProcessor` (`DeepseekVLHybridImageProcessor`: the image at both resolutions), with
    `DEEPSEEK_VL_TEMPLATE`. A 32 px image (64 px for SAM) is 16 image tokens."""
    tokenizer = train_deepseek_tokenizer()
    high_res = 2 * _IMAGE
    image_processor = DeepseekVLHybridImageProcessor(
        size={"height": _IMAGE, "width": _IMAGE}, high_res_size={"height": high_res, "width": high_res},
        min_size=4, high_res_min_size=4,
    )
    processor = DeepseekVLHybridProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=DEEPSEEK_VL_TEMPLATE,
        num_image_tokens=(_IMAGE // 8) ** 2,
    )
    config = DeepseekVLHybridConfig(
        text_config=_llama_text_config(tokenizer, hidden_size),
        vision_config=_siglip_config(),
        # SAM sees the image at twice the resolution in 4 px patches (16x16); its neck and the model's two stride-2
        # convolutions bring that to SigLIP's 4x4 grid, as the checkpoint's 1024 px / 16 px do to 384 px / 16 px.
        high_res_vision_config=dict(
            model_type="sam_vision_model", hidden_size=32, output_channels=16, num_hidden_layers=2,
            num_attention_heads=2, image_size=high_res, patch_size=4, mlp_dim=64, window_size=4,
            global_attn_indexes=[1],
        ),
        image_token_id=processor.image_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(DeepseekVLHybridForConditionalGeneration, config, processor, seed)


def build_tiny_janus(seed: int = 0, hidden_size: int = HIDDEN):
    """Janus-Pro: `JanusForConditionalGeneration` (a SigLIP-style tower and MLP `aligner` for understanding, a VQ-VAE
    with generation embeddings, aligner and head for image generation, a Llama language model) + `JanusProcessor`
    (`JanusImageProcessor`; the default system prompt prepended, as the checkpoints set `use_default_system_prompt`),
    with `JANUS_TEMPLATE`. A 32 px image is 16 image tokens between `<begin_of_image>` and `<end_of_image>`."""
    tokenizer = train_deepseek_tokenizer(boi_token="<begin_of_image>", eoi_token="<end_of_image>")
    processor = JanusProcessor(
        image_processor=JanusImageProcessor(size={"height": _IMAGE, "width": _IMAGE}, min_size=4),
        tokenizer=tokenizer,
        chat_template=JANUS_TEMPLATE,
        use_default_system_prompt=True,
        num_image_tokens=(_IMAGE // 8) ** 2,
    )
    config = JanusConfig(
        text_config=_llama_text_config(tokenizer, hidden_size),
        vision_config=dict(
            **VISION_ENCODER_SIZES, image_size=_IMAGE, patch_size=8, projection_dim=hidden_size, depth=2,
            num_image_tokens=(_IMAGE // 8) ** 2,
        ),
        vq_config=dict(  # GroupNorm of 32 groups: channels in multiples of 32
            embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 1],
            num_res_blocks=1, projection_dim=hidden_size, image_token_embed_dim=hidden_size,
        ),
        image_token_id=processor.tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=False,
    )
    return instantiate(JanusForConditionalGeneration, config, processor, seed)
