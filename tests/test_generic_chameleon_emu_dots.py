"""Dots 3 Note, Cohere Compass, Cosmos 3 Edge, Chameleon and Emu3 on the generic exact path, beyond the parametrized
tests of tests/test_generic_families.py:
- the modalities their processors take that vlsft does not collate (Dots 3 Note's audio, videos) are refused by row
  with the reason, never trained on a placeholder with no features behind it;
- Cosmos 3 Edge ships Qwen3-VL's template: vlsft trains it through that record (as Qwen2-VL through Qwen2.5-VL's),
  and there too the masks are the incremental-rendering rule, the inputs the processor's, and a
  step, a LoRA step and exact accumulation run, its parts found by transformers 5's names; its videos, which its
  processor expands otherwise than the record, are refused by row.
"""

from __future__ import annotations

import pytest
import torch

from trl.data_utils import prepare_multimodal_messages

from tests.conftest import _shapes
from tests.test_families import supervised_texts
from tests.test_generic_families import NOT_FOR_PROCESSOR, rule_texts, tiny
from tests.test_generic_families import test_lora_step_trains_only_the_adapters as lora_step
from tests.test_generic_families import test_one_batch_of_2_equals_2_accumulated_micro_batches_of_1 as exact_accumulation
from tests.test_generic_families import test_one_training_step_moves_every_part as training_step
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.collation.borrowed_records import borrowed_video_refusal
from vlsft.families import family_of_model
from vlsft.generic_masks import as_content_items
from vlsft.templates import resolve_training_template, training_template
from vlsft.testing.tiny_generic_chameleon_emu_dots import build_tiny_cosmos3_edge
from vlsft.testing.tiny_generic_families import GENERIC_BUILDERS
from vlsft.testing.tiny_generic_qwen2_glm import build_tiny_qwen2_vl
from vlsft.testing.tiny_video import write_moving_shape

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




def test_cohere_compass_videos_are_refused_by_row():
    """Cohere Compass's processor expands videos into timestamped frames: the generic path collates images only, so a
    video item or a `videos` column fails by name."""
    _, processor = tiny("cohere_compass")
    collate = VisionChatCollator(processor, processor.chat_template)
    item = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}, _ANSWER]
    with pytest.raises(RowError, match=r"message 0 has a 'video' item: vlsft trains CohereCompassProcessor \(generic"):
        collate([{"messages": item, "images": []}])
    with pytest.raises(RowError, match=r"batch row 0: CohereCompassProcessor \(generic path\) is not trained on vid"):
        collate([{"messages": [{"role": "user", "content": "What?"}, _ANSWER], "images": [], "videos": ["clip.mp4"]}])


# -- Cosmos 3 Edge: Qwen3-VL's template, so Qwen3-VL's record -------------------------------------------------------


@pytest.fixture
def cosmos3_edge(monkeypatch):
    """Cosmos 3 Edge among the tiny models the parametrized tests build (it has no generic-path entry of its own)."""
    monkeypatch.setitem(GENERIC_BUILDERS, "cosmos3_edge", build_tiny_cosmos3_edge)
    return tiny("cosmos3_edge")


def test_cosmos3_edge_is_trained_by_qwen3_vl_record_with_masks_that_are_the_rule(cosmos3_edge):
    model, processor = cosmos3_edge
    assert family_of_model(model) is None  # no record of its own: its parts are found by transformers 5's names
    template = resolve_training_template(processor.chat_template)
    assert template == training_template("qwen3_vl")
    collate = VisionChatCollator(processor, template)
    assert collate.family.name == "qwen3_vl" and not collate.generic_family
    checked = 0
    for name, (row, _) in _shapes().items():
        if name in NOT_FOR_PROCESSOR:
            continue
        conversation = prepare_multimodal_messages(row["messages"], images=row["images"])
        batch = collate([row])
        texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
        # Qwen3-VL's hand-written template also supervises the newline after `<|im_end|>`.
        expected = rule_texts(processor, as_content_items(conversation), row.get("tools"))
        assert [text.rstrip("\n") for text in texts] == expected, name
        reference = processor.apply_chat_template(
            [conversation], tools=row.get("tools"), tokenize=True, return_dict=True, return_tensors="pt",
            return_mm_token_type_ids=True,  # the processor writes them only when asked; the model needs them
        )
        for key, value in reference.items():
            assert torch.equal(batch[key], value), (name, key)
        checked += 1
    assert checked >= 6


def test_cosmos3_edge_trains_every_part_with_lora_and_exact_accumulation(cosmos3_edge, tmp_path):
    training_step("cosmos3_edge", tmp_path / "step")  # `visual`, its `projector` and `language_model` all move
    lora_step("cosmos3_edge", tmp_path / "lora")
    exact_accumulation("cosmos3_edge", tmp_path / "accumulation")


def test_cosmos3_edge_videos_are_refused_by_row_as_qwen3_vl_record_would_expand_them_otherwise(cosmos3_edge, tmp_path):
    """Qwen3-VL's record collates videos as Qwen3-VL's processor does, keeping the template's `<|vision_start|>` before
    the first frame; Cosmos 3 Edge's processor replaces the template's whole wrapper with timestamped frames. The
    record would train other tokens than the processor's: a video row fails by name (item or column), where
    Qwen2-VL's processor, which replaces placeholders as every processor does, keeps Qwen2.5-VL's video path."""
    from tests.test_video import _decoded, processor_reference, video_row

    _, processor = cosmos3_edge
    clip = write_moving_shape(tmp_path / "left.gif", num_frames=9, fps=3, size=(65, 47), direction="left")
    rows = [video_row(str(clip), answer="left")]
    reference = processor_reference(processor, "qwen3_vl", rows, [_decoded(clip)])
    record = VisionChatCollator(processor, training_template("qwen3_vl"))
    expected = r"vlsft trains Cosmos3EdgeProcessor through the qwen3_vl record .* expands videos its own way"
    with pytest.raises(RowError, match=rf"batch row 0: message 0 has a 'video' item: {expected}"):
        record(rows)
    text_only = [{"role": "user", "content": "What?"}, _ANSWER]
    with pytest.raises(RowError, match=rf"batch row 0: the row has a `videos` column: {expected}"):
        record([{"messages": text_only, "images": [], "videos": [str(clip)]}])
    # What the record would write: the template's `<|vision_start|>` kept before the first frame's.
    start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert int((reference["input_ids"] == start).sum()) == int(reference["video_grid_thw"][0, 0])
    assert borrowed_video_refusal("qwen2_5_vl", build_tiny_qwen2_vl()[1]) is None
