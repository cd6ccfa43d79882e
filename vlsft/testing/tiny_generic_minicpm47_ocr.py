"""Tiny MiniCPM-V 4.7, FastVLM, LightOnOCR and PaddleOCR-VL models on the generic exact path (`vlsft.testing.
tiny_generic` holds the shared tokenizer helper): each family's real model class built from its config class with
random weights, and its real processor class with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import (
    CLIPImageProcessor,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    LightOnOcrConfig,
    LightOnOcrForConditionalGeneration,
    LightOnOcrProcessor,
    MiniCPMV4_7Config,
    MiniCPMV4_7ForConditionalGeneration,
    MiniCPMV4_7Processor,
    PaddleOCRVLConfig,
    PaddleOCRVLForConditionalGeneration,
    PaddleOCRVLImageProcessor,
    PaddleOCRVLProcessor,
    LlavaProcessor,
    PixtralImageProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer
from vlsft.testing.tiny_generic_molmo_ovis_minicpm import MINICPMV4_6_FORMAT_TEMPLATE, minicpmv_processor
from vlsft.testing.tiny_qwen import qwen3_5_text_config

# FastVLM's chat template as transformers' conversion script gives its checkpoints (KamilaMila/FastVLM-*, from
# apple/FastVLM-*): ChatML over its Qwen2 language model, a default system block when the first message is not one,
# each message's images first as `<image>`, then each text after a newline; content given as a string writes nothing
# (the template reads only content items).
FAST_VLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_minicpmv4_7(seed: int = 0, hidden_size: int = HIDDEN):
    """MiniCPM-V 4.7: `MiniCPMV4_7ForConditionalGeneration` (4.6's vision tower and merger, a Qwen3.5 hybrid language
    model, positions laid out by "canvas M-RoPE" from `mm_token_type_ids`: each image's and slice's markers pinned to
    its corners) + `MiniCPMV4_7Processor` over 4.6's image processor, with 4.6's ChatML format template (4.7's
    checkpoint template could not be found offline; its Qwen3.5 base writes the same turns)."""
    processor = minicpmv_processor(MiniCPMV4_7Processor)
    tokenizer = processor.tokenizer
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert len(newline) == 1, "canvas M-RoPE pins slice rows by the one newline token"
    config = MiniCPMV4_7Config(
        text_config=dict(model_type="qwen3_5_text", **qwen3_5_text_config(tokenizer, hidden_size)),
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=56, patch_size=14),
        insert_layer_id=0,
        image_size=56,
        downsample_mode="4x",
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        image_start_id=tokenizer.image_start_token_id,
        image_end_id=tokenizer.image_end_token_id,
        slice_start_id=tokenizer.slice_start_token_id,
        slice_end_id=tokenizer.slice_end_token_id,
        newline_id=newline[0],
    )
    return instantiate(MiniCPMV4_7ForConditionalGeneration, config, processor, seed)


def build_tiny_lighton_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """LightOnOCR: `LightOnOcrForConditionalGeneration` (a Pixtral vision encoder, `vision_encoder`; a projector that
    merges 2x2 patches, `vision_projection`; a Qwen3 language model) + `LightOnOcrProcessor` over Pixtral's image
    processor: images up to 32 px in 8 px patches, each 2x2 merged patch one `<|image_pad|>`. Its checkpoints
    (lightonai/LightOnOCR-*) speak ChatML with each image as `<|image_pad|>` in place (transformers' docs and
    processor tests), which is `MINICPMV4_6_FORMAT_TEMPLATE`'s text; the stop token is `<|im_end|>`."""
    named = {"image_token": "<|image_pad|>", "image_break_token": "<|vision_pad|>", "image_end_token": "<|vision_end|>"}
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for name, token in named.items():  # the processor reads each token's id as an attribute too
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    processor = LightOnOcrProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 32}, patch_size={"height": 8, "width": 8}),
        tokenizer=tokenizer,
        patch_size=8,
        spatial_merge_size=2,
        chat_template=MINICPMV4_6_FORMAT_TEMPLATE,
    )
    config = LightOnOcrConfig(
        text_config=dict(
            model_type="qwen3",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(model_type="pixtral", **VISION_ENCODER_SIZES, head_dim=16, image_size=32, patch_size=8),
        spatial_merge_size=2,
        image_token_id=tokenizer.image_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(LightOnOcrForConditionalGeneration, config, processor, seed)


def build_tiny_fast_vlm(seed: int = 0, hidden_size: int = HIDDEN):
    """FastVLM: `FastVlmForConditionalGeneration` (a timm FastViT-MCi3 hybrid conv/attention tower, reparameterised
    as the checkpoints ship it, here 1 block per stage; a 2-layer MLP projector; a Qwen2 language model) +
    `LlavaProcessor` (what the checkpoints use: FastVLM has no processor of its own) over a CLIP image processor, with
    `FAST_VLM_TEMPLATE`. The tower downsamples by 64: a 128 px image is 2x2 = 4 `<image>` tokens."""
    tokenizer = _byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"], {"image_token": "<image>"},
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    view = dict(size={"shortest_edge": 128}, crop_size={"height": 128, "width": 128})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(**view, image_mean=[0.0] * 3, image_std=[1.0] * 3),
        tokenizer=tokenizer,
        patch_size=64,  # the tower's whole downsampling (2^6)
        vision_feature_select_strategy="full",
        chat_template=FAST_VLM_TEMPLATE,
    )
    # Weights drawn wide enough (std 0.4) that the image reaches the language model through ~20 convolutions (at
    # 0.02 its features are ~1e-22, and no test could see the image, nor the batch statistics of its BatchNorms).
    tower = dict(
        model_type="timm_wrapper", architecture="fastvit_mci3", hidden_size=64, do_pooling=False, initializer_range=0.4,
        # 4 downsampling stages after the stem; attention needs widths divisible by its head size (32).
        model_args=dict(inference_mode=True, layers=(1, 1, 1, 1, 1), embed_dims=(8, 8, 16, 32, 32)),
    )
    config = FastVlmConfig(
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=tower,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=4,
        tie_word_embeddings=False,
    )
    return instantiate(FastVlmForConditionalGeneration, config, processor, seed)


# PaddleOCR-VL's chat template, after its checkpoint's (PaddlePaddle/PaddleOCR-VL): the BOS `<|begin_of_sentence|>`
# first; a user turn is `User: `, its images (`<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>` each), its texts
# and a newline; an assistant turn `Assistant: `, its texts and the eos `</s>`; a system message its texts, each
# followed by a newline; any other role (tool) writes nothing. Only content items are read: content given as a string
# writes nothing. The processor expands `<|IMAGE_PLACEHOLDER|>` into the image's merged patches.
PADDLEOCR_VL_TEMPLATE = (
    "{{- '<|begin_of_sentence|>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'User: ' -}}"
    "{%- for content in message['content'] -%}{%- if content['type'] == 'image' -%}"
    "{{- '<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>' -}}{%- endif -%}{%- endfor -%}"
    "{%- for content in message['content'] -%}{%- if content['type'] == 'text' -%}{{- content['text'] -}}"
    "{%- endif -%}{%- endfor -%}{{- '\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' -}}"
    "{%- for content in message['content'] -%}{%- if content['type'] == 'text' -%}{{- content['text'] -}}"
    "{%- endif -%}{%- endfor -%}{{- '</s>' -}}"
    "{%- elif message['role'] == 'system' -%}"
    "{%- for content in message['content'] -%}{%- if content['type'] == 'text' -%}{{- content['text'] + '\n' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}{%- endif -%}"
)


def build_tiny_paddleocr_vl(seed: int = 0, hidden_size: int = HIDDEN):
    """PaddleOCR-VL: `PaddleOCRVLForConditionalGeneration` (a NaViT-style SigLIP tower, `visual`; a projector that
    merges 2x2 patches, `projector`; an ERNIE-4.5 language model with 3D rope) + `PaddleOCRVLProcessor` with
    `PADDLEOCR_VL_TEMPLATE`. Images of 14 px patches, resized to between 28x28 and 56x56 px."""
    named = {"image_token": "<|IMAGE_PLACEHOLDER|>"}
    special = ["<unk>", "<|begin_of_sentence|>", "</s>", "<|IMAGE_START|>", "<|IMAGE_END|>", *named.values()]
    tokenizer = _byte_level_tokenizer(
        special, named, bos_token="<|begin_of_sentence|>", eos_token="</s>", pad_token="<unk>"
    )
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids(named["image_token"])
    processor = PaddleOCRVLProcessor(
        image_processor=PaddleOCRVLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56),
        tokenizer=tokenizer,
        chat_template=PADDLEOCR_VL_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = PaddleOCRVLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=56, patch_size=14, spatial_merge_size=2),
        image_token_id=tokenizer.image_token_id,
        vision_start_token_id=ids("<|IMAGE_START|>"),
        vision_end_token_id=ids("<|IMAGE_END|>"),
        tie_word_embeddings=False,
    )
    return instantiate(PaddleOCRVLForConditionalGeneration, config, processor, seed)
