"""A tiny Aya Vision on the generic exact path (`vlsft.testing.tiny_generic` holds the other families and the shared
tokenizer helper): `AyaVisionForConditionalGeneration` (a SigLIP tower, a pixel-shuffle adapter, a Cohere2 language
model) + `AyaVisionProcessor`, whose image text mixes special tokens with plain-text tile tags. The Cohere pieces
(turn tokens, chat format, Cohere2 language model) are shared with Command A Vision
(`vlsft.testing.tiny_generic_cohere_lfm3_plm`)."""

from __future__ import annotations

from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    GotOcr2ImageProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer

# Cohere's turn tokens and the image tokens its vision processors write around and between the patches.
COHERE_TURN_TOKENS = [
    "<PAD>", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
]
COHERE_IMAGE_TOKENS = ["<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]


def cohere_format_template(image: str, response_start: str = "", response_end: str = "") -> str:
    """Cohere's chat format (its turn tokens), written for these tests (no checkpoint's template can be downloaded
    here): each turn between `<|START_OF_TURN_TOKEN|>` and `<|END_OF_TURN_TOKEN|>`, an image item as `image`, an
    assistant's text between `response_start` and `response_end` (Command A's `<|START_RESPONSE|>` ...
    `<|END_RESPONSE|>`; Aya's turns have none), and the generation prompt opening the chatbot turn through
    `response_start`. Tool calls are not rendered, as in Cohere2's stock template (TRL's cohere2.jinja)."""
    return (
        "{{ bos_token }}"
        "{%- set roles = {'system': '<|SYSTEM_TOKEN|>', 'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>'} -%}"
        "{%- for message in messages -%}"
        "<|START_OF_TURN_TOKEN|>{{ roles[message.role] }}"
        f"{{%- if message.role == 'assistant' -%}}{response_start}{{%- endif -%}}"
        "{%- if message.content is string -%}{{ message.content }}"
        "{%- else -%}{%- for item in message.content -%}"
        f"{{%- if item.type == 'image' -%}}{image}{{%- elif item.type == 'text' -%}}{{{{ item.text }}}}{{%- endif -%}}"
        "{%- endfor -%}{%- endif -%}"
        f"{{%- if message.role == 'assistant' -%}}{response_end}{{%- endif -%}}"
        "<|END_OF_TURN_TOKEN|>"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{response_start}{{%- endif -%}}"
    )


# Aya Vision's chat format: Cohere's, images as `<image>`, no response markers.
AYA_VISION_FORMAT_TEMPLATE = cohere_format_template("<image>")


def cohere_tokenizer(special: list[str], named: dict[str, str]):
    """A byte-level BPE with Cohere's turn tokens (`<|END_OF_TURN_TOKEN|>` ends a turn and generation) plus
    `special`, and the `named` token attributes the family's processor reads."""
    return _byte_level_tokenizer(
        [*COHERE_TURN_TOKENS, *special], named, bos_token="<BOS_TOKEN>", eos_token="<|END_OF_TURN_TOKEN|>",
        pad_token="<PAD>",
    )


def cohere2_text_config(tokenizer, hidden_size: int) -> dict:
    """The text config of a tiny Cohere2 language model over `tokenizer`, as Aya Vision and Command A Vision use it."""
    return dict(
        model_type="cohere2",
        vocab_size=len(tokenizer),
        **language_model_sizes(hidden_size),
        sliding_window=4096,  # Cohere2 alternates sliding and full attention; the window covers every test row
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def build_tiny_aya_vision(seed: int = 0, hidden_size: int = HIDDEN):
    """Aya Vision with `AYA_VISION_FORMAT_TEMPLATE`: one 32 px tile of 8 px patches, pixel-shuffled by 2 (4 tokens,
    between `<|START_OF_IMG|>` ... `<|END_OF_IMG|>` with a `TILE_GLOBAL` tag)."""
    tokenizer = cohere_tokenizer(["<image>", *COHERE_IMAGE_TOKENS], {})
    processor = AyaVisionProcessor(
        # At most 2 tiles of 32 px (Aya's processor asks for tiles) plus the global view.
        image_processor=GotOcr2ImageProcessor(size={"height": 32, "width": 32}, min_patches=1, max_patches=2),
        tokenizer=tokenizer,
        patch_size=8,  # the ViT's patches, shuffled by `downsample_factor`
        img_size=32,
        downsample_factor=2,
        chat_template=AYA_VISION_FORMAT_TEMPLATE,
    )
    config = AyaVisionConfig(
        text_config=cohere2_text_config(tokenizer, hidden_size),
        vision_config=dict(model_type="siglip_vision_model", **VISION_ENCODER_SIZES, image_size=32, patch_size=8),
        downsample_factor=2,
        image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),  # what the placeholder expands to
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return instantiate(AyaVisionForConditionalGeneration, config, processor, seed)
