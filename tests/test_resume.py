"""Resuming: a run stopped right after a checkpoint and resumed with `resume_from_checkpoint` ends with exactly the
weights of the same run left uninterrupted, for a full fine-tune and for LoRA; the checkpoint holds everything the
resume needs (weights or adapter, optimizer, scheduler, RNG states, trainer state, processor)."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from tests.conftest import IMAGE, assistant, image, user
from vlsft import VLSFTConfig, VLSFTTrainer

MAX_STEPS = 6
CHECKPOINT_STEP = 3  # mid-epoch (4 steps per epoch), so the resume must also skip the batches already seen


def rows():
    answers = ["Red.", "A blue square on the left.", "Two.", "Green, and a little yellow.", "No.", "A circle.", "Yes.", "Three shapes."]
    return Dataset.from_list(
        [
            {"messages": [user(IMAGE, f"Question {n}?"), assistant(answer)], "images": [image((30 * n, 90, 200 - 20 * n), (64, 64 + 16 * (n % 3)))]}
            for n, answer in enumerate(answers)
        ]
    )


class StopAfterStep(TrainerCallback):
    """Stops training at a step, as a crash or a preempted job would right after the checkpoint was written."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def make_trainer(model, processor, output_dir, peft_config=None, callbacks=None):
    args = VLSFTConfig(
        output_dir=str(output_dir),
        report_to="none",
        max_steps=MAX_STEPS,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        weight_decay=0.01,
        save_strategy="steps",
        save_steps=CHECKPOINT_STEP,
        gradient_checkpointing=False,
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )
    return VLSFTTrainer(
        copy.deepcopy(model),
        args=args,
        train_dataset=rows(),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def weights(trainer):
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def run_interrupted_then_resumed(model, processor, output_dir, peft_config=None, prepare_checkpoint=None):
    stopped = make_trainer(model, processor, output_dir, peft_config, callbacks=[StopAfterStep(CHECKPOINT_STEP)])
    stopped.train()
    assert stopped.state.global_step == CHECKPOINT_STEP
    checkpoint = os.path.join(output_dir, f"checkpoint-{CHECKPOINT_STEP}")
    if prepare_checkpoint is not None:
        prepare_checkpoint(checkpoint)
    # A new process would build everything again: a fresh model (its initial weights), trainer and dataset.
    resumed = make_trainer(model, processor, output_dir, peft_config)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == MAX_STEPS
    return resumed, checkpoint


RESUME_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}
PROCESSOR_FILES = {"tokenizer.json", "processor_config.json"}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resumed_run_ends_with_the_uninterrupted_weights(tiny, tmp_path, method):
    model, processor = tiny
    peft_config = None
    if method == "lora":
        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

    uninterrupted = make_trainer(model, processor, tmp_path / "straight", peft_config)
    uninterrupted.train()
    expected = weights(uninterrupted)

    resumed, checkpoint = run_interrupted_then_resumed(model, processor, tmp_path / "resumed", peft_config)
    files = set(os.listdir(checkpoint))
    assert RESUME_FILES <= files, RESUME_FILES - files
    assert PROCESSOR_FILES <= files, PROCESSOR_FILES - files
    if method == "lora":
        assert {"adapter_model.safetensors", "adapter_config.json"} <= files
        assert "model.safetensors" not in files  # the adapter, not a copy of the frozen base model
    else:
        assert "model.safetensors" in files

    assert_same_weights(weights(resumed), expected)
    # The supervised-token count goes on from the checkpoint, as if never stopped.
    count = [e["num_supervised_tokens"] for e in resumed.state.log_history if "loss" in e]
    assert count == [e["num_supervised_tokens"] for e in uninterrupted.state.log_history if "loss" in e]
    # The run did train after the checkpoint: the final weights are not the checkpoint's.
    at_checkpoint = make_trainer(model, processor, tmp_path / "probe", peft_config)
    at_checkpoint._load_from_checkpoint(checkpoint)
    trained = [name for name, tensor in weights(at_checkpoint).items() if not torch.equal(tensor, expected[name])]
    assert trained and (method == "full" or all("lora_" in name for name in trained))


def test_a_checkpoint_without_its_optimizer_state_does_not_resume_exactly(tiny, tmp_path):
    """The equality above is not luck: lose the optimizer and scheduler state and the run ends elsewhere."""
    model, processor = tiny
    uninterrupted = make_trainer(model, processor, tmp_path / "straight")
    uninterrupted.train()

    def drop_optimizer_state(checkpoint):
        os.remove(os.path.join(checkpoint, "optimizer.pt"))
        os.remove(os.path.join(checkpoint, "scheduler.pt"))

    resumed, _ = run_interrupted_then_resumed(model, processor, tmp_path / "resumed", prepare_checkpoint=drop_optimizer_state)
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_weights(weights(resumed), weights(uninterrupted))
    shutil.rmtree(tmp_path)
