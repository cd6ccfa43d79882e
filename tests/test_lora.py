"""LoRA from a recipe: what trains, that the dry-run counts match PEFT, that adapters save, reload and merge into a
model with the same logits, and that QLoRA without bitsandbytes stops before loading anything."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model

from tests.test_recipe import REPO, tiny_recipe, write_colour_dataset, write_recipe
from vlsft.recipes import plan
from vlsft.cli.train import main as train_main
from vlsft.recipes import build as train_module
from vlsft.model_parts import component_of
from vlsft.recipes.loading import load_recipe, recipe_from_dict
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl


def lora_recipe(**lora):
    return recipe_from_dict(
        {
            "model": {"name_or_path": "tiny-qwen3-vl", **lora.pop("model", {})},
            "data": {"train": [{"path": "demo-shapes", "rows": 4}]},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, **lora},
        }
    )


def peft_model(recipe):
    model = train_module.build_model(recipe)
    return get_peft_model(model, train_module.build_peft_config(recipe, model))


def trainable_names(model):
    return [name for name, p in model.named_parameters() if p.requires_grad]


def test_default_lora_trains_only_language_model_adapters():
    model = peft_model(lora_recipe())
    names = trainable_names(model)
    assert names and all("lora_" in name for name in names)
    assert {component_of(name) for name in names} == {"language_model"}


def test_lora_vision_and_unfrozen_merger():
    model = peft_model(lora_recipe(vision=True, model={"freeze_merger": False}))
    names = trainable_names(model)
    assert {component_of(name) for name in names} == {"language_model", "vision_tower", "merger"}
    assert not [name for name in names if "patch_embed" in name]
    merger = [name for name in names if component_of(name) == "merger"]
    # The mergers train fully (PEFT `modules_to_save` copies), the DeepStack list still indexable by the model.
    assert merger and all("modules_to_save" in name for name in merger)
    assert any("deepstack_merger_list.0.modules_to_save" in name for name in merger)
    inputs = build_tiny_qwen3_vl()[1](text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[_image()], return_tensors="pt")
    model(**inputs)  # forward through wrapped mergers works


def _image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (200, 30, 30))


@pytest.mark.parametrize("options", [{}, {"vision": True, "model": {"freeze_merger": False}}], ids=["default", "vision+merger"])
def test_dry_run_counts_match_peft(options):
    recipe = lora_recipe(**options)
    counts, _ = plan._meta_parameter_counts(recipe)
    model = peft_model(lora_recipe(**options))
    real = dict.fromkeys(counts, 0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            real[component_of(name)] += p.numel()
    assert {c: counts[c][0] for c in counts} == real
    assert real["language_model"] > 0


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def test_adapter_saves_reloads_and_merges_with_the_same_logits(tmp_path):
    recipe = lora_recipe(vision=True, model={"freeze_merger": False})
    model = peft_model(recipe)
    torch.manual_seed(1)
    with torch.no_grad():  # B starts at zero (adapter = identity); make the adapter do something
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    processor = build_tiny_qwen3_vl()[1]
    inputs = processor(
        text=["<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour?<|im_end|>\n"],
        images=[_image()],
        return_tensors="pt",
    )
    expected = logits(model, inputs)
    base = logits(train_module.build_model(recipe), inputs)
    assert (expected - base).abs().max() > 1e-3  # the adapter changes the output, so the comparisons below can fail

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(train_module.build_model(recipe), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, inputs), expected, rtol=1e-5, atol=1e-5)

    merged_dir = train_module.merge_adapter(recipe, str(tmp_path / "adapter"), str(tmp_path / "merged"))
    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, inputs), expected, rtol=1e-4, atol=1e-4)


def test_lora_recipe_trains_and_saves_adapter_and_merged_model(tmp_path):
    data = write_colour_dataset(tmp_path / "data", rows=8)
    raw = tiny_recipe(data, tmp_path / "out", lora={"r": 4, "alpha": 8, "save_merged": True})
    raw["data"].pop("eval_fraction")
    trainer = train_module.run(load_recipe(write_recipe(tmp_path / "r.yaml", raw)))
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert (out / "trainer_state.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "processor_config.json").is_file()
    assert trainer.state.global_step == 2


def test_qlora_without_bitsandbytes_fails_before_loading_anything(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available():
        pytest.skip("bitsandbytes and a GPU are usable here")

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded something before checking bitsandbytes")

    for name in ("build_processor", "build_datasets", "build_model"):
        monkeypatch.setattr(train_module, name, must_not_load)
    monkeypatch.chdir(REPO)
    with pytest.raises(RuntimeError, match="bitsandbytes") as error:
        train_main(["--config", "recipes/qwen3_vl_8b_qlora_single_gpu.yaml", "--max_steps", "1"])
    assert "lora.load_in_4bit: false" in str(error.value)
