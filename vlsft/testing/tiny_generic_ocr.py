"""Tiny OCR models on the generic exact path (GLM-OCR...): each family's real model class built from its config class
with random weights, and the real processor class its checkpoints use, with a tokenizer trained in-process."""

from __future__ import annotations

from transformers import (
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2ImageProcessor,
    DeepseekOcr2Processor,
    GotOcr2ImageProcessor,
    Glm46VImageProcessor,
    Glm46VProcessor,
    Glm46VVideoProcessor,
    GlmOcrConfig,
    GlmOcrForConditionalGeneration,
    MiniCPMOcrConfig,
    MiniCPMOcrForConditionalGeneration,
    MiniCPMOcrImageProcessor,
    MiniCPMOcrProcessor,
    MiniCPMOcrVideoProcessor,
    QianfanOCRConfig,
    QianfanOCRForConditionalGeneration,
    QianfanOCRProcessor,
    UnlimitedOcrConfig,
    UnlimitedOcrForConditionalGeneration,
    UnlimitedOcrImageProcessor,
    UnlimitedOcrProcessor,
)

from vlsft.testing.tiny_build import HIDDEN, VISION_ENCODER_SIZES, instantiate, language_model_sizes
from vlsft.testing.tiny_generic import _byte_level_tokenizer
from vlsft.testing.tiny_generic_molmo_ovis_minicpm import (
    _MINICPMV_NAMED_TOKENS,
    MINICPMV4_6_FORMAT_TEMPLATE,
    MINICPMV_SCALING,
)
from vlsft.testing.tiny_generic_qwen2_glm import glm4_5v_format_template, glm_config, glm_processor
from vlsft.testing.tiny_qwen import qwen3_5_text_config


def build_tiny_glm_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """GLM-OCR: `GlmOcrForConditionalGeneration` (GLM-4.1V's layout: a CogViT-style ViT with a merger, `visual`; a
    GLM language model with 3D rope) + `Glm46VProcessor`, which its checkpoint (zai-org/GLM-OCR) names as its
    `processor_class` (transformers maps no processor to `glm_ocr`). Its checkpoint's template is GLM-4.6V's:
    `[gMASK]<sop>`, tools in a system block, `<|assistant|>` + a `<think>` block + the text, images as
    `<|begin_of_image|><|image|><|end_of_image|>`, no end-of-turn marker (generation stops on `<|user|>` or
    `<|observation|>`, supervised as the turn's stop token), which `glm4_5v_format_template()` writes."""
    processor = glm_processor(
        Glm46VProcessor, Glm46VImageProcessor, Glm46VVideoProcessor, glm4_5v_format_template(), glm4_5=True
    )
    config = glm_config(GlmOcrConfig, processor.tokenizer, hidden_size)
    return instantiate(GlmOcrForConditionalGeneration, config, processor, seed)


# Qianfan-OCR's chat format (its checkpoint's template could not be found offline): ChatML, as its Qwen3 language
# model's and the InternVL chat format it descends from, each image item written as `<image>` on its own line (the
# placeholder `QianfanOCRProcessor` expands into `<img>` + the tiles' `<IMG_CONTEXT>` tokens + `</img>`), a turn
# ended by `<|im_end|>`.
QIANFAN_OCR_FORMAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message.role }}\n"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}{{- '<image>\\n' -}}{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def build_tiny_qianfan_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """Qianfan-OCR: `QianfanOCRForConditionalGeneration` (Qianfan-ViT, `vision_tower`; a pixel-shuffle MLP projector,
    `multi_modal_projector`; a Qwen3 language model) + `QianfanOCRProcessor` over GOT-OCR2's image processor (the one
    transformers maps to `qianfan_ocr`), with `QIANFAN_OCR_FORMAT_TEMPLATE`. Images are cut into up to 2 tiles of
    32 px (plus a thumbnail when there are 2), each tile 8 px patches shuffled by 0.5: 4 `<IMG_CONTEXT>` tokens."""
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}
    # `<image>` is plain text, not a token (as in the InternVL tokenizers Qianfan's descends from): the processor
    # replaces it in the text before tokenizing.
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for name, token in named.items():  # the processor reads each token's id as an attribute too
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    processor = QianfanOCRProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": 32, "width": 32}, max_patches=2),
        tokenizer=tokenizer,
        image_seq_length=4,
        chat_template=QIANFAN_OCR_FORMAT_TEMPLATE,
    )
    config = QianfanOCRConfig(
        text_config=dict(
            model_type="qwen3",
            vocab_size=len(tokenizer),
            **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        # No stochastic depth: a training step must be a function of its batch (exact gradient accumulation).
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=32, patch_size=8, drop_path_rate=0.0),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    return instantiate(QianfanOCRForConditionalGeneration, config, processor, seed)


def build_tiny_minicpm_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """MiniCPM-OCR: `MiniCPMOcrForConditionalGeneration` (MiniCPM-V 4.6's layout: a SigLIP-style ViT with a
    window-attention merger inserted after its first layer, an MLP merger, a Qwen3.5 hybrid language model) +
    `MiniCPMOcrProcessor` over its own image processor (small images and slices upscaled to the slice resolution),
    with MiniCPM-V 4.6's tokens and ChatML format template (`MINICPMV4_6_FORMAT_TEMPLATE`: MiniCPM-OCR's checkpoint
    template could not be found offline; its Qwen3.5 base writes the same turns), images about 56 px in 14 px
    patches, merged 4x, cut into up to 2 slices."""
    named = _MINICPMV_NAMED_TOKENS
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values(), "<think>", "</think>"]
    tokenizer = _byte_level_tokenizer(special, named, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for name, token in named.items():  # the processor reads each token's id as an attribute too
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    processor = MiniCPMOcrProcessor(
        image_processor=MiniCPMOcrImageProcessor(**MINICPMV_SCALING),
        video_processor=MiniCPMOcrVideoProcessor(**MINICPMV_SCALING),
        tokenizer=tokenizer,
        chat_template=MINICPMV4_6_FORMAT_TEMPLATE,
    )
    config = MiniCPMOcrConfig(
        text_config=dict(model_type="qwen3_5_text", **qwen3_5_text_config(tokenizer, hidden_size)),
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=56, patch_size=14),
        insert_layer_id=0,
        downsample_mode="4x",
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(MiniCPMOcrForConditionalGeneration, config, processor, seed)


def plain_ocr_template(image_text: str) -> str:
    """The "plain" prompt format of the DeepSeek-OCR lineage (DeepSeek-OCR-2, Unlimited-OCR), whose checkpoints ship
    no chat template: DeepSeek's code formats a conversation with no roles and no separators, each message's text in
    turn after the BOS, an answer followed by the stop token (the eos), and each image as `image_text` (the
    documented prompts: `<image>\\nFree OCR.`, `<image>document parsing.`). A row then trains on what the model reads
    at inference: the prompt, then the answer and the stop token. A tool message's text is written as a user's."""
    return (
        "{{- bos_token -}}"
        "{%- for message in messages -%}"
        "{%- if message.content is string -%}{{- message.content -}}"
        "{%- else -%}{%- for item in message.content -%}"
        "{%- if item.type == 'image' -%}{{- " + repr(image_text) + " -}}"
        "{%- elif item.type == 'text' -%}{{- item.text -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- if message.role == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
        "{%- endfor -%}"
    )


def deepseek_tokenizer():
    """A tokenizer with the DeepSeek-OCR lineage's BOS, eos, padding and `<image>` tokens."""
    special = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>"]
    return _byte_level_tokenizer(
        special, {"image_token": "<image>"}, bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>",
        pad_token="<｜▁pad▁｜>",
    )


