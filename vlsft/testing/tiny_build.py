"""What every tiny model of `vlsft.testing.tiny_families` shares: the sizes of its 2-layer language model, and how it
is instantiated (seeded, built whole under ZeRO-3, generation config from its text config)."""

from __future__ import annotations

import torch

from vlsft.distributed import whole_model_build

HIDDEN = 64
HEAD_DIM = 16
# The sizes of every tiny ViT-style vision encoder (SigLIP, CLIP, Gemma 4's): 2 layers of width 32, 2 heads.
VISION_ENCODER_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def language_model_sizes(hidden_size: int) -> dict:
    """The text config sizes of a 2-layer language model of width `hidden_size` (heads of HEAD_DIM)."""
    return dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=hidden_size // HEAD_DIM,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=4096,
    )


def instantiate(model_class, config, processor, seed: int):
    """`(model_class(config), processor)`, the weights drawn from `seed`, generating until the text config's eos."""
    torch.manual_seed(seed)
    with whole_model_build():  # built whole even under a ZeRO-3 config; DeepSpeed partitions it when training starts
        model = model_class(config)
    text_config = config.get_text_config()
    model.generation_config.eos_token_id = text_config.eos_token_id
    model.generation_config.pad_token_id = text_config.pad_token_id
    return model, processor


def llama_text_config(tokenizer, hidden_size: int) -> dict:
    """The text config of a tiny 2-layer Llama language model over `tokenizer` (Vicuna in LLaVA-1.5 and ViP-LLaVA,
    Llama 3 in Idefics3 and Perception LM...)."""
    return dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        **language_model_sizes(hidden_size),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def mistral_text_config(tokenizer, hidden_size: int) -> dict:
    """The text config of a tiny Mistral language model (full attention) over `tokenizer`, as Mistral 3 and LLaVA-NeXT
    both use it."""
    return dict(
        model_type="mistral",
        vocab_size=len(tokenizer),
        **language_model_sizes(hidden_size),
        sliding_window=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
