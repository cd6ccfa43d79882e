"""Tiny Ovis2, Molmo2 and MiniCPM-V 4.6 models on the generic exact path (`vlsft.testing.tiny_generic` holds the
other families and the shared tokenizer helper): each family's real model class built from its config class with
random weights, and its real processor class with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import (
    Ovis2Config,
    Ovis2ForConditionalGeneration,
    Ovis2ImageProcessor,
    Ovis2Processor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer

# -- Ovis2 ---------------------------------------------------------------------------------------------------------

# Ovis2's chat template as the converted checkpoints ship it (thisisiron/Ovis2-1B-hf, the text transformers' Ovis2
# processor tests render against it): ChatML, a default system block always written first, each image as `<image>`
# on its own line, and nothing of tool calls. `<image>` is plain text in the checkpoint's vocabulary (it tokenizes as
# `<`, `image`, `>\n`); the processor replaces it, as text, with the image's indicator and atom tokens.
OVIS2_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
# The visual indicator tokens, in the order of the model's `visual_indicator_token_ids`: an image starts, its global
# view ends, a column and a row of tiles end, the image ends.
_OVIS2_INDICATORS = ["<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"]


def build_tiny_ovis2(seed: int = 0, hidden_size: int = HIDDEN):
    """Ovis2: `Ovis2ForConditionalGeneration` (a ViT whose head turns each merged patch into a probability over a
    visual vocabulary, the visual embedding table that maps it into the language model, a Qwen2 language model) +
    `Ovis2Processor` with `OVIS2_TEMPLATE`. 32 px tiles of 8 px patches merged 2x2 (4 atoms per tile); an image is
    its global view plus, where its shape asks, up to 2 tiles."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<IMG_ATOM>", *_OVIS2_INDICATORS]
    tokenizer = _byte_level_tokenizer(special, {}, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor = Ovis2Processor(
        image_processor=Ovis2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=2),
        tokenizer=tokenizer,
        image_seq_length=4,
        chat_template=OVIS2_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Ovis2Config(
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            **VISION_ENCODER_SIZES, image_size=32, patch_size=8, hidden_stride=2, vocab_size=64,
            num_visual_indicator_tokens=len(_OVIS2_INDICATORS),
        ),
        image_token_id=ids("<IMG_ATOM>"),
        visual_indicator_token_ids=ids(_OVIS2_INDICATORS),
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        tie_word_embeddings=False,
    )
    return instantiate(Ovis2ForConditionalGeneration, config, processor, seed)
