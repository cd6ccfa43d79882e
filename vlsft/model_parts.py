"""The three trainable parts of a vision-language model, and what a recipe does with them.

- `vision_tower`: the ViT (Qwen's `visual.patch_embed`, `visual.pos_embed`, `visual.blocks`; Gemma 3's and
  LLaVA-NeXT's `vision_tower`; Idefics3's and SmolVLM's `vision_model`).
- `merger`: the projector into the language model (Qwen's `visual.merger` and Qwen3-VL's DeepStack mergers
  `visual.deepstack_merger_list`, which feed intermediate vision features into early decoder layers; Gemma 3's and
  LLaVA-NeXT's `multi_modal_projector` and LLaVA-NeXT's learned `image_newline`; Idefics3's and SmolVLM's
  `connector`). Each family's `Family.parts` (`vlsft.families.FAMILIES`) names them.
- `language_model`: everything else (`language_model` / `text_model`, `lm_head`).

Parts are recognised by parameter *names*, matched anywhere in the name, so the same rules hold for a bare model, a
PEFT model (`base_model.model.model.visual...`, `...merger.modules_to_save.default...`) and wrapped models (FSDP
prefixes). Names are matched on whole dotted segments: `visual.merger` never matches `visual.merger_foo`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable

from torch import nn

from vlsft.families import FAMILIES, family_of_model

VISION_TOWER = "vision_tower"
MERGER = "merger"
LANGUAGE_MODEL = "language_model"
COMPONENTS = (VISION_TOWER, MERGER, LANGUAGE_MODEL)


def final_logit_softcap(model: nn.Module) -> float | None:
    """The cap the model's own forward applies to its logits (`tanh(logits / cap) * cap`), or None."""
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    family = family_of_model(model)
    if family is not None:
        return cap if FAMILIES[family].parts.caps_logits else None
    # A model without a record: its forward's code says whether it caps. The config alone cannot (Gemma 3's
    # conditional-generation head ignores the cap its config holds; Gemma 3n's and PaliGemma's apply it).
    return cap if cap is not None and _head_code_reads(type(model), "final_logit_softcapping") else None


def output_vocab_size(model: nn.Module) -> int | None:
    """How many of the LM head's rows the model's own forward keeps in its logits, where it cuts off padding rows
    (Inkling's `unpadded_vocab_size`: the checkpoints' head is padded, the logits beyond the real tokens dropped before
    the loss); None where it keeps them all."""
    size = getattr(model.config.get_text_config(), "unpadded_vocab_size", None)
    return size if size is not None and _head_code_reads(type(model), "unpadded_vocab_size") else None


def _head_code_reads(model_class: type, name: str) -> bool:
    """Whether `model_class`'s forward, or its `__init__` (which may build a module the forward calls from the config,
    as Inkling 2's `logit_softcap`), reads the config field `name`; True where the source cannot be read, as a config
    that sets the field most likely means it."""
    try:
        return any(name in inspect.getsource(code) for code in (model_class.forward, model_class.__init__))
    except (OSError, TypeError):
        return True


def _alternatives(names) -> str:
    return "|".join(sorted({re.escape(name) for name in names}))


