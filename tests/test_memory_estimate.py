"""The dry run's peak-memory estimate (`vlsft.recipes.memory_estimate`) against what torch holds on the CPU for a tiny
Qwen3-VL: weights, adapters, gradients and AdamW states to the byte; activations (the bytes autograd saves for the
backward, counted with `saved_tensors_hooks`) within a factor of 1.5. The GPU comparison (allocator, CUDA context,
real sizes) has not been run: no GPU was lent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vlsft.recipes.loading import load_recipe
from vlsft.recipes.memory_estimate import estimate, quantized_bytes, settings_from_recipe
from vlsft.recipes.model_shapes import meta_model
from vlsft.recipes.plan import _meta_parameter_counts, describe_plan
from vlsft.recipes.build import build_model, build_peft_config, build_training_config

TOKENS = 96


def _recipe(tmp_path, lora: str, training: str = ", activation_checkpointing: false"):
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: {name_or_path: tiny-qwen3-vl, dtype: bfloat16, tiny: {num_hidden_layers: 3, hidden_size: 64}}\n"
        + lora
        + "data: {train: [{path: demo-shapes, rows: 4}]}\n"
        + f"training: {{max_length: {TOKENS}, per_device_train_batch_size: 1, bf16: true, loss_chunk_size: 32{training}}}\n"
        + "layout: {strategy: cpu}\n"
    )
    return load_recipe(str(path))


def _estimate(recipe):
    args = build_training_config(recipe, check_only=True)
    model, source = meta_model(recipe)
    counts, _ = _meta_parameter_counts(recipe, model, source)
    settings = settings_from_recipe(recipe, args, model)
    settings.image_tokens = 0  # the measured batch is text only
    return estimate(model, settings, sum(t for t, _ in counts.values())), settings


def _real_model(recipe):
    model = build_model(recipe)
    config = build_peft_config(recipe, model)
    if config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, config)
    return model


def _saved_bytes(model, batch, params) -> int:
    """Bytes of the distinct storages autograd keeps for the backward (parameters excluded)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).logits.float().sum()
    return sum(storages.values()), loss


@pytest.mark.parametrize("lora", ["lora: {r: 8, alpha: 16, dropout: 0.05}\n", "lora: {r: 4, dropout: 0.0}\n", ""])
def test_parameter_gradient_and_optimizer_bytes_are_exact_and_activations_close(tmp_path, lora):
    recipe = _recipe(tmp_path, lora)  # no checkpointing: every layer keeps what the formula counts
    expected, settings = _estimate(recipe)
    model = _real_model(recipe)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert sum(p.numel() * p.element_size() for p in base) == expected.weights
    if lora:
        assert sum(p.numel() * p.element_size() for p in trainable) == expected.trainable
        assert all(p.dtype == torch.float32 for p in trainable)  # PEFT's float32 adapters, as the estimate says

    input_ids = torch.randint(10, 200, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved, loss = _saved_bytes(model, {"input_ids": input_ids}, params)
    # The loss here saves nothing (a sum of the logits); the LM head's own share is its input (the final hidden states).
    print("saved / estimated activations", saved / expected.activations)
    assert 1 / 1.5 <= saved / expected.activations <= 1.5, (saved, expected.activations)

    loss.backward()
    for p in trainable:  # a text-only batch leaves a full fine-tune's vision tower without gradients; a step with images would not
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    assert sum(p.grad.numel() * p.grad.element_size() for p in trainable) == expected.gradients
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    optimizer.step()
    states = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step"
    )
    assert states == expected.optimizer


def test_checkpointing_and_offload_shrink_activations_as_the_formula_says(tmp_path):
    lora = "lora: {r: 8, alpha: 16, dropout: 0.05}\n"
    plain, _ = _estimate(_recipe(tmp_path, lora))
    checkpointed, _ = _estimate(_recipe(tmp_path, lora, ", activation_checkpointing: true"))
    every_other, _ = _estimate(
        _recipe(tmp_path, lora, ", activation_checkpointing: true, activation_checkpointing_kwargs: {every_n_layers: 2}")
    )
    offloaded, _ = _estimate(
        _recipe(tmp_path, lora, ", activation_checkpointing: true, activation_checkpointing_kwargs: {offload: true}")
    )
    hidden_input = 2 * 64 * TOKENS  # one layer's kept input: bf16 x hidden x tokens
    assert checkpointed.activations < every_other.activations < plain.activations
    assert offloaded.activations == checkpointed.activations - 3 * hidden_input
    assert offloaded.host_offload == 3 * hidden_input and checkpointed.host_offload == 0
    assert plain.weights == checkpointed.weights and plain.optimizer == checkpointed.optimizer


def test_nf4_bytes_are_half_a_byte_plus_block_scales():
    # 4096 x 4096: 8 Mi packed bytes; 262,144 blocks of 64 with 1-byte scales, 1,024 float32 second-level scales.
    assert quantized_bytes(4096 * 4096, double_quant=True) == 8_388_608 + 262_144 + 4 * 1024
    assert quantized_bytes(4096 * 4096, double_quant=False) == 8_388_608 + 4 * 262_144


def test_dry_run_prints_the_estimate(tmp_path):
    plan = describe_plan(_recipe(tmp_path, "lora: {r: 8}\n", ", activation_checkpointing: true"))
    assert "memory     expected peak on one GPU:" in plan
    assert "checkpointing every layer" in plan and "LM head chunks" in plan


CARD_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*_single_gpu_*gb.yaml"))


@pytest.mark.parametrize("path", CARD_RECIPES, ids=lambda path: path.stem)
def test_card_recipe_states_its_estimate_and_fits_its_card(path):
    """Each per-card recipe's comment states the peak its dry run prints, and that peak leaves 10% of the card."""
    plan = describe_plan(load_recipe(str(path)))
    printed = re.search(r"expected peak on one GPU: ([\d.]+) GiB", plan)
    assert printed, plan
    stated = re.search(r"Expected peak GPU memory: ([\d.]+) GiB", path.read_text())
    assert stated and stated.group(1) == printed.group(1)
    card = int(re.search(r"_(\d+)gb$", path.stem).group(1))
    assert float(printed.group(1)) <= 0.9 * card


def test_six_card_recipes_ship():
    assert {p.stem for p in CARD_RECIPES} == {
        f"{model}_{method}_single_gpu_{card}gb"
        for model in ("qwen3_vl_8b", "qwen3_5_9b")
        for method, card in (("qlora", 24), ("lora", 48), ("lora", 80))
    }
