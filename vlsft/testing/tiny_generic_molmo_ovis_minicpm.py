"""Tiny Ovis2, Molmo2 and MiniCPM-V 4.6 models on the generic exact path (`vlsft.testing.tiny_generic` holds the
other families and the shared tokenizer helper; `vlsft.testing.tiny_generic_molmo_ovis_minicpm_llava` the video
LLaVAs): each family's real model
class built from its config class with random weights, and its real processor class with a tokenizer trained
in-process."""

from __future__ import annotations

from transformers import (
    MiniCPMV4_6Config,
    MiniCPMV4_6ForConditionalGeneration,
    MiniCPMV4_6ImageProcessor,
    MiniCPMV4_6Processor,
    MiniCPMV4_6VideoProcessor,
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    Molmo2ImageProcessor,
    Molmo2Processor,
    Molmo2VideoProcessor,
    Ovis2Config,
    Ovis2ForConditionalGeneration,
    Ovis2ImageProcessor,
    Ovis2Processor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer
from vlsft.testing.tiny_qwen import qwen3_5_text_config

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


# -- Molmo2 --------------------------------------------------------------------------------------------------------

# Molmo2's chat template as its checkpoints ship it (allenai/Molmo2-4B's chat_template.jinja), less its `subtitle`
# role and its per-item `style` prefixes, which no test row uses. What it does that the generic path must handle:
# - every image of the conversation is written once, before the first message (`<|image|>`, or `Image i<|image|>`
#   for each of several), whichever message holds it: a row with an image after an assistant turn renders its
#   prefix differently from the whole, and is refused by the rule, naming the turn;
# - user and assistant must alternate, starting with the user (no system or tool message: raise_exception);
# - an assistant turn ends with its text: `<|im_end|>` is written before the next user turn, and is the stop token
#   (the checkpoint's `eos_token_id`), supervised and appended after a final turn;
# - the processor writes the checkpoint's BOS (its tokenizer has none: `<|im_end|>`) as text before each row.
MOLMO2_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}{%- if message['content'] is not string -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' -%}{%- set image_count.value = image_count.value + 1 -%}"
    "{%- elif content['type'] == 'video' -%}{%- set video_count.value = video_count.value + 1 -%}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{%- if image_count.value == 1 -%}{{ '<|image|>' }}"
    "{%- elif image_count.value > 1 -%}"
    "{%- for i in range(image_count.value) -%}{{ 'Image ' ~ (i + 1) ~ '<|image|>' }}{%- endfor -%}{%- endif -%}"
    "{%- for _ in range(video_count.value) -%}{{ '<|video|>' }}{%- endfor -%}"
    "{%- for message in messages -%}{%- set role = message['role'].lower() -%}"
    "{%- if (loop.index % 2 == 1 and role != 'user') or (loop.index % 2 == 0 and role != 'assistant') -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if message['content'] is string -%}{%- set text_content = message['content'] -%}"
    "{%- else -%}{%- set m = namespace(text='') -%}"
    "{%- for content in message['content'] -%}{%- if content['type'] == 'text' -%}"
    "{%- set m.text = m.text ~ ('' if not m.text else ' ') ~ content['text'] -%}{%- endif -%}{%- endfor -%}"
    "{%- set text_content = m.text -%}{%- endif -%}"
    "{%- if role == 'user' -%}{%- if not loop.first -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{{ '<|im_start|>user\\n' }}{{ text_content }}{{ '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>assistant\\n' }}{{ text_content }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
_MOLMO2_IMAGE_TOKENS = [
    "<im_start>", "<im_end>", "<im_patch>", "<im_col>", "<low_res_im_start>", "<im_low>", "<frame_start>",
    "<frame_end>",
]


def build_tiny_molmo2(seed: int = 0, hidden_size: int = HIDDEN):
    """Molmo2: `Molmo2ForConditionalGeneration` (a SigLIP-style ViT, an adapter that pools 2x2 patches by attention
    and projects them, a Qwen3-style language model) + `Molmo2Processor` with `MOLMO2_TEMPLATE`. 28 px crops of 7 px
    patches: an image is its low-resolution view (2x2 tokens) plus up to 2 overlapping crops."""
    named = {"image_token": "<|image|>", "video_token": "<|video|>"}
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values(), *_MOLMO2_IMAGE_TOKENS]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    crops = dict(size={"height": 28, "width": 28}, patch_size=7)
    processor = Molmo2Processor(
        image_processor=Molmo2ImageProcessor(**crops, max_crops=2, overlap_margins=[1, 1]),
        video_processor=Molmo2VideoProcessor(**crops),
        tokenizer=tokenizer,
        chat_template=MOLMO2_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    heads = dict(num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    config = Molmo2Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            additional_vocab_size=0,  # the tiny vocabulary holds the image tokens itself
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, **heads, image_size=[28, 28],
                           patch_size=7),
        adapter_config=dict(vision_feature_layer=[-1], hidden_size=32, intermediate_size=64, **heads,
                            text_hidden_size=hidden_size),
        image_start_token_id=ids("<im_start>"),
        low_res_image_start_token_id=ids("<low_res_im_start>"),
        image_end_token_id=ids("<im_end>"),
        image_patch_id=ids("<im_patch>"),
        frame_start_token_id=ids("<frame_start>"),
        frame_end_token_id=ids("<frame_end>"),
        tie_word_embeddings=False,
    )
    return instantiate(Molmo2ForConditionalGeneration, config, processor, seed)