def deepseek_v2_text_config(tokenizer, hidden_size: int) -> dict:
    """A 2-layer DeepSeek-V2 language model: one dense layer, then one of 4 routed experts (2 per token) and a shared
    expert."""
    sizes = language_model_sizes(hidden_size)
    sizes.pop("head_dim")  # DeepSeek-V2's is hidden_size / heads
    return dict(
        vocab_size=len(tokenizer), **sizes, mlp_layer_types=["dense", "sparse"], n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=hidden_size,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_deepseek_ocr2(seed: int = 0, hidden_size: int = HIDDEN):
    """DeepSeek-OCR-2: `DeepseekOcr2ForConditionalGeneration` (a SAM ViT whose 16x-downsampled features feed a Qwen2
    encoder with learned queries, together `vision_tower`; a linear `multi_modal_projector`; a DeepSeek-V2 language
    model) + `DeepseekOcr2Processor` over its own image processor, with `plain_ocr_template("<image>\\n")`. The
    model's queries are fixed by resolution (256 for the 1024 px global view, 144 per 768 px tile), so the views keep
    the checkpoint's sizes: a test image (smaller than a tile) is 257 `<image>` tokens, 256 global ones and the view
    separator; the towers are tiny."""
    tokenizer = deepseek_tokenizer()
    processor = DeepseekOcr2Processor(
        image_processor=DeepseekOcr2ImageProcessor(), tokenizer=tokenizer, chat_template=plain_ocr_template("<image>\n")
    )
    config = DeepseekOcr2Config(
        text_config=deepseek_v2_text_config(tokenizer, hidden_size),
        vision_config=dict(
            sam_config=dict(
                hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                # Windowed attention only: a global layer over the 64x64 patches of the 1024 px view costs seconds.
                global_attn_indexes=[], downsample_channels=[16, 32],
            ),
            encoder_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2,
            ),
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    return instantiate(DeepseekOcr2ForConditionalGeneration, config, processor, seed)


def build_tiny_unlimited_ocr(seed: int = 0, hidden_size: int = HIDDEN):
    """Unlimited-OCR: `UnlimitedOcrForConditionalGeneration` (DeepSeek-OCR's SAM ViT whose 16x-downsampled features are
    a CLIP encoder's patch embeddings, together `vision_tower`; a linear `multi_modal_projector`; a DeepSeek-V2
    language model with reference sliding-window attention) + `UnlimitedOcrProcessor` over its own image processor,
    with `plain_ocr_template("<image>")`. A 128 px global view (2x2 features, each row ended by a newline feature)
    and 64 px tiles: a test image is 7 `<image>` tokens, with the view separator."""
    tokenizer = deepseek_tokenizer()
    processor = UnlimitedOcrProcessor(
        image_processor=UnlimitedOcrImageProcessor(size={"height": 128, "width": 128}, tile_size=64),
        tokenizer=tokenizer,
        chat_template=plain_ocr_template("<image>"),
    )
    config = UnlimitedOcrConfig(
        text_config=deepseek_v2_text_config(tokenizer, hidden_size),
        vision_config=dict(
            sam_config=dict(
                hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                image_size=128, window_size=4, global_attn_indexes=[1], downsample_channels=[16, 32],
            ),
            encoder_config=dict(**VISION_ENCODER_SIZES, image_size=28, patch_size=14),
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    return instantiate(UnlimitedOcrForConditionalGeneration, config, processor, seed)
