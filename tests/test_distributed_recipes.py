"""`vlsft train` on the DeepSpeed layouts, end to end on 2 CPU processes (gloo): the tiny model built while a ZeRO-3
config is live, the embedded demo data (image, text-only, multi-turn and tool rows mixed), evaluation, saving, and
LoRA with `save_merged` under ZeRO-3 (which used to hang). Each launch runs under a timeout that turns a hang into a
failure showing the log tail."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.test_distributed import REPO, launch
from tests.test_recipe import tiny_recipe, write_recipe
from vlsft.distributed import check_offload_keeps_optimizer


def demo_recipe(tmp_path, strategy: str, **sections):
    raw = tiny_recipe(tmp_path, tmp_path / "out", layout={"strategy": strategy, "gpus_per_node": 2})
    raw["data"] = {
        "train": [{"path": "demo-shapes", "split": "train", "rows": 8}],
        "eval": [{"path": "demo-shapes", "split": "eval", "rows": 3}],  # 3 rows over 2 ranks: an uneven last batch
    }
    raw["training"].update(eval_strategy="steps", eval_steps=2, loss_chunk_size=8)
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return write_recipe(tmp_path / "recipe.yaml", raw)


def train(tmp_path, recipe) -> dict:
    result = launch(["vlsft/train.py", "--config", str(recipe)])
    # Two processes running the layout's DeepSpeed stage (vlsft notes any difference from the layout).
    assert "differs from layout" not in result.stderr, result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert any("eval_loss" in entry for entry in state["log_history"])
    return state


def test_vlsft_train_zero2(tmp_path):
    train(tmp_path, demo_recipe(tmp_path, "zero2"))
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_vlsft_train_zero3_lora_save_merged(tmp_path):
    """A saved model (loaded with `from_pretrained`, so under `zero.Init` while ZeRO-3 is live) trains a LoRA
    adapter under ZeRO-3; the merge on the main process (which used to hang in `zero.Init`) equals base + adapter
    merged here, in one process."""
    from peft import PeftModel
    from transformers import Qwen3VLForConditionalGeneration

    from vlsft.testing.tiny_qwen3_vl import save_tiny_qwen3_vl

    base_dir = save_tiny_qwen3_vl(tmp_path / "base", seed=0)
    recipe = demo_recipe(
        tmp_path, "zero3", model={"name_or_path": str(base_dir), "dtype": "float32"},
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "save_merged": True}, training={"activation_checkpointing": True},
    )
    train(tmp_path, recipe)
    out = tmp_path / "out"
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") and tensor.abs().max() > 0 for name, tensor in adapter.items())
    base = Qwen3VLForConditionalGeneration.from_pretrained(base_dir)
    expected = PeftModel.from_pretrained(base, str(out)).merge_and_unload().state_dict()
    merged = load_file(str(out / "merged" / "model.safetensors"))
    assert merged and all(torch.equal(merged[name], expected[name]) for name in merged)


def test_vlsft_train_zero3_offload_with_the_recipe_optimizer(tmp_path):
    train(tmp_path, demo_recipe(tmp_path, "zero3_offload", training={"optim": "sgd"}))
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_optimizer_offload_that_would_swap_the_optimizer_is_refused():
    offloading = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    with pytest.raises(ValueError, match="zero_force_ds_cpu_optimizer"):
        check_offload_keeps_optimizer(offloading, "sgd")
    check_offload_keeps_optimizer({**offloading, "zero_force_ds_cpu_optimizer": False}, "sgd")
    check_offload_keeps_optimizer({"zero_optimization": {"stage": 3}}, "sgd")
    shipped = json.loads((REPO / "configs/ds_zero3_offload.json").read_text())
    check_offload_keeps_optimizer(shipped, "sgd")