# -- MiniCPM-V 4.6 -------------------------------------------------------------------------------------------------

# MiniCPM-V 4.6's chat format (ChatML, as its Qwen3.5 language model's), written for these tests: the checkpoint's own
# template could not be found offline (it follows Qwen3.5's, whose thinking variants render an empty reasoning block
# only on the last turn: the rule refuses such rows by name). Each image is the tokenizer's `<|image_pad|>` in place,
# which the processor replaces with `<image_id>i</image_id>`, the image's tokens between `<image>` and `</image>`
# and its slices, each between `<slice>` and `</slice>`, rows of slices separated by plain newlines.
MINICPMV4_6_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}{{ '<|image_pad|>' }}{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


# The tokens MiniCPM-V 4.6's and 4.7's tokenizers name (the processor reads each one's id as an attribute too).
_MINICPMV_NAMED_TOKENS = {
    "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
    "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>",
}
# Images scaled to about 56 px in 14 px patches, merged 4x; one that is not square also cut into up to 2 slices.
MINICPMV_SCALING = dict(scale_resolution=56, max_slice_nums=2, patch_size=14, downsample_mode="4x")


def minicpmv_processor(processor_class, template: str = MINICPMV4_6_FORMAT_TEMPLATE):
    """`processor_class` (MiniCPM-V 4.6's or 4.7's processor: both take 4.6's image and video processors) with a
    tokenizer trained in-process holding MiniCPM-V's named tokens, and `template`."""
    named = _MINICPMV_NAMED_TOKENS
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values(), "<think>", "</think>"]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for name, token in named.items():
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    return processor_class(
        image_processor=MiniCPMV4_6ImageProcessor(**MINICPMV_SCALING),
        video_processor=MiniCPMV4_6VideoProcessor(**MINICPMV_SCALING),
        tokenizer=tokenizer,
        chat_template=template,
    )


def build_tiny_minicpmv4_6(seed: int = 0, hidden_size: int = HIDDEN):
    """MiniCPM-V 4.6: `MiniCPMV4_6ForConditionalGeneration` (a SigLIP-style ViT with a window-attention merger
    inserted after its first layer, an MLP merger, a Qwen3.5 hybrid language model: one GatedDeltaNet layer and one
    full-attention layer) + `MiniCPMV4_6Processor` with `MINICPMV4_6_FORMAT_TEMPLATE` (`MINICPMV_SCALING`)."""
    processor = minicpmv_processor(MiniCPMV4_6Processor)
    tokenizer = processor.tokenizer
    config = MiniCPMV4_6Config(
        text_config=dict(model_type="qwen3_5_text", **qwen3_5_text_config(tokenizer, hidden_size)),
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=56, patch_size=14),
        insert_layer_id=0,
        image_size=56,
        downsample_mode="4x",
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
    )
    return instantiate(MiniCPMV4_6ForConditionalGeneration, config, processor, seed)
