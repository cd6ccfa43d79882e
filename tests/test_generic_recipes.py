"""The shipped recipes of families on the generic exact path, each pointed at its family's tiny model saved to a
directory (`vlsft.testing.tiny_generic_families`) and a local JSONL file: the processor and model load through the
Auto classes, rows validate on the generic path, and two optimizer steps train what the recipe says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_families import rows_of_different_lengths
from vlsft.data.rows import normalize_messages
from vlsft.recipes.loading import load_recipe
from vlsft.testing.tiny_generic_families import GENERIC_BUILDERS

REPO = Path(__file__).resolve().parent.parent
GENERIC_RECIPES = {
    "lfm2_vl": "lfm2_5_vl_1_6b_full_single_gpu.yaml",
    "glm4v": "glm4_1v_9b_thinking_lora_single_gpu.yaml",
    "internvl": "internvl3_5_8b_lora_single_gpu.yaml",
    "mistral3": "mistral_small_3_1_24b_lora_zero3.yaml",
    "aya_vision": "aya_vision_8b_lora_single_gpu.yaml",
    "llama4": "llama4_scout_17b_16e_lora_zero3.yaml",
    "muse_glimmer": "muse_glimmer_30b_lora_zero3.yaml",
}
# `recipes/gemma3n_e4b_lora_single_gpu.yaml` is planned by the dry run of every shipped recipe only: the tiny Gemma 3n's
# MobileNet-v5 tower is built from a block list (timm's decoded `block_args`) that its config cannot write to JSON,
# so the tiny model cannot be saved to a directory for the recipe to load (`tests/test_generic_families.py` trains it).


def write_jsonl_dataset(directory: Path) -> Path:
    lines = []
    for number, row in enumerate(rows_of_different_lengths()):
        paths = []
        for index, picture in enumerate(row["images"]):
            paths.append(f"{number}_{index}.png")
            picture.save(directory / paths[-1])
        lines.append(json.dumps({"messages": normalize_messages(row["messages"]), "images": paths}))
    path = directory / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("family", GENERIC_RECIPES)
def test_the_generic_family_recipe_trains_the_tiny_model_end_to_end(family, tmp_path, monkeypatch):
    from vlsft.cli.train import main

    model, processor = GENERIC_BUILDERS[family](seed=0)
    assert model.config.model_type == family
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    data = write_jsonl_dataset(tmp_path)
    name = GENERIC_RECIPES[family]
    recipe = load_recipe(REPO / "recipes" / name)
    out = tmp_path / "out"
    overrides = [
        "--model.name_or_path", str(tmp_path / "model"), "--model.dtype", "float32",
        "--model.attn_implementation", "eager", "--data.train.0.path", str(data), "--data.train.0.rows", "4",
        "--output_dir", str(out), "--max_steps", "2", "--bf16", "false", "--max_length", "1024",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--eval_steps", "1000",
        "--save_steps", "1000", "--logging_steps", "1", "--layout.strategy", "cpu", "--layout.gpus_per_node", "1",
    ]
    monkeypatch.chdir(REPO)
    assert main(["--config", f"recipes/{name}", *overrides]) == 0

    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 2 and losses and all(torch.isfinite(torch.tensor(losses)))
    if recipe.lora is None:
        assert (out / "model.safetensors").is_file()
        return
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as adapter:
        names = list(adapter.keys())
    assert names and all("lora_" in n for n in names)
    assert any("language_model" in n for n in names)


@pytest.mark.parametrize("family", GENERIC_RECIPES)
def test_the_dry_run_plans_each_generic_recipe_from_its_models_config(family, tmp_path, capsys, monkeypatch):
    """With the model's config at hand (here the tiny model's directory), the dry run counts parameters and estimates
    memory for single-GPU layouts (InternVL's `patch_size` is a pair, which the estimate once squared as a number)."""
    from vlsft.cli.train import main

    model, processor = GENERIC_BUILDERS[family](seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    monkeypatch.chdir(REPO)
    name = GENERIC_RECIPES[family]
    assert main(["--config", f"recipes/{name}", "--dry-run", "--model.name_or_path", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "no counts" not in out
    if load_recipe(REPO / "recipes" / name).layout.strategy == "single_gpu":
        assert "memory     expected peak on one GPU:" in out
