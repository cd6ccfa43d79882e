"""The loss is the token-weighted NLL over supervised tokens of the whole optimizer step, computed without the full
logits: equal to a full-logits reference, independent of how the step is split into micro-batches, and an exact
zero (with zero gradients) when nothing is supervised."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from tests.conftest import IMAGE, assistant, image, user
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.tokens import IGNORE_INDEX

ANSWERS = [
    "Red.",
    "It is a large red square in the middle of a white picture, with a thin blue border around the whole of it.",
    "Yes",
    "Two shapes: a green circle on the left and a yellow triangle on the right, both small.",
]


def rows_of_different_lengths():
    return [
        {"messages": [user(IMAGE, f"Question {i}?"), assistant(answer)], "images": [image((40 * i, 0, 200), (64, 64 + 16 * i))]}
        for i, answer in enumerate(ANSWERS)
    ]


def make_trainer(model, processor, tmp_path, rows=None, **config):
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        data_seed=0,
        use_cpu=True,  # the batches these tests build are CPU tensors, compared bit for bit on any machine
    )
    args = VLSFTConfig(**{**defaults, **config})
    dataset = Dataset.from_list(rows or rows_of_different_lengths())
    return VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=processor)


def reference_loss(model, batch):
    """Mean cross-entropy over supervised next-token targets, from the full logits."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_loss_and_gradients_equal_the_full_logits_reference(tiny, tmp_path, chunk_size):
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path, loss_chunk_size=chunk_size)
    batch = trainer.data_collator(rows_of_different_lengths())
    ours_model = trainer.model
    loss = trainer.compute_loss(ours_model, dict(batch))
    loss.backward()
    ours_grads = {n: p.grad.clone() for n, p in ours_model.named_parameters() if p.grad is not None}

    reference_model = copy.deepcopy(model)
    expected = reference_loss(reference_model, batch)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for name, param in reference_model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(ours_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_dft_loss_and_gradients_equal_the_full_logits_reference(tiny, tmp_path):
    """`loss_type="dft"`: TRL's Dynamic Fine-Tuning loss, each supervised token's NLL times its (detached)
    probability, over the supervised tokens only."""
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path, loss_type="dft", loss_chunk_size=7)
    batch = trainer.data_collator(rows_of_different_lengths())
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    ours_grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    reference_model = copy.deepcopy(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    log_probs = torch.log_softmax(reference_model(**inputs).logits.float()[:, :-1], dim=-1)
    targets = batch["labels"][:, 1:]
    supervised = targets != IGNORE_INDEX
    token_log_probs = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[supervised]
    expected = (-token_log_probs * token_log_probs.exp().detach()).sum() / supervised.sum()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    nll_trainer = make_trainer(model, processor, tmp_path)
    nll = nll_trainer.compute_loss(nll_trainer.model, dict(batch)).detach()
    assert loss.item() < nll.item()  # a different loss indeed: each term is down-weighted by a probability < 1
    for name, param in reference_model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(ours_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def step_weights(tiny, tmp_path, batch_size, accumulation, **config):
    model, processor = tiny
    trainer = make_trainer(
        model, processor, tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, **config
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, trainer


def test_one_batch_of_4_equals_4_accumulated_micro_batches_of_1(tiny, tmp_path):
    start = {n: p.detach().clone() for n, p in tiny[0].named_parameters()}
    one_by_four, trainer_a = step_weights(tiny, tmp_path / "a", 4, 1)
    four_by_one, trainer_b = step_weights(tiny, tmp_path / "b", 1, 4)
    update = max((one_by_four[n] - start[n]).abs().max() for n in start)
    difference = max((one_by_four[n] - four_by_one[n]).abs().max() for n in start)
    assert update > 1e-3  # the step really moved the weights
    assert difference <= 1e-4 * update
    # The logged loss is the true step loss in both cases.
    loss_a = trainer_a.state.log_history[0]["loss"]
    loss_b = trainer_b.state.log_history[0]["loss"]
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert trainer_a.state.log_history[0]["num_supervised_tokens"] == sum(
        len(trainer_a.processing_class.tokenizer(a + "<|im_end|>")["input_ids"]) for a in ANSWERS
    )


def test_lora_with_saved_lm_head_matches_the_reference(tiny, tmp_path):
    """The head is called as a module, so PEFT's `modules_to_save` copy of lm_head is the one used and trained."""
    model, processor = tiny
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", gradient_checkpointing=False, use_cpu=True)
    trainer = VLSFTTrainer(
        copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows_of_different_lengths()),
        processing_class=processor, peft_config=peft_config,
    )
    peft_model = trainer.model
    with torch.no_grad():  # make the saved head differ from the base head, so using the wrong one shows
        peft_model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    batch = trainer.data_collator(rows_of_different_lengths())
    loss = trainer.compute_loss(peft_model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = peft_model(**inputs).logits.float()
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    saved_head = peft_model.base_model.model.lm_head.modules_to_save["default"].weight
    assert saved_head.grad is not None and saved_head.grad.abs().sum() > 0


def test_no_supervised_token_gives_an_exact_zero_and_zero_gradients(tiny, tmp_path):
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path)
    batch = trainer.data_collator(rows_of_different_lengths()[:2])
    batch["labels"][:] = IGNORE_INDEX
    for num_items in (None, torch.tensor(0)):
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
        assert torch.isfinite(loss) and loss.item() == 0.0
        loss.backward()
        for name, param in trainer.model.named_parameters():
            assert param.grad is None or torch.count_nonzero(param.grad) == 0, name


def test_evaluation_uses_the_same_token_weighted_loss(tiny, tmp_path):
    """Over eval batches of different sizes (3 + 1 rows), eval_loss is the token-weighted mean over all rows."""
    model, processor = tiny
    rows = rows_of_different_lengths()
    trainer = make_trainer(model, processor, tmp_path, per_device_eval_batch_size=3)
    metrics = trainer.evaluate(Dataset.from_list(rows))
    expected = reference_loss(trainer.model, trainer.data_collator(rows))
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert 0.0 <= metrics["eval_mean_token_accuracy"] <= 1.0


def test_training_logs_accuracy_and_supervised_tokens_and_losses_stay_finite(tiny, tmp_path):
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path, max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3, optim="adamw_torch")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logs)
    assert all("mean_token_accuracy" in entry and "num_supervised_tokens" in entry for entry in logs)
    assert logs[-1]["num_supervised_tokens"] > logs[0]["num_supervised_tokens"]


