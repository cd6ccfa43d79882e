"""Llama 3.2 Vision (Mllama) and Aria on the generic path: what they need beyond the parametrized tests of
`tests/test_generic_families.py`.
- Mllama's processor returns a `cross_attention_mask` laid over the tokens (which token sees which image's tiles): it
  follows the collated rows through padding (`pad_to_multiple_of`) and truncation (`max_length`), and the loss of a
  padded batch is the unpadded one's.
- Mllama's image processor cannot batch a row without images with rows with images: such a batch fails naming the
  row and what to do, never with a shape error inside the model.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import _shapes
from tests.test_families import rows_of_different_lengths
from tests.test_generic_families import TEMPLATE_KWARGS, tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.generic_family import mixed_batch_problem


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
