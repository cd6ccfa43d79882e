"""Tiny, randomly initialised models of every VLM family vlsft supports, built without any download.

Each builder returns `(model, processor)`: the family's real model class with a 2-layer language model and a small
vision tower, and the family's real processor class with the stock chat template (as TRL ships it). The tokenizer is
the family's real tokenizer class (byte-level BPE for Qwen, Llama 3 and SmolLM; sentencepiece-style BPE with byte
fallback for Gemma and Mistral), built from a small vocabulary trained in-process with the family's special tokens.
Using the real tokenizer class matters: how a piece of text tokenizes at its start (a prefix space or not, the BOS
token added or not) is exactly what an exact mask depends on.

`build_tiny(family)` builds any of them; `FAMILY_BUILDERS` lists them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessor,
    Gemma4Processor,
    Gemma4VideoProcessor,
    GemmaTokenizer,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlamaTokenizer,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5Tokenizer,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from vlsft.distributed import whole_model_build
from vlsft.templates import stock_template
from vlsft.testing.tiny_qwen3_vl import (
    _CORPUS,
    SPECIAL_TOKENS,
    build_processor,
    build_tiny_qwen3_vl,
    qwen_vision_token_ids,
    tiny_qwen3_vision_config,
    train_byte_level_bpe,
    train_tokenizer,
)

# Chat-template literals of the other families and capitalised words, so that test conversations take few tokens.
_FAMILY_CORPUS = [
    "User: Assistant: System: Tool: <start_of_turn>user <start_of_turn>model [INST] [/INST] <<SYS>> <</SYS>>",
    "Red. Blue. Green. Yes. No. A square. A circle. The third one. Hello, can you see images? Here. What shape?",
    "And this one? Colour? Shape? Square Red Be brief. You answer in one word. Say nothing. Just text, no picture.",
    "Fine by me. Yes, send one. A circle on the left. It is a red dot. Zoom on the left, please. Zooming in.",
]
_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
_HIDDEN = 64
_HEAD_DIM = 16


def _language_model_sizes(hidden_size: int) -> dict:
    return dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=hidden_size // _HEAD_DIM,
        num_key_value_heads=2,
        head_dim=_HEAD_DIM,
        max_position_embeddings=4096,
    )


# -- tokenizers ---------------------------------------------------------------------------------------------------


def _train_byte_level(special_tokens: list[str], vocab_size: int = 800) -> Tokenizer:
    return train_byte_level_bpe((_CORPUS + _FAMILY_CORPUS) * 20, special_tokens, vocab_size)


def _train_sentencepiece_style(special_tokens: list[str], vocab_size: int = 800) -> tuple[dict, list]:
    """Vocabulary and merges of a sentencepiece-style BPE ('▁' marks a space, bytes fall back to `<0xXX>`), as
    Gemma and Mistral/Llama 2 use. Trained on whole words, so no merge crosses a word boundary (as in the real
    vocabularies); the real tokenizer class then supplies its own normalizer, pre-tokenizer and decoder."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(_BYTE_TOKENS) + len(special_tokens),
        special_tokens=special_tokens + _BYTE_TOKENS,
        show_progress=False,
    )
    tokenizer.train_from_iterator((_CORPUS + _FAMILY_CORPUS) * 20, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    return model["vocab"], merges


def train_gemma3_tokenizer() -> GemmaTokenizer:
    """A `GemmaTokenizer` with Gemma 3's special tokens and its `boi/eoi/image` token attributes."""
    vocab, merges = _train_sentencepiece_style(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,  # as the real tokenizer_config.json: the template writes <bos> itself
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}, replace_extra_special_tokens=False
    )
    return tokenizer


# Gemma 4's named media tokens (the tokenizer attributes its processor reads) and its other special tokens: turns,
# the reasoning channel, the thinking switch, tool declarations, calls and responses, and the string delimiter of
# tool arguments.
GEMMA4_MEDIA_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
}
GEMMA4_SPECIAL_TOKENS = [
    "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>", "<|tool>", "<tool|>", "<|tool_call>",
    "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>', "<|video|>",
]