def test_a_deep_copy_of_a_trained_model_runs_its_own_weights(tiny, tmp_path):
    """The head is attached per instance; a copy of the attached model must compute with the copy's weights."""
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path)
    batch = trainer.data_collator(rows_of_different_lengths()[:1])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    copied = copy.deepcopy(trainer.model)
    with torch.no_grad():
        copied.lm_head.weight.mul_(2.0)
        original_logits = trainer.model(**inputs).logits
        copied_logits = copied(**inputs).logits
        torch.testing.assert_close(copied_logits, 2.0 * original_logits)
        assert copied(**inputs, supervised_labels=batch["labels"]).nll_sum != trainer.model(**inputs, supervised_labels=batch["labels"]).nll_sum


def test_moe_load_balancing_loss_is_added_with_its_coefficient(tmp_path):
    """Qwen3-VL-MoE with `router_aux_loss_coef`: loss = supervised NLL mean + coef x the model's own aux loss."""
    from vlsft.testing.tiny_families import build_tiny

    model, processor = build_tiny("qwen3_vl_moe")
    rows = rows_of_different_lengths()
    trainer = make_trainer(model, processor, tmp_path, router_aux_loss_coef=0.25)
    assert trainer.aux_loss_enabled
    batch = trainer.data_collator(rows)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reference = trainer.model(**inputs, output_router_logits=True)
    nll = torch.nn.functional.cross_entropy(
        reference.logits[:, :-1].float().reshape(-1, reference.logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
    assert reference.aux_loss > 0
    torch.testing.assert_close(loss, nll + 0.25 * reference.aux_loss, rtol=1e-5, atol=1e-6)
