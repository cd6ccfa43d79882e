"""Tiny models of families vlsft has no record for, trained on the generic exact path (`vlsft.generic_masks`): the
family's real model class, built from its config class with random weights (2-layer language model, small vision
tower), and its real processor class with a tokenizer trained in-process (`vlsft.testing.tiny_tokenizers`). Their
chat templates are the stock ones TRL ships where it ships one; otherwise a template of the family's chat format
written for these tests (named so in each builder), since no checkpoint's template can be downloaded here.
"""

from __future__ import annotations

import re
from importlib import resources

from tokenizers import Tokenizer
from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    Lfm2VlConfig,
    Lfm2VlForConditionalGeneration,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PixtralImageProcessor,
    PixtralProcessor,
    PreTrainedTokenizerFast,
)

from vlsft.testing.tiny_build import (
    HIDDEN,
    VISION_ENCODER_SIZES,
    instantiate,
    language_model_sizes,
    mistral_text_config,
)
from vlsft.testing.tiny_tokenizers import FAMILY_CORPUS
from vlsft.testing.tiny_qwen3_vl import _CORPUS, train_byte_level_bpe


_GENERATION_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


def trl_template(name: str) -> str:
    """A stock chat template as TRL ships it (trl/chat_templates/<name>.jinja), without the `{% generation %}`
    markers TRL adds to some (LFM2.5-VL's): the template as the checkpoint ships it, which renders the same text.
    Each marker becomes an `{% if true %}` block with the same whitespace control, so not one character changes."""
    return without_generation_markers(resources.files("trl").joinpath("chat_templates", f"{name}.jinja").read_text())


def without_generation_markers(template: str) -> str:
    """`template` with each `{% generation %}` / `{% endgeneration %}` marker made an `{% if true %}` block with the
    same whitespace control: the same rendered text, without the markers (a checkpoint's marked template, e.g.
    LLaVA-1.5's, then takes the incremental-rendering rule)."""
    return _GENERATION_TAG.sub(lambda m: "{%" + m[1] + (" endif " if m[2] else " if true ") + m[3] + "%}", template)


def _byte_level_tokenizer(special: list[str], named: dict[str, str], **tokens) -> PreTrainedTokenizerFast:
    """A byte-level BPE over the test corpus with `special` tokens (control tokens, added whole) and `named` token
    attributes (`image_token`...) that the family's processor reads."""
    trained: Tokenizer = train_byte_level_bpe((_CORPUS + FAMILY_CORPUS) * 20, special, vocab_size=800)
    return PreTrainedTokenizerFast(tokenizer_object=trained, extra_special_tokens=named, **tokens)


# -- LFM2-VL -------------------------------------------------------------------------------------------------------

_LFM2_VL_TILE_TAGS = [f"<|img_row_{i}_col_{j}|>" for i in range(1, 4) for j in range(1, 4)]


