"""What the benchmark trains on: synthetic multi-image conversations, and the same random model for both sides.

Both trainers get their own copy of one model (built twice from the same seed: each trainer patches its model's
forward, so they cannot share an instance) and the same processor, so every difference measured is the trainers'.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl_processor, build_tiny_qwen3_vl, qwen_vision_token_ids

# Words the tiny tokenizer was trained on, so a word is about one token and row lengths are predictable.
_WORDS = (
    "the a red green blue yellow purple orange black white circle square triangle cross star shape colour left right "
    "top bottom centre middle above below image picture shows there are is of in on at to and or with which what where"
).split()

QWEN3_VL_VOCAB = 151_936


def _sentence(rng: np.random.Generator, words: int) -> str:
    text = " ".join(rng.choice(_WORDS, size=words))
    return text[0].upper() + text[1:] + "."


def make_rows(
    num_rows: int = 2,
    images_per_row: int = 2,
    turns: int = 2,
    prompt_words: int = 220,
    answer_words: int = 14,
    image_size: int = 128,
    seed: int = 0,
) -> list[dict]:
    """Conversations in TRL's conversational vision format: a system prompt, then `turns` user/assistant exchanges,
    all images in the first user turn (the shape TRL's collator supports). Only the assistant answers are supervised,
    so the supervised share is small, as in real visual instruction data."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_rows):
        images = [
            _noise_image(rng, image_size + int(rng.integers(0, 17)), image_size) for _ in range(images_per_row)
        ]
        messages = [{"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]}]
        for turn in range(turns):
            content = [{"type": "image"}] * images_per_row if turn == 0 else []
            content = content + [{"type": "text", "text": _sentence(rng, prompt_words)}]
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": _sentence(rng, answer_words)}]})
        rows.append({"messages": messages, "images": images})
    return rows


def _noise_image(rng: np.random.Generator, width: int, height: int):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def qwen3_vl_2b_config(processor, vocab_size: int = QWEN3_VL_VOCAB) -> Qwen3VLConfig:
    """The shapes of Qwen3-VL-2B-Instruct (28-layer 2048-wide text model, 24-block vision tower, tied embeddings),
    with the token ids of the benchmark's own tokenizer. Random weights: nothing is downloaded."""
    ids = processor.tokenizer.convert_tokens_to_ids
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=262_144,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
        tie_word_embeddings=True,
        pad_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        bos_token_id=None,
    )
    vision_config = dict(
        depth=24,
        hidden_size=1024,
        intermediate_size=4096,
        num_heads=16,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=2048,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[5, 11, 17],
    )
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        **qwen_vision_token_ids(processor.tokenizer),
        tie_word_embeddings=True,
    )


def build_models(
    model_shape: str,
    vocab_size: int,
    hidden_size: int,
    image_size: int,
    dtype: torch.dtype,
    device: str = "cpu",
    seed: int = 0,
):
    """(processor, model for vlsft, model for TRL): two instances with identical weights, dtype and device."""
    processor = build_tiny_qwen3_vl_processor(max_pixels=image_size * image_size)
    models = []
    for _ in range(2):
        with torch.device(device):  # initialise in place: a 2B model is slow to initialise on the CPU
            models.append(_build_model(model_shape, processor, vocab_size, hidden_size, seed).to(dtype))
    first, second = (dict(m.state_dict()) for m in models)
    if any(not torch.equal(first[name], second[name]) for name in first):
        raise RuntimeError("the two model copies differ; the benchmark would not compare like with like")
    return processor, models[0], models[1]


def _build_model(model_shape, processor, vocab_size, hidden_size, seed):
    if model_shape == "tiny":
        model, _ = build_tiny_qwen3_vl(seed=seed, hidden_size=hidden_size, vocab_size=vocab_size, processor=processor)
        return model
    if model_shape == "qwen3-vl-2b":
        torch.manual_seed(seed)
        return Qwen3VLForConditionalGeneration(qwen3_vl_2b_config(processor, vocab_size))
    raise ValueError(f"unknown model shape {model_shape!r}: use 'tiny' or 'qwen3-vl-2b'")