# transformers 5's names of the parts of a vision-language model, by which the parts of a model without a record
# (the generic path) are found: e.g. GLM-4.1V's `visual` and `visual.merger`, LFM2-VL's `vision_tower` and
# `multi_modal_projector`, Idefics3's `vision_model` and `connector`, Muse Glimmer's `vision_adapter` (an MLP) and
# `vision_projection` (Llama 4's pixel-shuffle MLP is a `vision_adapter` too, inside its `vision_model`: a projector);
# Ovis2's projector is its `visual_embeddings_table`, which maps the vision tower's probabilities over a visual
# vocabulary into embeddings; Video-LLaVA has two towers, `image_tower` and `video_tower`; Granite 4 Vision projects
# with window Q-Formers, `layerwise_projectors` (DeepStack) and `spatial_projectors`; HunYuan-VL's projector is the
# `patch_merger` inside its `vision_tower`. DeepSeek-VL's and Janus's projector is their `aligner`; DeepSeek-VL 7B's
# (hybrid) second, high-resolution tower is a SAM encoder (`high_res_vision_model`) with its `high_res_vision_neck`,
# the strided convolutions `high_res_vision_proj` and the gate `high_res_vision_alpha`, all of the original
# checkpoint's `vision_tower_high`. LightOnOCR's Pixtral tower is its `vision_encoder` (its projector
# `vision_projection`); Kimi K2.5's projector is its `mm_projector`; HyperCLOVA X SEED Vision's (v2) is a linear
# `projector` after its Qwen2.5-VL tower's own `merger`; VideoLLaMA3's and Cosmos 3 Edge's (a patch-merging MLP) are
# their `projector`. Phi-4-multimodal is a causal LM whose decoder is its own `model` (`model.layers`): its token
# embedding `model.embed_tokens_extend` holds the SigLIP tower `image_embed.img_processor` and the projector
# `img_projection_up`/`img_projection_down` with the learned separators `global_img_feature_extensor`/
# `sub_img_feature_extensor` (its audio encoder, `audio_embed`, counts with the language model, as no vision part
# reads it). ERNIE 4.5-VL's projector is its `resampler_model`.
VISION_TOWER_NAMES = (
    "visual", "vision_tower", "vision_model", "image_tower", "video_tower", "high_res_vision_model",
    "high_res_vision_neck", "high_res_vision_proj", "high_res_vision_alpha", "vision_encoder", "img_processor",
)
PROJECTOR_NAMES = (
    "multi_modal_projector", "merger", "connector", "vision_adapter", "vision_projection", "visual_embeddings_table",
    "layerwise_projectors", "spatial_projectors", "patch_merger", "aligner", "mm_projector", "projector",
    "img_projection_up", "img_projection_down", "global_img_feature_extensor", "sub_img_feature_extensor",
    "resampler_model",
)
LANGUAGE_MODEL_NAMES = ("language_model", "text_model")
# Encoder-free models have no vision tower: Gemma 4 Unified's `embed_vision` (a projector name, Gemma 4's) normalises
# and projects raw pixel patches (`patch_*`) and adds factorized 2D position embeddings (`pos_*`), then maps them into
# the language model through its `multimodal_embedder`. That patch embedding is their vision tower.
PATCH_EMBEDDING_NAMES = tuple(
    f"embed_vision.{name}" for name in ("patch_ln1", "patch_dense", "patch_ln2", "pos_embedding", "pos_norm")
)
# The decoder layers of a causal LM that is itself the language model, its vision parts inside its embedding
# (Phi-4-multimodal's `model.layers`): matched at the top of the model only, never inside a tower (Llama 4's
# `vision_model.model.layers`).
CAUSAL_LM_DECODER = "model.layers"

# The names of different families never collide (no Qwen module is called `connector`, no Gemma one `visual`), so one
# rule recognises the parts of every family.
_PARTS = [family.parts for family in FAMILIES.values()]
_MERGER_NAMES = _alternatives([*(merger for parts in _PARTS for merger in parts.mergers), *PROJECTOR_NAMES])
_MERGER = re.compile(rf"(?:^|\.)(?:{_MERGER_NAMES})(?:\.|$)")
_MERGER_MODULE = re.compile(rf"(?:^|\.)(?:{_MERGER_NAMES})$")
_VISUAL_NAMES = _alternatives([*(parts.vision_tower for parts in _PARTS), *VISION_TOWER_NAMES])
_VISUAL = re.compile(rf"(?:^|\.)(?:{_VISUAL_NAMES}|{_alternatives(PATCH_EMBEDDING_NAMES)})(?:\.|$)")
_PATCH_EMBEDDING = re.compile(rf"(?:^|\.)(?:{_alternatives(PATCH_EMBEDDING_NAMES)})(?:\.|$)")
_LANGUAGE_MODEL = re.compile(
    rf"(?:^|\.)(?:{_alternatives(LANGUAGE_MODEL_NAMES)})$|^{re.escape(CAUSAL_LM_DECODER)}$"
)