def train_gemma4_tokenizer() -> GemmaTokenizer:
    """A `GemmaTokenizer` (the class Gemma 4 checkpoints load) with Gemma 4's special tokens and media attributes."""
    vocab, merges = _train_sentencepiece_style(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, extra_special_tokens=GEMMA4_MEDIA_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": GEMMA4_SPECIAL_TOKENS}, replace_extra_special_tokens=False)
    return tokenizer


def train_llama3_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with the Llama 3 special tokens Idefics3 uses; it adds `<|begin_of_text|>` like the
    real one (Idefics3's template writes it, so the processor does not add a second one)."""
    row_col = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    tokenizer = _train_byte_level(special + ["<global-img>"] + row_col)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
        pad_token="<|end_of_text|>",
        add_bos_token=True,
        extra_special_tokens=special[2:] + ["<global-img>"] + row_col,
    )


def train_smolvlm_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with SmolVLM's special tokens and token attributes (its BOS is `<|im_start|>`)."""
    row_col = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    named = {
        "fake_image_token": "<fake_token_around_image>",
        "image_token": "<image>",
        "end_of_utterance_token": "<end_of_utterance>",
        "global_image_token": "<global-img>",
        "video_token": "<video>",
    }
    tokenizer = _train_byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list(named.values()) + row_col)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=named,
    )
    fast.add_special_tokens({"additional_special_tokens": row_col}, replace_extra_special_tokens=False)
    return fast


def train_mistral_tokenizer() -> LlamaTokenizer:
    """A `LlamaTokenizer` (the class LLaVA-NeXT-Mistral loads) with `<image>` added: Metaspace with a prefix space
    on the first word, BOS added on encode, and a decoder that strips the leading space."""
    vocab, merges = _train_sentencepiece_style(["<unk>", "<s>", "</s>"])
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, pad_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


# -- families -------------------------------------------------------------------------------------------------------


def build_tiny_qwen2_5_vl(seed: int = 0, hidden_size: int = _HIDDEN):
    """Qwen2.5-VL: `Qwen2_5_VLForConditionalGeneration` + `Qwen2_5_VLProcessor` (Qwen's tokenizer and tokens)."""
    tokenizer = train_tokenizer(extra_text=_FAMILY_CORPUS)
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        chat_template=stock_template("qwen2_5_vl"),
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **_language_model_sizes(hidden_size),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            bos_token_id=None,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=64,
            fullatt_block_indexes=[1],
            out_hidden_size=hidden_size,
        ),
        **qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return _instantiate(Qwen2_5_VLForConditionalGeneration, config, processor, seed)


def build_tiny_qwen3_vl_moe(seed: int = 0, hidden_size: int = _HIDDEN):
    """Qwen3-VL-MoE: `Qwen3VLMoeForConditionalGeneration` (4 experts, 2 per token) with the Qwen3-VL processor and
    template, which the MoE checkpoints share."""
    processor = build_processor()
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    sizes = _language_model_sizes(hidden_size)
    config = Qwen3VLMoeConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **sizes,
            moe_intermediate_size=hidden_size,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            rope_parameters={
                "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True
            },
            pad_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            bos_token_id=None,
        ),
        vision_config=tiny_qwen3_vision_config(hidden_size),
        **qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return _instantiate(Qwen3VLMoeForConditionalGeneration, config, processor, seed)


