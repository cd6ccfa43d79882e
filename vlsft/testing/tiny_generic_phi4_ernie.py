"""Tiny Phi-4-multimodal and ERNIE 4.5-VL-MoE models on the generic exact path: each family's real model class from
its config class with random weights, and its real processor class (real image processor) with a tokenizer trained
in-process (`vlsft.testing.tiny_generic._byte_level_tokenizer`).

TRL ships neither template, and no checkpoint's can be downloaded here: each is the checkpoint's template as
transformers' own sources spell it (named in each builder's docstring).
"""

from __future__ import annotations

from transformers import (
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
