"""MiniCPM-V 4.7, FastVLM, LightOnOCR and PaddleOCR-VL on the generic exact path
(`vlsft.testing.tiny_generic_minicpm47_ocr`): what each family needs of the generic code beyond the parametrized
tests of `tests/test_generic_families.py`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import IMAGE, assistant, image, user
from tests.test_generic_families import make_trainer, tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import MERGER, VISION_TOWER, check_model_parts, component_of
from vlsft.testing.tiny_generic_minicpm47_ocr import build_tiny_paddleocr_vl


@pytest.mark.parametrize("family", ["minicpmv4_7"])
def test_videos_are_refused_by_row(family):
    """These processors take videos (MiniCPM-V 4.7: frames with their slices); the generic path does not build
    them: a video item fails by name, and so does a `videos` column, never training on a placeholder with no
    features behind it."""
    _, processor = tiny(family)
    collate = VisionChatCollator(processor, processor.chat_template)
    name = type(processor).__name__
    row = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                        assistant("A dot.")], "images": []}
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {name} \(generic path\)"):
        collate([row])
    with pytest.raises(RowError, match="not trained on videos"):
        collate([{"messages": [user("What?"), assistant("A dot.")], "images": [], "videos": ["clip.mp4"]}])


def test_minicpmv4_7_canvas_positions_come_from_the_image_map_the_batch_carries():
    """MiniCPM-V 4.7 lays out its 3D positions ("canvas M-RoPE") from `mm_token_type_ids`: the batch carries the map
    the processor returns, so the model pins each image's tokens on its canvas (positions that are not the 1D
    count), as at inference."""
    model, processor = tiny("minicpmv4_7")
    rows = [{"messages": [user(IMAGE, "Colour?"), assistant("Red.")], "images": [image(size=(56, 112))]}]
    batch = VisionChatCollator(processor, processor.chat_template)(rows)
    types = batch["mm_token_type_ids"]
    assert types.shape == batch["input_ids"].shape and int((types == 1).sum()) > 0
    positions, _ = model.model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=types, attention_mask=batch["attention_mask"],
        target_sizes=batch["target_sizes"], downsample_mode="4x",
    )
    count = torch.arange(types.shape[1]).expand_as(positions[0])
    assert not torch.equal(positions[1], count)


def test_lighton_ocr_vision_encoder_is_the_vision_tower():
    """LightOnOCR names its Pixtral tower `vision_encoder` (its projector `vision_projection`): found by name, so it
    is frozen, given its learning rate and its LoRA targets as the other families' towers."""
    model, _ = tiny("lighton_ocr")
    check_model_parts(model)
    assert component_of("model.vision_encoder.transformer.layers.0.attention.q_proj.weight") == VISION_TOWER
    assert component_of("model.vision_projection.linear_1.weight") == MERGER


def test_paddleocr_vl_answers_after_its_spaced_generation_prompt_are_refused_by_row():
    """PaddleOCR-VL's template ends its generation prompt with a space (`Assistant: `): a byte-level tokenizer merges
    that space into the answer's first token on the whole text (`ĠRed`), while at inference the prompt ends in the
    space token and the answer starts after it. The processor's tokens and the rule's boundary disagree inside the
    answer, so no exact mask exists: the row is refused by name with the reason, never trained on a wrong mask."""
    _, processor = build_tiny_paddleocr_vl()
    collate = VisionChatCollator(processor, processor.chat_template)
    row = {"messages": [user(IMAGE, "Colour?"), assistant("Red.")], "images": [image()]}
    with pytest.raises(RowError, match=r"batch row 0: .*differ from the row's inside an assistant turn .*'ĠRed'"):
        collate([row])


def test_fast_vlm_batch_norms_keep_the_checkpoints_running_statistics_in_training(tmp_path):
    """FastVLM's FastViT tower has BatchNorm layers: the trainer runs them on their running statistics (as at
    inference), so a training step leaves the checkpoint's statistics as they were and normalizes no row by the
    others of its batch (`test_one_batch_of_2_equals_2_accumulated_micro_batches_of_1[fast_vlm]`)."""
    trainer = make_trainer("fast_vlm", tmp_path)
    norms = {name: module for name, module in trainer.model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    assert norms
    before = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in norms.items()}
    trainer.train()
    for name, module in norms.items():
        assert torch.equal(module.running_mean, before[name][0]) and torch.equal(module.running_var, before[name][1])
