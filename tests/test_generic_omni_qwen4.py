"""Qwen2.5-Omni's thinker, Qwen4-Exp and Cosmos3's reasoner beyond the parametrized generic-path tests
(tests/test_generic_families.py):
- Qwen2.5-Omni's audio and videos are refused by row with the reason while its images train; its whole model (no
  forward, only `generate`) is refused before training, naming its thinker;
- Qwen4-Exp and Cosmos3 ship Qwen-VL processors and templates vlsft has records for: their videos train on the
  record's video path; packing, proven only for the records' own models, is refused naming the model type;
- GLM-GA's image processor sizes images by its `patch_expand_factor`: the expansion is the processor's own.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

from tests.test_families import rows_of_different_lengths
from tests.test_generic_families import tiny
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import check_model_parts
from vlsft.templates import resolve_training_template
from vlsft.testing.tiny_generic_omni_qwen4 import build_tiny_glmga
from vlsft.testing.tiny_video import write_moving_shape


def answer(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@pytest.mark.parametrize("family", ["qwen2_5_omni_thinker", "glmga"])
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


@pytest.mark.parametrize("family", ["qwen4_exp", "cosmos3_omni"])
def test_videos_train_on_the_records_video_path(family, tmp_path):
    """The trainer's collator (the record's training template) expands a video as Qwen3-VL's processor does, and the
    model's own forward takes it: the video's pixels reach the logits of the supervised answer."""
    model, processor = tiny(family)
    collate = VisionChatCollator(processor, resolve_training_template(processor.chat_template))
    video = write_moving_shape(tmp_path / "right.mp4", num_frames=8, fps=4, size=(64, 48))
    question = [{"type": "video"}, {"type": "text", "text": "Which way does the square move?"}]
    batch = collate([{"messages": [{"role": "user", "content": question}, answer("Right.")], "videos": [str(video)]}])
    assert processor.video_token_id in batch["input_ids"][0].tolist() and (batch["labels"][0] != -100).any()
    with torch.no_grad():
        ours = model(**batch)
        blank = model(**{**batch, "pixel_values_videos": torch.zeros_like(batch["pixel_values_videos"])})
    assert torch.isfinite(ours.loss) and not torch.allclose(ours.logits, blank.logits)


@pytest.mark.parametrize(
    "family, reason",
    [
        ("qwen4_exp", r"packing is not supported for model type 'qwen4_exp' \(template family 'qwen3_8'\)"),
        ("cosmos3_omni", r"packing is not supported for model type 'cosmos3_omni' \(template family 'qwen3_vl'\)"),
        ("qwen2_5_omni_thinker", r"its language model \('qwen2_5_omni_text'\) takes 3D rope positions"),
    ],
)
def test_packing_is_refused_naming_the_reason(family, reason, tmp_path):
    """Their packed rows are not proven kept apart (Qwen4-Exp's linear attention and n-gram embedding carry state
    along the sequence; Cosmos3's Qwen3-VL architecture packs under Qwen3-VL's record only): the trainer refuses
    before training."""
    model, processor = tiny(family)
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, padding_free=True)
    with pytest.raises(ValueError, match=reason):
        VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows_of_different_lengths()[:2]),
                     processing_class=processor)


def test_glmga_images_expand_as_its_processor_sizes_them():
    """GLM-GA's image processor resizes to multiples of `patch_size * merge_size * patch_expand_factor`: with a factor
    of 2 a 60x40 image is 4x4 patches (4 tokens once merged 2x2), not 2x4 (2 tokens); the collated ids and pixels are
    the processor's own (the stop token `<|user|>` appended after the final turn aside)."""
    _, processor = build_tiny_glmga(patch_expand_factor=2)
    collate = VisionChatCollator(processor, processor.chat_template)
    image = Image.new("RGB", (60, 40), (0, 128, 255))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}, answer("Blue.")]
    batch = collate([{"messages": messages, "images": [image]}])
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert batch["input_ids"][0].tolist().count(processor.image_token_id) == 4
    conversation = [{"role": "user", "content": [{"type": "image", "image": image}, messages[0]["content"][1]]},
                    messages[1]]
    reference = processor.apply_chat_template([conversation], tokenize=True, return_dict=True, return_tensors="pt")
    for key in ("pixel_values", "image_grid_thw"):
        assert torch.equal(batch[key], reference[key]), key
    length = reference["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][:, :length], reference["input_ids"])
