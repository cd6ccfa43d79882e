"""Dots 3 Note, Cohere Compass, Cosmos 3 Edge, Chameleon and Emu3 on the generic exact path, beyond the parametrized
tests of tests/test_generic_families.py: the modalities their processors take that vlsft does not collate (Dots 3
Note's audio and video) are refused by row with the reason, never trained on a placeholder with no features behind it.
"""

from __future__ import annotations

import pytest

from tests.test_families import supervised_texts
from tests.test_generic_families import tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator

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
