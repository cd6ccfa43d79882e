"""The three trainable parts of a vision-language model, and what a recipe does with them.

- `vision_tower`: the ViT (Qwen's `visual.patch_embed`, `visual.pos_embed`, `visual.blocks`; Gemma 3's and
  LLaVA-NeXT's `vision_tower`; Idefics3's and SmolVLM's `vision_model`).
- `merger`: the projector into the language model (Qwen's `visual.merger` and Qwen3-VL's DeepStack mergers
  `visual.deepstack_merger_list`, which feed intermediate vision features into early decoder layers; Gemma 3's and
  LLaVA-NeXT's `multi_modal_projector` and LLaVA-NeXT's learned `image_newline`; Idefics3's and SmolVLM's
  `connector`). `FAMILY_PARTS` lists them per family.
- `language_model`: everything else (`language_model` / `text_model`, `lm_head`).

Parts are recognised by parameter *names*, matched anywhere in the name, so the same rules hold for a bare model, a
PEFT model (`base_model.model.model.visual...`, `...merger.modules_to_save.default...`) and wrapped models (FSDP
prefixes). Names are matched on whole dotted segments: `visual.merger` never matches `visual.merger_foo`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from vlsft.templates import QWEN3_5_FAMILIES, family_of_model

VISION_TOWER = "vision_tower"
MERGER = "merger"
LANGUAGE_MODEL = "language_model"
COMPONENTS = (VISION_TOWER, MERGER, LANGUAGE_MODEL)


@dataclass(frozen=True)
class FamilyParts:
    """Where one model family keeps its parts, as dotted module names below the model's `model.`."""

    vision_tower: str
    mergers: tuple[str, ...]  # modules (or parameters) between the vision tower and the language model
    decoder_layers: str  # the language model's decoder layers
    vision_lora_targets: str  # regex, below `vision_tower`, of the ViT's attention and MLP Linear layers
    # The model's forward caps its logits with the text config's `final_logit_softcapping` (Gemma 4's does; Gemma 3's
    # conditional-generation head does not): the supervised loss must cap them the same way.
    caps_logits: bool = False


_QWEN3_VL_VISION = r"blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:linear_fc1|linear_fc2))"
_QWEN2_5_VL_VISION = r"blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate_proj|up_proj|down_proj))"
# SigLIP (Gemma 3, Idefics3, SmolVLM) and CLIP (LLaVA-NeXT) encoders name their layers alike.
_SIGLIP_CLIP_VISION = r"encoder\.layers\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|mlp\.(?:fc1|fc2))"

FAMILY_PARTS = {
    "qwen3_vl": FamilyParts("visual", ("visual.merger", "visual.deepstack_merger_list"), "language_model.layers", _QWEN3_VL_VISION),
    "qwen3_vl_moe": FamilyParts("visual", ("visual.merger", "visual.deepstack_merger_list"), "language_model.layers", _QWEN3_VL_VISION),
    "qwen2_5_vl": FamilyParts("visual", ("visual.merger",), "language_model.layers", _QWEN2_5_VL_VISION),
    "gemma3": FamilyParts("vision_tower", ("multi_modal_projector",), "language_model.layers", _SIGLIP_CLIP_VISION),
    "idefics3": FamilyParts("vision_model", ("connector",), "text_model.layers", _SIGLIP_CLIP_VISION),
    "smolvlm": FamilyParts("vision_model", ("connector",), "text_model.layers", _SIGLIP_CLIP_VISION),
    "llava_next": FamilyParts("vision_tower", ("multi_modal_projector", "image_newline"), "language_model.layers", _SIGLIP_CLIP_VISION),
}
# Qwen3.5 / 3.6 / 3.8 (every template generation; dense and MoE alike): Qwen3-VL's vision tower without DeepStack
# mergers. Keyed, like every entry, by the template family (`vlsft.templates.FAMILIES`).
for _name in QWEN3_5_FAMILIES:
    FAMILY_PARTS[_name] = FamilyParts("visual", ("visual.merger",), "language_model.layers", _QWEN3_VL_VISION)