def build_tiny_gemma3(seed: int = 0, hidden_size: int = _HIDDEN):
    """Gemma 3: `Gemma3ForConditionalGeneration` + `Gemma3Processor`. A 32 px image is 4x4 SigLIP patches pooled to
    4 soft tokens. `final_logit_softcapping` is set, as a trap: the conditional-generation head does not apply it,
    so a loss that did would no longer match the model's own logits."""
    tokenizer = train_gemma3_tokenizer()
    tokens_per_image = 4
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=stock_template("gemma3"),
        image_seq_length=tokens_per_image,
    )
    config = Gemma3Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            **_language_model_sizes(hidden_size),
            query_pre_attn_scalar=_HEAD_DIM,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=30.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_turn>"),
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            vision_use_head=False,
        ),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.convert_tokens_to_ids(tokenizer.eoi_token),
        image_token_index=tokenizer.image_token_id,
        tie_word_embeddings=True,
    )
    model, processor = _instantiate(Gemma3ForConditionalGeneration, config, processor, seed)
    # Gemma 3 initialises its image projection to zeros: images would reach the language model as zeros, and no
    # gradient would reach the vision tower. A trained checkpoint has a real projection; so does the tiny model.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.02)
    return model, processor


def build_tiny_gemma4(seed: int = 0, hidden_size: int = _HIDDEN, template: str = "gemma4_v5"):
    """Gemma 4: `Gemma4ForConditionalGeneration` + `Gemma4Processor` with the stock template of revision `template`.
    Images are cut into 4 px patches, pooled 2x2 into at most 70 soft tokens (the smallest budget the image processor
    accepts): a 64x48 picture is 63 soft tokens. The language model has Gemma 4's per-layer input embeddings, a
    sliding and a full attention layer (with its own head size), bidirectional attention over each image and
    `final_logit_softcapping`; no audio tower."""
    tokenizer = train_gemma4_tokenizer()
    vision_sizes = dict(patch_size=4, max_soft_tokens=70, pooling_kernel_size=2)
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(**vision_sizes),
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(**vision_sizes),
        chat_template=stock_template(template),
        image_seq_length=70,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma4Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            **_language_model_sizes(hidden_size),
            global_head_dim=2 * _HEAD_DIM,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=len(tokenizer),
            use_bidirectional_attention="vision",
            final_logit_softcapping=30.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=ids("<turn|>"),
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            patch_size=4,
            pooling_kernel_size=2,
            position_embedding_size=64,
        ),
        audio_config=None,
        boi_token_id=ids("<|image>"),
        eoi_token_id=ids("<image|>"),
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        boa_token_id=ids("<|audio>"),
        eoa_token_index=ids("<audio|>"),
        audio_token_id=ids("<|audio|>"),
        tie_word_embeddings=True,
    )
    return _instantiate(Gemma4ForConditionalGeneration, config, processor, seed)


def _idefics3_like_config(config_class, tokenizer, hidden_size: int):
    """Shared by Idefics3 and SmolVLM: 32 px tiles of 8 px patches (16 patches), pixel-shuffled by 2 to 4 tokens."""
    return config_class(
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            **_language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )


# Images up to 64 px are split into 32 px tiles (2x2 for a 64x64 image) plus the whole image resized to 32 px.
_IDEFICS_SIZES = dict(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
_IDEFICS_IMAGE_TOKENS = 4


def build_tiny_idefics3(seed: int = 0, hidden_size: int = _HIDDEN):
    """Idefics3: `Idefics3ForConditionalGeneration` + `Idefics3Processor` (a Llama 3 style tokenizer)."""
    tokenizer = train_llama3_tokenizer()
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**_IDEFICS_SIZES),
        tokenizer=tokenizer,
        image_seq_len=_IDEFICS_IMAGE_TOKENS,
        chat_template=stock_template("idefics3"),
    )
    config = _idefics3_like_config(Idefics3Config, tokenizer, hidden_size)
    return _instantiate(Idefics3ForConditionalGeneration, config, processor, seed)