# LoRA targets, as one regex that PEFT matches against full module names (`re.fullmatch`). The language model's
# attention and MLP projections; with `vision=True` also the vision blocks' attention and MLP. Never the merger (it is
# trained fully, via `modules_to_save`, when asked) and never the patch embedding: a LoRA on that convolution would
# change the patch features under every image while adding almost no capacity. MoE experts (Qwen3-VL-MoE) are fused
# parameters, not Linear layers, so only their attention is adapted (the router `mlp.gate` is never a target).
# A language model that is a causal LM holds its layers one level down (Llama 4's `language_model.model.layers`), and
# Llama 4 names its MLP `feed_forward` (its router, a Linear named `router`, is never a target).
_DECODER_LAYERS = [parts.decoder_layers for parts in _PARTS]
_LANGUAGE_TARGETS = (
    rf"(?:.*(?:{_alternatives([*_DECODER_LAYERS, *(d.replace('.layers', '.model.layers') for d in _DECODER_LAYERS)])})"
    rf"|{re.escape(CAUSAL_LM_DECODER)})"
    # GLM-4's MLP fuses the gate and up projections (`gate_up_proj`), Phi-4's attention its `qkv_proj`.
    # DeepSeek-V3's multi-head latent attention (Kimi K2.5's) projects queries and keys/values through low-rank pairs.
    r"\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj|qkv_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj)"
    r"|(?:mlp|feed_forward)\.(?:gate_proj|up_proj|gate_up_proj|down_proj)"
    # Qwen3.5's hybrid stack: the GatedDeltaNet (linear attention) layers' projections, and the MoE's shared expert
    # (GLM-4.5's: `shared_experts`).
    r"|linear_attn\.(?:in_proj_qkv|in_proj_z|in_proj_b|in_proj_a|out_proj)"
    r"|(?:mlp|feed_forward)\.shared_experts?\.(?:gate_proj|up_proj|down_proj)"
    # Nemotron-H's hybrid stack names every layer's block `mixer`: attention, Mamba-2 (`in_proj`/`out_proj`), dense
    # MLP, or mixture of experts (its shared experts; the router `mixer.gate` is never a target).
    r"|mixer\.(?:q_proj|k_proj|v_proj|o_proj|in_proj|out_proj|up_proj|down_proj|shared_experts\.(?:up_proj|down_proj)))"
)
# The vision blocks of the families with a record, and of transformers 5's `visual.blocks` ViTs whose MLP is
# `fc1`/`fc2` (Qwen2-VL's), which no record names.
_VISION_TARGETS = "|".join(
    sorted({rf".*{re.escape(parts.vision_tower)}\.{parts.vision_lora_targets}" for parts in _PARTS})
    + [r".*visual\.blocks\.\d+\.mlp\.(?:fc1|fc2)"]
)


def component_of(name: str) -> str:
    """The component a parameter or module name belongs to."""
    if _MERGER.search(name) and not _PATCH_EMBEDDING.search(name):
        return MERGER
    if _VISUAL.search(name):
        return VISION_TOWER
    return LANGUAGE_MODEL


