"""Qwen2.5-Omni's thinker beyond the parametrized generic-path tests (tests/test_generic_families.py):
- its audio and videos are refused by row with the reason while its images train;
- its whole model (no forward, only `generate`) is refused before training, naming its thinker.
"""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

from tests.test_generic_families import tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import check_model_parts


def answer(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@pytest.mark.parametrize("family", ["qwen2_5_omni_thinker"])
def test_videos_are_refused_by_row(family):
    """The processor takes videos; the generic path collates images only: a video fails by name."""
    _, processor = tiny(family)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}, answer("A dot.")]
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {type(processor).__name__}"):
        VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])


def test_qwen2_5_omni_thinker_audio_is_refused_by_row_with_the_reason():
    """Qwen2.5-Omni's processor expands an audio item into `<|AUDIO|>` placeholders that only its Whisper features
    fill: an audio item (or an audio column) fails by name, never trained on as an empty placeholder; the same
    conversation with its image alone collates, without an audio token."""
    _, processor = tiny("qwen2_5_omni_thinker")
    collate = VisionChatCollator(processor, processor.chat_template)
    image = Image.new("RGB", (56, 56), (255, 0, 0))
    question = [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What is said?"}]
    messages = [{"role": "user", "content": question}, answer("Hello.")]
    with pytest.raises(RowError, match=r"message 0 has a 'audio' item: vlsft trains Qwen2_5OmniProcessor \(generic "
                                       r"path\) on text and images only"):
        collate([{"messages": messages, "images": [image]}])
    without_audio = [{"role": "user", "content": [question[0], question[2]]}, answer("Hello.")]
    with pytest.raises(RowError, match=r"the row has a `audio` column: vlsft trains .* on text and images only"):
        collate([{"messages": without_audio, "images": [image], "audio": [[0.0] * 1600]}])
    batch = collate([{"messages": without_audio, "images": [image]}])
    assert processor.audio_token_id not in batch["input_ids"][0].tolist()
    assert "pixel_values" in batch and (batch["labels"][0] != -100).any()


def test_qwen2_5_omni_whole_model_is_refused_naming_its_thinker():
    """Qwen2.5-Omni's whole model (`Qwen2_5OmniForConditionalGeneration`, thinker + talker) has no forward, only
    `generate`: it is refused before training with the sub-model to train instead."""
    thinker, _ = tiny("qwen2_5_omni_thinker")
    config = Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    whole = Qwen2_5OmniForConditionalGeneration(config)
    with pytest.raises(ValueError, match=r"qwen2_5_omni: .* has no forward to train.*`thinker` "
                                         r"\(Qwen2_5OmniThinkerForConditionalGeneration\)"):
        check_model_parts(whole)
    check_model_parts(whole.thinker)