def build_tiny_smolvlm(seed: int = 0, hidden_size: int = _HIDDEN):
    """SmolVLM: `SmolVLMForConditionalGeneration` + `SmolVLMProcessor` (a SmolLM2 style tokenizer). The processor
    needs the `num2words` package."""
    tokenizer = train_smolvlm_tokenizer()
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**_IDEFICS_SIZES),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(**_IDEFICS_SIZES),
        image_seq_len=_IDEFICS_IMAGE_TOKENS,
        chat_template=stock_template("smolvlm"),
    )
    config = _idefics3_like_config(SmolVLMConfig, tokenizer, hidden_size)
    return _instantiate(SmolVLMForConditionalGeneration, config, processor, seed)


def build_tiny_llava_next(seed: int = 0, hidden_size: int = _HIDDEN):
    """LLaVA-NeXT (Mistral flavour): `LlavaNextForConditionalGeneration` with a CLIP tower + `LlavaNextProcessor`.
    A 32 px base view of 8 px patches is 16 tokens (the CLS token is dropped), plus the any-resolution tiles."""
    tokenizer = train_mistral_tokenizer()
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=stock_template("llava_next"),
    )
    config = LlavaNextConfig(
        text_config=dict(
            model_type="mistral",
            vocab_size=len(tokenizer),
            **_language_model_sizes(hidden_size),
            sliding_window=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=16,
        tie_word_embeddings=False,
    )
    return _instantiate(LlavaNextForConditionalGeneration, config, processor, seed)


# -- Qwen3.5 / 3.6 / 3.8 ---------------------------------------------------------------------------------------------

# Qwen3.5's special tokens, in the order of their ids (from 248,044 in the real vocabulary): control tokens are
# special; the tool, reasoning and FIM tags are plain added tokens, as in the released tokenizer.json.
QWEN3_5_CONTROL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]
QWEN3_5_ADDED_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]
# Thinking-template literals, so that tiny test conversations stay short (and `\n\n` is one token, as in the real
# vocabulary: the empty reasoning block then tokenizes as it does for the real models).
_QWEN3_5_CORPUS = [
    "<think>\n\n</think>\n\n <function=zoom>\n<parameter=region>\nleft\n</parameter>\n</function>",
    "Let me think. The user asks about the picture. I should look at the left side first. Maybe zoom in.",
    "# Tools\n\nYou have access to the following functions:\n\n<tools> If you choose to call a function ONLY reply",
]


def qwen3_5_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Qwen3_5Tokenizer:
    """`Qwen3_5Tokenizer` (the class Qwen3.5 checkpoints load: Qwen3.5's pre-tokenizer regex with `\\p{M}`, NFC) over
    a byte-level `vocab` and `merges`, with Qwen3.5's special and added tokens appended after the vocabulary in their
    real order (a token already in `vocab` keeps its id)."""
    # `<|endoftext|>` first (the class adds its end/pad token on creation), then the rest in order; the end-of-turn
    # token is the eos, as in the released tokenizer_config.json.
    tokenizer = Qwen3_5Tokenizer(vocab=vocab, merges=merges, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN3_5_CONTROL_TOKENS[1:]})
    tokenizer.add_tokens(QWEN3_5_ADDED_TOKENS)
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def train_qwen3_5_tokenizer() -> Qwen3_5Tokenizer:
    """A tiny `Qwen3_5Tokenizer`: a small byte-level BPE trained in-process, with Qwen3.5's special tokens."""
    texts = (_CORPUS + _FAMILY_CORPUS + _QWEN3_5_CORPUS) * 20
    trained = train_byte_level_bpe(texts, SPECIAL_TOKENS, vocab_size=900)
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    return qwen3_5_tokenizer(model["vocab"], merges)