def build_tiny_lfm2_vl(seed: int = 0, hidden_size: int = HIDDEN):
    """LFM2-VL / LFM2.5-VL: `Lfm2VlForConditionalGeneration` (an LFM2 hybrid conv/attention language model, a
    SigLIP2 NaFlex tower) + `Lfm2VlProcessor`, with TRL's stock LFM2.5-VL template. Images of up to 64 px make one
    tile of 8 px patches, downsampled by 2."""
    named = {
        "image_token": "<image>",
        "image_start_token": "<|image_start|>",
        "image_end_token": "<|image_end|>",
        "image_thumbnail_token": "<|img_thumbnail|>",
    }
    special = [
        "<|pad|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>", *named.values(), *_LFM2_VL_TILE_TAGS,
        "<think>", "</think>", "<|tool_call_start|>", "<|tool_call_end|>",
    ]
    tokenizer = _byte_level_tokenizer(
        special, named, bos_token="<|startoftext|>", eos_token="<|im_end|>", pad_token="<|pad|>"
    )
    image_processor = Lfm2VlImageProcessor(
        tile_size=32, encoder_patch_size=8, min_image_tokens=4, max_image_tokens=16, do_image_splitting=False,
        max_num_patches=64,
    )
    processor = Lfm2VlProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=trl_template("lfm2_2_5_vl")
    )
    sizes = language_model_sizes(hidden_size)
    config = Lfm2VlConfig(
        text_config=dict(
            model_type="lfm2",
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=sizes["intermediate_size"],
            num_hidden_layers=2,
            num_attention_heads=sizes["num_attention_heads"],
            num_key_value_heads=2,
            layer_types=["conv", "full_attention"],
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(model_type="siglip2_vision_model", **VISION_ENCODER_SIZES, patch_size=8, num_patches=64),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_size=32,
        downsample_factor=2,
        tie_word_embeddings=False,
    )
    return instantiate(Lfm2VlForConditionalGeneration, config, processor, seed)


# -- Mistral 3 -----------------------------------------------------------------------------------------------------

# Mistral 3.1's chat format, written for these tests (the checkpoint's own template cannot be downloaded here): the
# system prompt where it stands, `[INST] ... [/INST]` around each user turn, images as `[IMG]` (which the processor
# expands to rows of patches ended by `[IMG_BREAK]` and `[IMG_END]`), and an assistant turn ended by `</s>`.
MISTRAL3_FORMAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set content = message.content -%}"
    "{%- set ns = namespace(text='') -%}"
    "{%- if content is string -%}{%- set ns.text = content -%}"
    "{%- else -%}{%- for item in content -%}"
    "{%- set ns.text = ns.text + ('[IMG]' if item.type == 'image' else item.text) -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message.role == 'system' -%}[SYSTEM_PROMPT]{{ ns.text }}[/SYSTEM_PROMPT]"
    "{%- elif message.role == 'user' -%}[INST]{{ ns.text }}[/INST]"
    "{%- elif message.role == 'assistant' -%}{{ ns.text }}{{ eos_token }}"
    "{%- else -%}{{ raise_exception('Only system, user and assistant messages are supported.') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def build_tiny_mistral3(seed: int = 0, hidden_size: int = HIDDEN):
    """Mistral 3 (Mistral Small 3.1): `Mistral3ForConditionalGeneration` (a Pixtral vision tower, a patch merger and a
    Mistral language model) + `PixtralProcessor`, with `MISTRAL3_FORMAT_TEMPLATE`. 8 px patches, merged 2x2."""
    special = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[SYSTEM_PROMPT]",
               "[/SYSTEM_PROMPT]"]
    tokenizer = _byte_level_tokenizer(special, {}, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      pad_token="<unk>")
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 64}, patch_size={"height": 8, "width": 8}),
        tokenizer=tokenizer,
        patch_size=8,
        spatial_merge_size=2,
        chat_template=MISTRAL3_FORMAT_TEMPLATE,
    )
    config = Mistral3Config(
        text_config=mistral_text_config(tokenizer, hidden_size),
        vision_config=dict(model_type="pixtral", **VISION_ENCODER_SIZES, image_size=64, patch_size=8, head_dim=16),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return instantiate(Mistral3ForConditionalGeneration, config, processor, seed)


# -- InternVL ------------------------------------------------------------------------------------------------------

# InternVL3.5's chat format (ChatML, as its Qwen language model's), written for these tests (the checkpoint's own
# template cannot be downloaded here): each image is `<IMG_CONTEXT>` on its own line, which the processor expands to
# `<img>` + the image's context tokens + `</img>`.
INTERNVL_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message.role }}\n"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}<IMG_CONTEXT>\n{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def build_tiny_internvl(seed: int = 0, hidden_size: int = HIDDEN, text_model_type: str = "qwen2"):
    """InternVL3.5: `InternVLForConditionalGeneration` (InternViT, a pixel-shuffle projector, a Qwen2 language model,
    or Qwen3 with `text_model_type="qwen3"`, as in most InternVL3.5 checkpoints) + `InternVLProcessor`, with
    `INTERNVL_FORMAT_TEMPLATE`. One 32 px tile of 8 px patches, shuffled by 0.5: 4 tokens."""
    named = {
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for name, token in named.items():  # the processor reads each token's id as an attribute too
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    tile = dict(size={"height": 32, "width": 32}, crop_to_patches=False)
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(**tile),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size={"height": 32, "width": 32}),
        image_seq_length=4,
        chat_template=INTERNVL_FORMAT_TEMPLATE,
    )
    config = InternVLConfig(
        text_config=dict(
            model_type=text_model_type,
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            model_type="internvl_vision", **VISION_ENCODER_SIZES, image_size=[32, 32], patch_size=[8, 8],
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return instantiate(InternVLForConditionalGeneration, config, processor, seed)

