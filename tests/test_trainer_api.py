"""VLSFTTrainer is a drop-in SFTTrainer: same constructor (model as instance or path, TRL/transformers configs,
PEFT config), easy to subclass, and it trains a few steps with finite losses."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainingArguments
from trl import SFTConfig, SFTTrainer

from tests.conftest import IMAGE, assistant, image, user
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collator import training_collator
from vlsft.testing.tiny_qwen3_vl import save_tiny_qwen3_vl


def dataset():
    return Dataset.from_list(
        [{"messages": [user(IMAGE, f"What is shown in picture {i}?"), assistant(f"A shape number {i}.")], "images": [image()]} for i in range(4)]
    )


def quick(tmp_path, **extra):
    return dict(output_dir=str(tmp_path), report_to="none", max_steps=3, per_device_train_batch_size=2,
                gradient_checkpointing=False, save_strategy="no", logging_steps=1, use_cpu=True, **extra)


def test_public_api():
    assert issubclass(VLSFTConfig, SFTConfig)
    assert issubclass(VLSFTTrainer, SFTTrainer)
    assert VLSFTConfig(output_dir="x").assistant_only_loss is True


def test_model_given_as_a_path_trains_three_finite_steps(tmp_path):
    path = save_tiny_qwen3_vl(tmp_path / "tiny")
    trainer = VLSFTTrainer(str(path), args=VLSFTConfig(**quick(tmp_path / "out")), train_dataset=dataset())
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("config_class", [SFTConfig, TrainingArguments])
def test_trl_and_transformers_configs_are_accepted(tiny, tmp_path, config_class):
    model, processor = tiny
    # TRL's SFTConfig keeps its own value of every field; TrainingArguments has no assistant_only_loss: vlsft's default.
    extra = {"bf16": False, "assistant_only_loss": True} if config_class is SFTConfig else {}
    args = config_class(**quick(tmp_path, learning_rate=3e-4), **extra)
    trainer = VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=dataset(), processing_class=processor)
    assert isinstance(trainer.args, VLSFTConfig)
    assert trainer.args.learning_rate == 3e-4 and trainer.args.assistant_only_loss


def test_lora_peft_config_trains_only_the_adapter(tiny, tmp_path):
    model, processor = tiny
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = VLSFTTrainer(
        copy.deepcopy(model), args=VLSFTConfig(**quick(tmp_path)), train_dataset=dataset(), processing_class=processor,
        peft_config=peft_config,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_subclass_changes_the_loss(tiny, tmp_path):
    """The example of docs/api.md: a subclass that reweights the loss through `supervised_sums`."""

    class HalfLossTrainer(VLSFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            sums = self.supervised_sums(model, inputs)
            return 0.5 * sums.nll_sum / sums.num_tokens.clamp(min=1)

    model, processor = tiny
    args = VLSFTConfig(**quick(tmp_path))
    plain = VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=dataset(), processing_class=processor)
    half = HalfLossTrainer(copy.deepcopy(model), args=args, train_dataset=dataset(), processing_class=processor)
    batch = plain.data_collator([dataset()[i] for i in range(2)])
    assert half.compute_loss(half.model, dict(batch)).item() == pytest.approx(0.5 * plain.compute_loss(plain.model, dict(batch)).item(), rel=1e-6)


def test_logit_metrics_are_refused_with_the_reason(tiny, tmp_path):
    model, processor = tiny
    with pytest.raises(ValueError, match="never builds the full logits"):
        VLSFTTrainer(model, args=VLSFTConfig(**quick(tmp_path)), train_dataset=dataset(), processing_class=processor,
                     compute_metrics=lambda prediction: {})


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("loss_type", "sigmoid", "vlsft computes 'nll'"),
        ("use_liger_kernel", True, "run on GPUs only"),
        ("completion_only_loss", True, "assistant_only_loss=True"),
        ("label_smoothing_factor", 0.1, "set it to 0"),
        ("dataset_text_field", "prompt", "map your rows to `messages`"),
        ("truncation_mode", "keep_end", "leave `truncation_mode` at 'keep_start'"),
        ("shuffle_dataset", True, "dataset.shuffle(seed=...)"),
        ("dataset_kwargs", {"skip_prepare_dataset": False}, "leave `dataset_kwargs` unset"),
        ("dataset_kwargs", {"add_special_tokens": False}, "leave `dataset_kwargs` unset"),
    ],
)
@pytest.mark.parametrize("config_class", [VLSFTConfig, SFTConfig])
def test_sft_fields_vlsft_cannot_honour_are_refused_by_name(tiny, tmp_path, config_class, field, value, named):
    """TRL applies these in its dataset preparation or its loss, which vlsft replaces: refused, never ignored, whether
    set on a VLSFTConfig or on the SFTConfig handed to the trainer."""
    model, processor = tiny
    extra = {"bf16": False} if config_class is SFTConfig else {}
    with pytest.raises(ValueError, match=f"`{field}=") as error:
        args = config_class(**quick(tmp_path), **extra, **{field: value})
        VLSFTTrainer(model, args=args, train_dataset=dataset(), processing_class=processor)
    assert named in str(error.value)


def test_formatting_func_is_refused_with_the_alternative(tiny, tmp_path):
    model, processor = tiny
    with pytest.raises(ValueError, match="`formatting_func` is not supported.*dataset.map"):
        VLSFTTrainer(model, args=VLSFTConfig(**quick(tmp_path)), train_dataset=dataset(), processing_class=processor,
                     formatting_func=lambda row: row["messages"][0]["content"][1]["text"])


def test_honoured_sft_fields_are_accepted(tiny, tmp_path):
    """The defaults, and explicit values that ask for what vlsft does anyway."""
    model, processor = tiny
    args = VLSFTConfig(**quick(tmp_path), loss_type="nll", completion_only_loss=False, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=dataset(), processing_class=processor)
    assert trainer.args.loss_type == "nll"


def test_a_cpu_run_on_a_gpu_machine_defaults_to_fp32(tmp_path, monkeypatch):
    """Found on an H100 machine: `use_cpu=True` there defaulted to bf16, so exactness tests (and users' CPU runs)
    trained under CPU bf16 autocast, about 3 significant digits (1x4 vs 4x1 steps differed by 3e-3 of the update).
    The machine's bf16 GPU is stood in for by torch's own answers to "is there one?"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True).bf16 is False
    assert VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=True).bf16 is True  # asked for


@pytest.mark.parametrize("padding_free", [False, True])
def test_the_supervised_share_of_each_logged_step_is_logged(tiny, tmp_path, padding_free):
    """`supervised_share`: the supervised targets over the real (non-padding) tokens since the last log, so a run's
    curves show how much of each batch trains; padded and padding-free batches of the same rows log the same share."""
    model, processor = tiny
    args = VLSFTConfig(**quick(tmp_path, padding_free=padding_free) | {
        "max_steps": 2, "per_device_train_batch_size": 4})
    trainer = VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=dataset(), processing_class=processor)
    trainer.train()
    padded = training_collator(processor, VLSFTConfig(**quick(tmp_path)))([dataset()[i] for i in range(4)])
    expected = int((padded["labels"][:, 1:] != -100).sum()) / int(padded["attention_mask"].sum())
    shares = [entry["supervised_share"] for entry in trainer.state.log_history if "supervised_share" in entry]
    assert len(shares) == 2
    assert shares == pytest.approx([expected, expected], rel=1e-9)
    assert 0 < expected < 0.5  # the prompt and the image tokens outnumber the answers