def qwen3_5_text_config(tokenizer, hidden_size: int = _HIDDEN, vocab_size: int | None = None, moe: bool = False) -> dict:
    """A 2-layer Qwen3.5 text stack: one GatedDeltaNet (linear attention) layer, then one full-attention layer, as
    the real models interleave them (3 linear : 1 full). Rope on half of each head, with the 3 M-RoPE sections."""
    ids = tokenizer.convert_tokens_to_ids
    config = dict(
        vocab_size=vocab_size or len(tokenizer),
        **_language_model_sizes(hidden_size),
        layer_types=["linear_attention", "full_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=_HEAD_DIM,
        linear_value_head_dim=_HEAD_DIM,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        pad_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        bos_token_id=None,
    )
    if moe:
        config.update(
            moe_intermediate_size=hidden_size, shared_expert_intermediate_size=hidden_size, num_experts=4,
            num_experts_per_tok=2,
        )
    return config


def qwen3_5_processor(tokenizer, template: str = "qwen3_5_think") -> Qwen3VLProcessor:
    """The real `Qwen3VLProcessor` around `tokenizer`, with the stock `template`; a 64x64 image is 4 image tokens."""
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        chat_template=stock_template(template),
    )


def build_tiny_qwen3_5(
    seed: int = 0, hidden_size: int = _HIDDEN, template: str = "qwen3_5_think", moe: bool = False,
    tokenizer=None, vocab_size: int | None = None,
):
    """Qwen3.5: `Qwen3_5ForConditionalGeneration` (or, with `moe`, `Qwen3_5MoeForConditionalGeneration`: 4 experts,
    2 per token, plus the shared expert) + `Qwen3VLProcessor` with the stock `template` (`qwen3_5_think`,
    `qwen3_5_nothink`, `qwen3_6` or `qwen3_8`: one architecture, several template generations). The vision tower is
    Qwen3-VL's without DeepStack. `tokenizer` replaces the tiny one (e.g. the real vocabulary)."""
    processor = qwen3_5_processor(tokenizer or train_qwen3_5_tokenizer(), template)
    tokenizer = processor.tokenizer
    vision = tiny_qwen3_vision_config(hidden_size)
    vision.pop("deepstack_visual_indexes")
    config_class, model_class = (
        (Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration) if moe else (Qwen3_5Config, Qwen3_5ForConditionalGeneration)
    )
    config = config_class(
        text_config=qwen3_5_text_config(tokenizer, hidden_size, vocab_size, moe=moe),
        vision_config=vision,
        **qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return _instantiate(model_class, config, processor, seed)


def _instantiate(model_class, config, processor, seed: int):
    torch.manual_seed(seed)
    with whole_model_build():  # built whole even under a ZeRO-3 config; DeepSpeed partitions it when training starts
        model = model_class(config)
    text_config = config.get_text_config()
    model.generation_config.eos_token_id = text_config.eos_token_id
    model.generation_config.pad_token_id = text_config.pad_token_id
    return model, processor


FAMILY_BUILDERS: dict[str, Callable] = {
    "qwen3_vl": build_tiny_qwen3_vl,
    "qwen3_vl_moe": build_tiny_qwen3_vl_moe,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "gemma3": build_tiny_gemma3,
    # One builder per Gemma 4 template revision: the same model, the processor carrying that revision's template.
    **{
        revision: partial(build_tiny_gemma4, template=revision)
        for revision in ("gemma4_v5", "gemma4_v4", "gemma4", "gemma4_v3", "gemma4_v2")
    },
    "idefics3": build_tiny_idefics3,
    "smolvlm": build_tiny_smolvlm,
    "llava_next": build_tiny_llava_next,
    # One builder per Qwen3.5-generation template; the dense architecture unless `moe=True`.
    **{name: partial(build_tiny_qwen3_5, template=name) for name in ("qwen3_5_think", "qwen3_5_nothink", "qwen3_6", "qwen3_8")},
    "qwen3_5_moe": partial(build_tiny_qwen3_5, template="qwen3_5_think", moe=True),
}


def build_tiny(family: str, seed: int = 0, **kwargs):
    """`(model, processor)` of a tiny random model of `family` (a key of `FAMILY_BUILDERS`)."""
    if family not in FAMILY_BUILDERS:
        raise ValueError(f"No tiny builder for family {family!r}; known: {', '.join(FAMILY_BUILDERS)}.")
    return FAMILY_BUILDERS[family](seed=seed, **kwargs)
