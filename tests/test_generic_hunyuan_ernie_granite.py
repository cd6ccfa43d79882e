"""Granite 4 Vision and HunYuan-VL on the generic exact path (`vlsft.testing.tiny_generic_hunyuan_ernie_granite`),
beyond the tests every generic family gets (`tests/test_generic_families.py`):
- their projectors are found under transformers 5's names: Granite 4 Vision's window Q-Formers
  (`layerwise_projectors`, `spatial_projectors`) and HunYuan-VL's `patch_merger` inside its vision tower;
- HunYuan-VL's own `get_rope_index` numbers images across the batch, so vlsft gives each row the positions it has
  alone (`vlsft.row_rope`); a rope that also takes videos (GLM-4.1V's) is left to the model;
- a video is refused by row (neither processor takes one).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import IMAGE, assistant, image, user
from tests.test_generic_families import tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import MERGER, component_of
from vlsft.row_rope import positions_for_each_row


@pytest.mark.parametrize(
    ("family", "projectors"),
    [("granite4_vision", ("layerwise_projectors", "spatial_projectors")), ("hunyuan_vl", ("patch_merger",))],
)
def test_the_projectors_are_found_by_their_transformers_names(family, projectors):
    model, _ = tiny(family)
    for projector in projectors:
        names = [name for name, _ in model.named_parameters() if f".{projector}." in name]
        assert names, projector
        assert {component_of(name) for name in names} == {MERGER}, projector


def hunyuan_batch():
    """A padded batch of 2 rows, the first with 2 images, the second with 1 of another size, as vlsft collates it."""
    _, processor = tiny("hunyuan_vl")
    collate = VisionChatCollator(processor, processor.chat_template)
    rows = [
        {"messages": [user(IMAGE, IMAGE, "Which differs?"), assistant("The second.")],
         "images": [image(), image((0, 0, 255), (48, 80))]},
        {"messages": [user("Look.", IMAGE), assistant("A dot.")], "images": [image((0, 255, 0), (64, 32))]},
    ]
    return collate(rows), collate(rows[:1]), collate(rows[1:])


def test_hunyuan_vl_rows_get_the_rope_positions_they_have_alone():
    model, _ = tiny("hunyuan_vl")
    batch, first, second = hunyuan_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    positions = positions_for_each_row(model, inputs)
    for row, alone in enumerate((first, second)):
        own, _ = model.model.get_rope_index(
            alone["input_ids"], alone["mm_token_type_ids"], alone["image_grid_thw"], alone["attention_mask"]
        )
        valid = batch["attention_mask"][row].bool()
        assert torch.equal(positions[:, row, valid], own[:, 0]), row
    # Why: the model's own positions for the batch number the second row's image 2 (the first row has 2 images).
    batched, _ = model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"], batch["attention_mask"]
    )
    assert not torch.equal(batched, positions)
    # A batch of one row, or positions already given, are left to the model.
    assert positions_for_each_row(model, {k: v for k, v in first.items() if k != "labels"}) is None
    assert positions_for_each_row(model, {**inputs, "position_ids": positions}) is None


def test_a_rope_that_also_takes_videos_is_left_to_the_model():
    model, processor = tiny("glm4v")
    collate = VisionChatCollator(processor, processor.chat_template)
    rows = [{"messages": [user(IMAGE, "Colour?"), assistant("Red.")], "images": [image()]}] * 2
    batch = collate(rows)
    assert positions_for_each_row(model, {k: v for k, v in batch.items() if k != "labels"}) is None


@pytest.mark.parametrize("family", ["granite4_vision", "hunyuan_vl"])
def test_a_video_is_refused_by_row(family):
    _, processor = tiny(family)
    collate = VisionChatCollator(processor, processor.chat_template)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]}]
    with pytest.raises(RowError, match=r"batch row 0: message 0 has a 'video' item"):
        collate([{"messages": messages, "images": []}])
