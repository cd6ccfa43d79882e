"""The three trainable parts of a Qwen-VL style model, and what a recipe does with them.

- `vision_tower`: the ViT (`visual.patch_embed`, `visual.pos_embed`, `visual.blocks`).
- `merger`: the projector into the language model (`visual.merger`) and Qwen3-VL's DeepStack mergers
  (`visual.deepstack_merger_list`), which feed intermediate vision features into early decoder layers.
- `language_model`: everything else (`language_model`, `lm_head`).

Parts are recognised by parameter *names*, matched anywhere in the name, so the same rules hold for a bare model, a
PEFT model (`base_model.model.model.visual...`, `...merger.modules_to_save.default...`) and wrapped models (FSDP
prefixes). Names are matched on whole dotted segments: `visual.merger` never matches `visual.merger_foo`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

VISION_TOWER = "vision_tower"
MERGER = "merger"
LANGUAGE_MODEL = "language_model"
COMPONENTS = (VISION_TOWER, MERGER, LANGUAGE_MODEL)

_MERGER = re.compile(r"(?:^|\.)visual\.(?:merger|deepstack_merger_list)(?:\.|$)")
_VISUAL = re.compile(r"(?:^|\.)visual(?:\.|$)")

# LoRA targets, as one regex that PEFT matches against full module names (`re.fullmatch`). The language model's
# attention and MLP projections; with `vision=True` also the vision blocks' attention and MLP. Never the merger (it is
# trained fully, via `modules_to_save`, when asked) and never `visual.patch_embed`: a LoRA on that Conv3d would change
# the patch features under every image while adding almost no capacity.
_LANGUAGE_TARGETS = r".*language_model\.layers\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj))"
_VISION_TARGETS = r".*visual\.blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:linear_fc1|linear_fc2))"


def component_of(name: str) -> str:
    """The component a parameter or module name belongs to."""
    if _MERGER.search(name):
        return MERGER
    if _VISUAL.search(name):
        return VISION_TOWER
    return LANGUAGE_MODEL


def named_parameters_by_component(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every parameter of `model`, grouped by component (each tied/shared parameter once)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {component: [] for component in COMPONENTS}
    for name, parameter in model.named_parameters():
        groups[component_of(name)].append((name, parameter))
    return groups


def parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameter counts per component."""
    return {
        component: (sum(p.numel() for _, p in params if p.requires_grad), sum(p.numel() for _, p in params))
        for component, params in named_parameters_by_component(model).items()
    }


def freeze_components(model: nn.Module, vision_tower: bool = False, merger: bool = False) -> None:
    """Turn off gradients for the vision tower and/or the merger (the language model is never frozen here)."""
    frozen = {VISION_TOWER: vision_tower, MERGER: merger}
    for name, parameter in model.named_parameters():
        if frozen.get(component_of(name), False):
            parameter.requires_grad_(False)


def lora_target_modules(vision: bool = False) -> str:
    """The default LoRA `target_modules` regex: language model projections, plus the vision blocks if `vision`."""
    if vision:
        return f"(?:{_LANGUAGE_TARGETS})|(?:{_VISION_TARGETS})"
    return _LANGUAGE_TARGETS


def merger_module_names(model: nn.Module) -> list[str]:
    """Names of the merger modules (`...visual.merger` and each `...visual.deepstack_merger_list.<i>`), for PEFT's
    `modules_to_save`. The DeepStack mergers are listed one by one because PEFT wraps a matched module in a
    `ModulesToSaveWrapper`, and the model indexes `deepstack_merger_list[i]`: wrapping the list itself would break it."""
    names = []
    for name, _ in model.named_modules():
        if re.search(r"(?:^|\.)visual\.merger$", name) or re.search(r"(?:^|\.)visual\.deepstack_merger_list\.\d+$", name):
            names.append(name)
    return names


def parameter_groups(
    model: nn.Module,
    learning_rates: dict[str, float],
    default_lr: float,
    weight_decay: float,
    decay_parameter_names: Iterable[str],
) -> list[dict]:
    """Optimizer parameter groups, one per (component, decay or not) that has trainable parameters.

    `learning_rates` maps component names to learning rates; a component it leaves out uses `default_lr`. Weight
    decay applies to the parameters in `decay_parameter_names` (the Trainer's rule: no decay on biases and norms).
    """
    unknown = set(learning_rates) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"Unknown component(s) {sorted(unknown)} in component learning rates; valid: {list(COMPONENTS)}.")
    decay_names = set(decay_parameter_names)
    groups = []
    for component, params in named_parameters_by_component(model).items():
        lr = learning_rates.get(component, default_lr)
        trainable = [(name, p) for name, p in params if p.requires_grad]
        for decays in (True, False):
            selected = [p for name, p in trainable if (name in decay_names) == decays]
            if selected:
                groups.append({"params": selected, "lr": lr, "weight_decay": weight_decay if decays else 0.0})
    return groups
