"""Tokenizers of the tiny models of `vlsft.testing`, trained in-process (no download) with each family's real
tokenizer class and special tokens: byte-level BPE for Llama 3, SmolLM and Qwen3.5; sentencepiece-style BPE with byte
fallback for Gemma and Mistral. Using the real tokenizer class matters: how a piece of text tokenizes at its start (a
prefix space or not, the BOS token added or not) is exactly what an exact mask depends on. Qwen3-VL's own is in
`vlsft.testing.tiny_qwen3_vl`.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GemmaTokenizer, LlamaTokenizer, PreTrainedTokenizerFast, Qwen3_5Tokenizer

from vlsft.testing.tiny_qwen3_vl import _CORPUS, SPECIAL_TOKENS, train_byte_level_bpe

# Chat-template literals of the other families and capitalised words, so that test conversations take few tokens.
FAMILY_CORPUS = [
    "User: Assistant: System: Tool: <start_of_turn>user <start_of_turn>model [INST] [/INST] <<SYS>> <</SYS>>",
    "Red. Blue. Green. Yes. No. A square. A circle. The third one. Hello, can you see images? Here. What shape?",
    "And this one? Colour? Shape? Square Red Be brief. You answer in one word. Say nothing. Just text, no picture.",
    "Fine by me. Yes, send one. A circle on the left. It is a red dot. Zoom on the left, please. Zooming in.",
]
_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


def _train_byte_level(special_tokens: list[str], vocab_size: int = 800) -> Tokenizer:
    return train_byte_level_bpe((_CORPUS + FAMILY_CORPUS) * 20, special_tokens, vocab_size)


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
    tokenizer.train_from_iterator((_CORPUS + FAMILY_CORPUS) * 20, trainer=trainer)
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
    texts = (_CORPUS + FAMILY_CORPUS + _QWEN3_5_CORPUS) * 20
    trained = train_byte_level_bpe(texts, SPECIAL_TOKENS, vocab_size=900)
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    return qwen3_5_tokenizer(model["vocab"], merges)

