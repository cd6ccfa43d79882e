"""Builders for a tiny, randomly initialised Qwen3-VL with a tokenizer trained in-process.

Nothing is downloaded: the demo, the tests and the benchmarks all build their model here. The architecture, the
processor class and the chat template are the real Qwen3-VL ones; only the sizes are small.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from vlsft.templates import stock_template
from vlsft.testing.demo_data import tokenizer_corpus
from vlsft.testing.tiny_build import instantiate

# The special and added tokens of the real Qwen3-VL tokenizer that its chat template and processor use.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

# Text the tokenizer is trained on: chat-template literals, tool-call JSON and everyday English. Trained byte-level,
# so any text still encodes; this only keeps common words to few tokens.
_CORPUS = [
    "system user assistant tool You are a helpful assistant.",
    '# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function '
    "signatures within <tools></tools> XML tags:",
    '{"name": "zoom", "arguments": {"region": "left", "factor": 2}}',
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", "parameters": {}}}',
    "What is in the image? Describe this picture. How many shapes are there? What colour is the shape on the left?",
    "The image shows a red circle, a blue square and a green triangle on a white background.",
    "There are 1 2 3 4 5 6 7 8 9 0 shapes. Yes no left right top bottom centre middle above below.",
    "red green blue yellow purple orange black white circle square triangle cross star shape shapes colour color",
    "Let me zoom in. Here is the zoomed view. Thanks! The answer is. I think that. Sorry, I cannot tell.",
    "the a an of in on at to is are was it this that which what where when how why who and or but with for",
]


def train_byte_level_bpe(texts: list[str], special_tokens: list[str], vocab_size: int = 800) -> Tokenizer:
    """A byte-level BPE (the kind Qwen, Llama 3 and SmolLM use: any text encodes, no unknown token) trained on
    `texts` in about a second."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_tokenizer(vocab_size: int = 800, extra_text: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's special tokens, trained in a second on a small built-in corpus."""
    tokenizer = train_byte_level_bpe(_CORPUS * 20 + list(extra_text or []), SPECIAL_TOKENS, vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.add_tokens(ADDED_TOKENS)
    return fast


def resolve_extra_text(extra_text: list[str] | str | None) -> list[str] | None:
    """Extra tokenizer-training text: a list of strings, or the name of an embedded dataset whose text to learn
    (`"demo-shapes"`, see `vlsft.testing.demo_data.tokenizer_corpus`)."""
    if isinstance(extra_text, str):
        if extra_text != "demo-shapes":
            raise ValueError(f"`extra_text` names no embedded dataset: {extra_text!r}; use 'demo-shapes' or a list of strings.")
        return tokenizer_corpus(leave_out=SPECIAL_TOKENS + ADDED_TOKENS)
    return extra_text


def build_tiny_qwen3_vl_processor(
    tokenizer: PreTrainedTokenizerFast | None = None,
    chat_template: str | None = None,
    max_pixels: int = 64 * 64,
    extra_text: list[str] | str | None = None,
) -> Qwen3VLProcessor:
    """The real `Qwen3VLProcessor` around a tiny tokenizer, with the stock Qwen3-VL chat template by default.

    `max_pixels` bounds the resized image area, so a 64x64 picture becomes 4x4 patches of 16 px and 4 image tokens.
    `extra_text` (see `resolve_extra_text`) is added to the tokenizer's training text when no tokenizer is given.
    """
    tokenizer = tokenizer or train_tokenizer(extra_text=resolve_extra_text(extra_text))
    size = {"shortest_edge": 32 * 32, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size)
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template or stock_template("qwen3_vl"),
    )


def qwen_vision_token_ids(tokenizer) -> dict[str, int]:
    """The config fields of Qwen-VL's image, video and vision-boundary token ids, looked up in `tokenizer`."""
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def tiny_qwen3_vision_config(out_hidden_size: int, depth: int = 2) -> dict:
    """A tiny Qwen3-VL vision tower (16 px patches, 2x2 merge, one DeepStack level) feeding `out_hidden_size`."""
    return dict(
        depth=depth,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=out_hidden_size,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )


def tiny_qwen3_vl_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    vocab_size: int | None = None,
    num_hidden_layers: int = 2,
    vision_depth: int = 2,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
):
    """A Qwen3-VL config of the real architecture with a 2-layer language model and a 2-block vision tower (by
    default; `num_hidden_layers` and `vision_depth` change the depths). `tie_word_embeddings` ties the LM head to the
    input embeddings, as Qwen3-VL-2B and -4B do. `rope_theta` is the language model's RoPE base: with 16-dim heads,
    M-RoPE's height and width get two frequencies each, which at the default 10,000 turn 0.32 and 0.1 rad per grid
    cell; a base of 100 turns 0.56 and 0.32 (the demo uses it)."""
    ids = tokenizer.convert_tokens_to_ids
    head_dim = 16
    text_config = dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=hidden_size // head_dim,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": [4, 2, 2], "mrope_interleaved": True},
        pad_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        bos_token_id=None,
    )
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=tiny_qwen3_vision_config(hidden_size, depth=vision_depth),
        **qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=tie_word_embeddings,
    )


def build_tiny_qwen3_vl(
    seed: int = 0,
    hidden_size: int = 64,
    vocab_size: int | None = None,
    processor: Qwen3VLProcessor | None = None,
    num_hidden_layers: int = 2,
    vision_depth: int = 2,
    extra_text: list[str] | str | None = None,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
) -> tuple[Qwen3VLForConditionalGeneration, Qwen3VLProcessor]:
    """A random tiny Qwen3-VL and its processor. `vocab_size` can widen the vocabulary (e.g. to 151,936 for
    benchmarks, so that the LM head costs what it costs on the real model). `extra_text` is more tokenizer-training
    text (see `resolve_extra_text`); `rope_theta` see `tiny_qwen3_vl_config`."""
    processor = processor or build_tiny_qwen3_vl_processor(extra_text=extra_text)
    config = tiny_qwen3_vl_config(
        processor.tokenizer,
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        num_hidden_layers=num_hidden_layers,
        vision_depth=vision_depth,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=rope_theta,
    )
    return instantiate(Qwen3VLForConditionalGeneration, config, processor, seed)


def save_tiny_qwen3_vl(path: str | os.PathLike, seed: int = 0, **kwargs) -> Path:
    """Build the tiny model and save model + processor to `path` (a directory usable as a model name)."""
    path = Path(path)
    model, processor = build_tiny_qwen3_vl(seed=seed, **kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