# Gemma 4 (every template revision): the vision encoder wraps each Linear in a `Gemma4ClippableLinear` (`.linear`);
# `embed_vision` projects the pooled vision features into the language model.
_GEMMA4_VISION = r"encoder\.layers\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj))\.linear"
for _revision in ("gemma4_v2", "gemma4", "gemma4_v3", "gemma4_v4", "gemma4_v5"):
    FAMILY_PARTS[_revision] = FamilyParts(
        "vision_tower", ("embed_vision",), "language_model.layers", _GEMMA4_VISION, caps_logits=True
    )


def final_logit_softcap(model: nn.Module) -> float | None:
    """The cap the model's own forward applies to its logits (`tanh(logits / cap) * cap`), or None."""
    family = family_of_model(model)
    if family is None or not FAMILY_PARTS[family].caps_logits:
        return None
    return getattr(model.config.get_text_config(), "final_logit_softcapping", None)


def _alternatives(names) -> str:
    return "|".join(sorted({re.escape(name) for name in names}))


# The names of different families never collide (no Qwen module is called `connector`, no Gemma one `visual`), so one
# rule recognises the parts of every family.
_MERGER_NAMES = _alternatives(merger for family in FAMILY_PARTS.values() for merger in family.mergers)
_MERGER = re.compile(rf"(?:^|\.)(?:{_MERGER_NAMES})(?:\.|$)")
_MERGER_MODULE = re.compile(rf"(?:^|\.)(?:{_MERGER_NAMES})$")
_VISUAL = re.compile(rf"(?:^|\.)(?:{_alternatives(f.vision_tower for f in FAMILY_PARTS.values())})(?:\.|$)")

# LoRA targets, as one regex that PEFT matches against full module names (`re.fullmatch`). The language model's
# attention and MLP projections; with `vision=True` also the vision blocks' attention and MLP. Never the merger (it is
# trained fully, via `modules_to_save`, when asked) and never the patch embedding: a LoRA on that convolution would
# change the patch features under every image while adding almost no capacity. MoE experts (Qwen3-VL-MoE) are fused
# parameters, not Linear layers, so only their attention is adapted (the router `mlp.gate` is never a target).
_LANGUAGE_TARGETS = (
    rf".*(?:{_alternatives(f.decoder_layers for f in FAMILY_PARTS.values())})\.\d+\."
    r"(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj)"
    # Qwen3.5's hybrid stack: the GatedDeltaNet (linear attention) layers' projections, and the MoE's shared expert.
    r"|linear_attn\.(?:in_proj_qkv|in_proj_z|in_proj_b|in_proj_a|out_proj)"
    r"|mlp\.shared_expert\.(?:gate_proj|up_proj|down_proj))"
)
_VISION_TARGETS = "|".join(
    sorted({rf".*{re.escape(f.vision_tower)}\.{f.vision_lora_targets}" for f in FAMILY_PARTS.values()})
)


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


def lora_target_modules(vision: bool = False, model: nn.Module | None = None) -> str | list[str]:
    """The default LoRA `target_modules` regex: language model projections, plus the vision blocks if `vision`.

    Given the `model`, the names of the Linear layers the regex matches instead: a name alone cannot tell a Linear
    from a wrapper named like one (Gemma 4's vision encoder wraps each Linear in a `Gemma4ClippableLinear`, named
    exactly like SigLIP's Linear layers, and PEFT cannot adapt the wrapper)."""
    regex = f"(?:{_LANGUAGE_TARGETS})|(?:{_VISION_TARGETS})" if vision else _LANGUAGE_TARGETS
    if model is None:
        return regex
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and re.fullmatch(regex, name)]


def merger_module_names(model: nn.Module) -> list[str]:
    """Names of the merger modules (`...visual.merger` and each `...visual.deepstack_merger_list.<i>`, or
    `multi_modal_projector`, or `connector`), for PEFT's `modules_to_save`. A module list is listed item by item because
    PEFT wraps a matched module in a `ModulesToSaveWrapper`, and the model indexes `deepstack_merger_list[i]`: wrapping
    the list itself would break it. A merger that is a bare parameter (LLaVA-NeXT's `image_newline`) is no module, so
    it stays frozen under LoRA."""
    names = []
    for name, module in model.named_modules():
        if _MERGER_MODULE.search(name):
            if isinstance(module, nn.ModuleList):
                names.extend(f"{name}.{index}" for index in range(len(module)))
            else:
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
