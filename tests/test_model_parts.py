"""Which Qwen3-VL parameters are the vision tower, the merger and the language model; freezing; the default LoRA
targets; per-component learning rates as optimizer parameter groups, used by the trainer."""

from __future__ import annotations

import re

import pytest
import torch

from vlsft.model_parts import (
    COMPONENTS,
    component_of,
    freeze_components,
    lora_target_modules,
    merger_module_names,
    named_parameters_by_component,
    parameter_groups,
)
from vlsft.recipes.loading import recipe_from_dict
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl


@pytest.fixture
def model():
    return build_tiny_qwen3_vl(seed=0)[0]


def expected_component(name: str) -> str:
    # Written out from the Qwen3-VL module tree, independently of the regexes under test.
    if name.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list.")):
        return "merger"
    if name.startswith("model.visual."):
        return "vision_tower"
    assert name.startswith(("model.language_model.", "lm_head.")), name
    return "language_model"


def test_every_parameter_is_in_exactly_its_component(model):
    names = [name for name, _ in model.named_parameters()]
    assert {component_of(name) for name in names} == set(COMPONENTS)
    for name in names:
        assert component_of(name) == expected_component(name), name
    grouped = named_parameters_by_component(model)
    assert sum(len(params) for params in grouped.values()) == len(names)
    assert any("deepstack_merger_list" in n for n, _ in grouped["merger"])
    assert any("patch_embed" in n for n, _ in grouped["vision_tower"])
    assert any(n == "lm_head.weight" for n, _ in grouped["language_model"])


@pytest.mark.parametrize(
    "name, component",
    [
        ("base_model.model.model.visual.merger.modules_to_save.default.linear_fc1.weight", "merger"),
        ("base_model.model.model.visual.blocks.0.attn.qkv.lora_A.default.weight", "vision_tower"),
        ("base_model.model.model.language_model.layers.1.mlp.up_proj.lora_B.default.weight", "language_model"),
        ("_fsdp_wrapped_module.model.visual.deepstack_merger_list.0.norm.weight", "merger"),
        ("model.visual_prompt.weight", "language_model"),  # whole dotted segments only
    ],
)
def test_wrapped_names_keep_their_component(name, component):
    assert component_of(name) == component


@pytest.mark.parametrize("vision_tower, merger", [(True, False), (False, True), (True, True), (False, False)])
def test_freezing_turns_off_exactly_the_asked_components(model, vision_tower, merger):
    freeze_components(model, vision_tower=vision_tower, merger=merger)
    frozen = {"vision_tower": vision_tower, "merger": merger, "language_model": False}
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (not frozen[expected_component(name)]), name


def test_train_build_model_applies_the_recipe_freeze_flags():
    from vlsft.recipes.build import build_model

    raw = {
        "model": {"name_or_path": "tiny-qwen3-vl", "freeze_vision_tower": True, "tiny": {"hidden_size": 32}},
        "data": {"train": [{"path": "demo-shapes", "rows": 4}]},
    }
    model = build_model(recipe_from_dict(raw))
    assert model.config.text_config.hidden_size == 32
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (expected_component(name) != "vision_tower"), name


def targeted(model, regex):
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear | torch.nn.Conv3d) and re.fullmatch(regex, name)]


def test_default_lora_targets_the_language_model_only(model):
    names = targeted(model, lora_target_modules())
    layers = model.config.text_config.num_hidden_layers
    assert len(names) == 7 * layers  # q, k, v, o, gate, up, down per decoder layer
    assert all(name.startswith("model.language_model.layers.") for name in names)


def test_lora_with_vision_adds_the_vision_blocks_but_never_patch_embed_or_merger(model):
    names = targeted(model, lora_target_modules(vision=True))
    vision = [name for name in names if ".visual." in name]
    assert len(vision) == 4 * model.config.vision_config.depth  # qkv, proj, fc1, fc2 per block
    assert all(".visual.blocks." in name for name in vision)
    assert not [name for name in names if "patch_embed" in name or "merger" in name]
    # The patch embedding is a Conv3d that a looser rule (e.g. every module of the ViT) would catch.
    assert isinstance(model.model.visual.patch_embed.proj, torch.nn.Conv3d)


def test_merger_module_names_list_each_deepstack_merger(model):
    names = merger_module_names(model)
    assert names == ["model.visual.merger"] + [
        f"model.visual.deepstack_merger_list.{i}" for i in range(len(model.config.vision_config.deepstack_visual_indexes))
    ]


def test_parameter_groups_give_each_component_its_learning_rate(model):
    freeze_components(model, vision_tower=True)
    decay = {name for name, _ in model.named_parameters() if not name.endswith("bias") and "norm" not in name}
    groups = parameter_groups(model, {"merger": 5e-4}, default_lr=1e-5, weight_decay=0.1, decay_parameter_names=decay)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []
    for group in groups:
        components = {expected_component(names[id(p)]) for p in group["params"]}
        assert len(components) == 1
        component = components.pop()
        assert group["lr"] == (5e-4 if component == "merger" else 1e-5)
        for p in group["params"]:
            assert (names[id(p)] in decay) == (group["weight_decay"] == 0.1)
        seen += [id(p) for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)  # every trainable parameter once, frozen ones never
    with pytest.raises(ValueError, match="vision"):
        parameter_groups(model, {"vision": 1e-5}, 1e-5, 0.0, decay)


def test_trainer_optimizer_uses_component_learning_rates(tmp_path):
    """One step with a zero learning rate for the vision tower and the language model: only the merger moves."""
    from vlsft.config import VLSFTConfig
    from vlsft.testing.demo_data import load_demo_split
    from vlsft.trainer import VLSFTTrainer

    model, processor = build_tiny_qwen3_vl(seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = VLSFTConfig(
        output_dir=str(tmp_path),
        report_to="none",
        activation_checkpointing=False,
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        save_strategy="no",
        component_learning_rates={"vision_tower": 0.0, "language_model": 0.0},
    )
    trainer = VLSFTTrainer(model=model, args=args, train_dataset=load_demo_split("train", rows=4), processing_class=processor)
    optimizer = trainer.create_optimizer()
    assert sorted({group["lr"] for group in optimizer.param_groups}) == [0.0, 1e-2]
    trainer.train()
    moved = {expected_component(n) for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"merger"}