def check_model_parts(model: nn.Module) -> None:
    """Raise `ValueError` naming what is missing if a model without a family record lacks a vision tower, a projector
    or a language model under transformers 5's names (`VISION_TOWER_NAMES`, `PROJECTOR_NAMES`,
    `LANGUAGE_MODEL_NAMES`): its parts could not be frozen, given learning rates or LoRA targets; and if it has all
    three but no forward (`refuse_model_without_forward`)."""
    refuse_model_reading_no_images(model)
    if family_of_model(model) is not None:
        return
    names = [name for name, _ in model.named_modules()]
    searched = {
        "vision tower": (_VISUAL, (*VISION_TOWER_NAMES, "embed_vision.patch_dense")),
        "projector": (_MERGER_MODULE, PROJECTOR_NAMES),
        "language model": (_LANGUAGE_MODEL, (*LANGUAGE_MODEL_NAMES, CAUSAL_LM_DECODER)),
    }
    missing = [
        f"a {part} (a module named {' / '.join(f'`{n}`' for n in accepted)})"
        for part, (pattern, accepted) in searched.items()
        if not any(pattern.search(name) for name in names)
    ]
    if missing:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"{model_type}: vlsft finds the parts of a model it has no record for by transformers 5's module names, "
            f"and this model has no {'; no '.join(missing)}. Its parts cannot be frozen, given learning rates or "
            "LoRA targets; a record for the family in `vlsft.families.FAMILIES` says where they are."
        )
    refuse_model_without_forward(model)


# A forward parameter through which a model reads images: pixels, image features or patches.
_IMAGE_INPUT = re.compile(r"pixel|image|patches")


def refuse_model_reading_no_images(model: nn.Module) -> None:
    """Raise `ValueError` for a model that reads no images: its config holds no vision config and its forward takes
    no pixel, image or patch input. transformers lists some text-only classes among its image-text-to-text models
    (Mistral 4's `Mistral4ForCausalLM`): the images of its rows would have nothing to go through."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "vision_config", None) is not None:
        return
    if type(model).forward is nn.Module.forward:  # a whole Omni model: `refuse_model_without_forward` names its thinker
        return
    if any(_IMAGE_INPUT.search(name) for name in inspect.signature(type(model).forward).parameters):
        return
    raise ValueError(
        f"{config.model_type}: {type(model).__name__} reads no images (its config has no vision config and its "
        "forward takes no pixel values): vlsft trains vision-language models. Load the checkpoint's vision-language "
        "class where it has one (a Mistral 4 checkpoint that reads images is a `mistral3` one, "
        "Mistral3ForConditionalGeneration with a Mistral 4 language model), or train this model with a trainer for "
        "its own inputs (a text model with TRL's SFTTrainer)."
    )


def refuse_model_without_forward(model: nn.Module) -> None:
    """Raise `ValueError` for a model whose class has no forward (it only generates, through sub-models: Qwen3-Omni's
    whole model, thinker + talker), naming the sub-models that do have one, to train instead."""
    if type(model).forward is not nn.Module.forward:
        return
    trainable = [f"`{name}` ({type(child).__name__})" for name, child in model.named_children()
                 if type(child).forward is not nn.Module.forward and hasattr(child, "get_output_embeddings")]
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise ValueError(
        f"{model_type}: {type(model).__name__} has no forward to train (it only generates, through its sub-models). "
        f"Train the sub-model that reads text and images: {', '.join(trainable) or 'none found'}, e.g. "
        "`model.thinker` for Qwen3-Omni (load it with `Qwen3OmniMoeThinkerForConditionalGeneration`)."
    )


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


def lora_matches(targets: str | list[str], name: str) -> bool:
    """Whether PEFT adapts the module `name` for `target_modules` (a full-match regex, or name suffixes)."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers (FastVLM's FastViT tower has them). In training mode one would normalize by the
    statistics of the batch, so that a row's loss depends on the other rows of its batch (a batch of 2 is then not 2
    accumulated micro-batches of 1, and every rank normalizes differently) and overwrite the checkpoint's running
    statistics: the trainer runs them as at inference (`run_batch_norms_as_at_inference`)."""
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def run_batch_norms_as_at_inference(layers: list[nn.Module]) -> None:
    """Put `layers` (`batch_norm_layers`) in eval mode: they normalize by their running statistics and leave them
    unchanged. Called on every training step, after the Trainer put the whole model in training mode."""
    for layer in layers:
        layer.eval()
