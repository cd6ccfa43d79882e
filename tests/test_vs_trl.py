"""The gaps in TRL 1.16's own VLM assistant-only path that vlsft exists to close, pinned as tests, so every claim
in the README's comparison table is backed here (TRL is pinned to 1.16.*; vlsft's side is tested elsewhere)."""

from __future__ import annotations

import copy

import pytest
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from tests.test_loss import rows_of_different_lengths
from vlsft.collator import VisionChatCollator
from vlsft.templates import training_template


def test_trl_collator_raises_on_an_image_inside_a_tool_response(processor, shapes):
    row, expected = shapes["tool_response_with_image"]
    trl_collator = DataCollatorForVisionLanguageModeling(
        processor, assistant_only_loss=True, chat_template=training_template("qwen3_vl")
    )
    with pytest.raises(ValueError):
        trl_collator([copy.deepcopy(row)])
    batch = VisionChatCollator(processor, training_template("qwen3_vl"))([row])  # vlsft: exact (test_masks.py)
    assert batch["labels"].ne(-100).sum() > 0


def trl_step(model, processor, tmp_path, batch_size, accumulation):
    args = SFTConfig(
        output_dir=str(tmp_path), report_to="none", assistant_only_loss=True, bf16=False, max_steps=1,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, learning_rate=1.0, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=0.0, gradient_checkpointing=False, save_strategy="no", seed=0,
    )
    trainer = SFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows_of_different_lengths()),
                         processing_class=processor)
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_trl_loss_is_not_token_weighted_across_gradient_accumulation(tiny, tmp_path):
    model, processor = tiny
    assert type(model).accepts_loss_kwargs is False  # why: Trainer never passes num_items_in_batch to Qwen3-VL
    start = {n: p.detach() for n, p in model.named_parameters()}
    one_by_four = trl_step(model, processor, tmp_path / "a", 4, 1)
    four_by_one = trl_step(model, processor, tmp_path / "b", 1, 4)
    update = max((one_by_four[n] - start[n]).abs().max() for n in start)
    difference = max((one_by_four[n] - four_by_one[n]).abs().max() for n in start)
    assert difference > 0.05 * update  # vlsft: <= 1e-4 x update (test_loss.py)
