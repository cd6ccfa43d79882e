"""Dots 3 Note, Cohere Compass, Cosmos 3 Edge, Chameleon and Emu3 on the generic exact path, beyond the parametrized
tests of tests/test_generic_families.py:
- the modalities their processors take that vlsft does not collate (Dots 3 Note's audio, videos) are refused by row
  with the reason, never trained on a placeholder with no features behind it;
- a record's stock template on another family's processor (Cosmos 3 Edge ships Qwen3-VL's) takes the generic path,
  not the record's, in the plain collator and in the trainer's (which trains with the record's marked template).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import _shapes
from tests.test_families import supervised_texts
from tests.test_generic_families import tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.templates import detect_family, resolve_training_template

_ANSWER = {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]}


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_dots3_note_audio_and_video_are_refused_by_row_with_the_reason(kind):
    """Dots 3 Note's processor expands `<|audio_comp_pad|>` and `<|video_pad|>` placeholders: vlsft collates neither
    audio features nor video frames on the generic path, so a row with such an item or column fails by name."""
    _, processor = tiny("dots3_note")
    collate = VisionChatCollator(processor, processor.chat_template)
    item = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": "What?"}]}, _ANSWER]
    with pytest.raises(RowError, match=rf"message 0 has a '{kind}' item: vlsft trains Dots3NoteProcessor \(generic "
                                       r"path\)"):
        collate([{"messages": item, "images": []}])
    text_only = [{"role": "user", "content": "What?"}, _ANSWER]
    column = f"{kind}s"
    refusal = {"audio": "the row has a `audios` column", "video": r"Dots3NoteProcessor \(generic path\) is not trained on videos"}
    with pytest.raises(RowError, match=f"batch row 0: {refusal[kind]}"):
        collate([{"messages": text_only, "images": [], column: ["clip"]}])
    batch = collate([{"messages": text_only, "images": []}])  # the same row without them trains, through its stop
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == [
        "A dot.<|endofassistant|>"
    ]


@pytest.mark.parametrize("family", ["cohere_compass", "cosmos3_edge"])
def test_videos_are_refused_by_row(family):
    """Cohere Compass's and Cosmos 3 Edge's processors expand videos into timestamped frames: the generic path
    collates images only, so a video item or a `videos` column fails by name."""
    _, processor = tiny(family)
    collate = VisionChatCollator(processor, processor.chat_template)
    name = type(processor).__name__
    item = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}, _ANSWER]
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {name} \(generic path\)"):
        collate([{"messages": item, "images": []}])
    with pytest.raises(RowError, match=rf"batch row 0: {name} \(generic path\) is not trained on videos"):
        collate([{"messages": [{"role": "user", "content": "What?"}, _ANSWER], "images": [], "videos": ["clip.mp4"]}])


def test_a_records_template_on_another_familys_processor_takes_the_generic_path():
    """Cosmos 3 Edge's template is Qwen3-VL's, a template vlsft has a record for; its processor is not Qwen3-VL's. The
    record's expansion, parts and dummy vision pass are Qwen3-VL's, so the processor's family decides: the generic
    path, with the rule on the stock template and the record's markers on its training template, both supervising
    the same text on every conversation (the newline after `<|im_end|>` aside, which Qwen3-VL's markers enclose)."""
    _, processor = tiny("cosmos3_edge")
    assert detect_family(processor.chat_template) == "qwen3_vl"
    rule = VisionChatCollator(processor, processor.chat_template)
    marked = VisionChatCollator(processor, resolve_training_template(processor.chat_template))
    assert rule.generic_family and rule.generic_masks and marked.generic_family and not marked.generic_masks
    assert rule.family.image_map_key == marked.family.image_map_key == "mm_token_type_ids"
    for name, (row, _) in _shapes().items():
        if name == "tool_response_with_image":
            continue
        ours, reference = marked([row]), rule([row])
        assert torch.equal(ours["input_ids"], reference["input_ids"]), name
        by_markers = supervised_texts(processor.tokenizer, ours["input_ids"][0], ours["labels"][0])
        by_rule = supervised_texts(processor.tokenizer, reference["input_ids"][0], reference["labels"][0])
        assert [text.rstrip("\n") for text in by_markers] == by_rule, name
