"""The accelerate configs in configs/ and the DeepSpeed JSON files they point to: they load (accelerate, transformers'
`HfTrainerDeepSpeedConfig`, DeepSpeed 0.19's own `DeepSpeedConfig`), and once "auto" is resolved from a recipe their
stage, precision, batch sizes and clipping are the recipe's. No GPU needed: configs are checked, not run."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.test_recipe import REPO
from vlsft.recipes.layouts import DEEPSPEED_LAYOUTS, LAYOUTS
from vlsft.recipes.loading import load_recipe
from vlsft.recipes.build import build_training_config

pytest.importorskip("deepspeed")

CASES = [
    # (recipe, overrides, stage, offload)
    ("qwen3_vl_2b_mixture_full_zero2.yaml", [], 2, False),
    ("qwen3vl.yaml", [], 3, False),
    ("qwen3vl.yaml", ["--layout.strategy", "zero3_offload", "--per_device_train_batch_size", "1"], 3, True),
    ("qwen3vl.yaml", ["--bf16", "false", "--gradient_accumulation_steps", "8", "--max_grad_norm", "0.5"], 3, False),
]
AUTO_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping")


@pytest.fixture(scope="module")
def tiny_model():
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

    return build_tiny_qwen3_vl()[0]


@pytest.fixture(autouse=True)
def no_global_deepspeed_config():
    # An `HfTrainerDeepSpeedConfig` registers itself globally (ZeRO-3 then shards every model built afterwards);
    # keep that from leaking into other tests of the same worker.
    yield
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


@pytest.mark.parametrize("name", sorted(DEEPSPEED_LAYOUTS))
def test_deepspeed_json_leaves_batch_clipping_and_precision_to_the_recipe(name):
    config = json.loads((REPO / "configs" / DEEPSPEED_LAYOUTS[name]).read_text())
    for key in AUTO_KEYS:
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    # The Trainer builds the optimizer (so per-component learning rates reach it) and the scheduler.
    assert "optimizer" not in config and "scheduler" not in config


@pytest.mark.parametrize("recipe_name, overrides, stage, offload", CASES)
def test_resolved_deepspeed_config_matches_the_recipe(recipe_name, overrides, stage, offload, tiny_model):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    recipe = load_recipe(REPO / "recipes" / recipe_name, overrides)
    args = build_training_config(recipe, check_only=True)  # bf16 allowed on this CPU-only machine
    hf_config = HfTrainerDeepSpeedConfig(str(recipe.layout.deepspeed_config))
    hf_config.trainer_config_process(args)
    hf_config.trainer_config_finalize(args, tiny_model, num_training_steps=100)  # hidden-size based "auto" values
    resolved = hf_config.config
    assert "auto" not in json.dumps(resolved)

    ds = DeepSpeedConfig(resolved)
    assert ds.zero_optimization_stage == stage
    assert ds.bfloat16_config.enabled == bool(recipe.training.get("bf16"))
    assert ds.train_micro_batch_size_per_gpu == recipe.training["per_device_train_batch_size"]
    assert ds.gradient_accumulation_steps == recipe.training["gradient_accumulation_steps"]
    assert ds.gradient_clipping == recipe.training["max_grad_norm"]
    assert ds.train_batch_size == args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    assert (ds.zero_config.offload_param is not None) == offload
    assert (ds.zero_config.offload_optimizer is not None) == offload
    if stage == 3:
        assert resolved["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("strategy", sorted(LAYOUTS))
def test_accelerate_configs_load_and_point_to_existing_files(strategy):
    from accelerate.commands.config.config_args import load_config_from_file

    path = REPO / "configs" / LAYOUTS[strategy]
    config = load_config_from_file(str(path))
    raw = yaml.safe_load(path.read_text())
    expected_type = {"single_gpu": "NO", "cpu": "NO", "ddp": "MULTI_GPU", "fsdp2": "FSDP"}.get(strategy, "DEEPSPEED")
    assert str(config.distributed_type).split(".")[-1] == expected_type
    assert config.use_cpu == (strategy == "cpu")
    if expected_type == "DEEPSPEED":
        json_file = raw["deepspeed_config"]["deepspeed_config_file"]
        assert (REPO / json_file).is_file() and json_file == f"configs/{DEEPSPEED_LAYOUTS[strategy]}"
        # With a JSON file, accelerate refuses these in its own config (they live in the JSON).
        refused = {"gradient_accumulation_steps", "gradient_clipping", "zero_stage", "offload_optimizer_device",
                   "offload_param_device", "zero3_save_16bit_model", "mixed_precision"}
        assert not refused & set(raw["deepspeed_config"]) and "mixed_precision" not in raw
    else:
        # Precision comes from the recipe (the Trainer passes it to accelerate), so the launcher adds none.
        assert raw["mixed_precision"] == "no"
    if strategy == "fsdp2":
        assert raw["fsdp_config"]["fsdp_version"] == 2


def test_fp16_recipe_resolves_fp16_not_bf16(tiny_model):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    recipe = load_recipe(REPO / "recipes" / "qwen3_vl_2b_mixture_full_zero2.yaml", ["--bf16", "false", "--fp16", "true"])
    args = build_training_config(recipe, check_only=True)
    hf_config = HfTrainerDeepSpeedConfig(str(recipe.layout.deepspeed_config))
    hf_config.trainer_config_process(args)
    assert hf_config.config["fp16"]["enabled"] is True and hf_config.config["bf16"]["enabled"] is False
