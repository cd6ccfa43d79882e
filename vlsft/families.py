"""Every model family vlsft trains, one `Family` record each, in one table: `FAMILIES`.

A record holds all vlsft knows about a family: its templates (the stock one TRL ships, recognised by its text, and,
only where the stock template rewrites history the incremental-rendering rule cannot mask, vlsft's generation-marked
copy in `vlsft/templates/`), its processor and model types (how a family is found when the
template is a custom one), its tokens, how images expand, what its template cannot express, whether its videos are
collated, how packed rows get positions, and where its model keeps its parts (`ModelParts`). The modules that act on a
family read this table: `vlsft.templates` (rendering and checks), `vlsft.model_parts` (parts, freezing, LoRA targets),
the collator (tokens, expansion, videos), `vlsft.packing`.

A new family is one `Family` entry here (plus a `.jinja` training template in `vlsft/templates/` only if the rule
cannot mask its stock template), one tiny builder in
`vlsft.testing.tiny_families.FAMILY_BUILDERS` and one test (`tests/test_families.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

# Conversation features a stock template may be unable to express, as vlsft names them in errors.
FEATURES = {
    "tools": "tool definitions (`tools`)",
    "tool_calls": "assistant tool calls (`tool_calls`)",
    "tool_messages": "'tool' messages (tool responses)",
}


@dataclass(frozen=True)
class ModelParts:
    """Where one family's model keeps its parts, as dotted module names below the model's `model.`."""

    vision_tower: str
    mergers: tuple[str, ...]  # modules (or parameters) between the vision tower and the language model
    decoder_layers: str  # the language model's decoder layers
    vision_lora_targets: str  # regex, below `vision_tower`, of the ViT's attention and MLP Linear layers
    # The model's forward caps its logits with the text config's `final_logit_softcapping` (Gemma 4's does; Gemma 3's
    # conditional-generation head does not): the supervised loss must cap them the same way.
    caps_logits: bool = False


@dataclass(frozen=True)
class Family:
    """What vlsft needs to know about one VLM family: chat format, processor, tokens, media and model parts."""

    name: str
    display_name: str
    stock_template: str  # name of the stock template as TRL ships it (trl/chat_templates/<name>.jinja)
    # Our generation-marked file in vlsft/templates/, for a stock template that rewrites history or cannot express what
    # training needs (Gemma 4 inlines tool responses; the thinking templates' `reasoning_history: keep`). None: the
    # stock template itself, masked by the incremental-rendering rule (`vlsft.generic_masks`), as a copy that only
    # added markers would mask it.
    training_template: str | None
    processor_class: str  # the family's processor class, which finds the family when the template is a custom one
    model_types: tuple[str, ...]  # `config.model_type` of the family's models
    vision_tokens: tuple[str, ...]  # never supervised
    image_token: str  # the placeholder the template writes, one per image, that the processor expands
    end_of_turn: str  # must be supervised, so the model learns to stop
    parts: ModelParts  # where the model keeps its vision tower, mergers and decoder layers
    # The placeholder expands to n copies of itself: expand it on token ids (fast, exact: the copies are special tokens
    # that never merge with their neighbours). Otherwise its replacement text is tokenized in context.
    expand_on_ids: bool = False
    # Name of the per-token image map (1 on image tokens) the model takes, if any: Qwen's rope positions, Gemma 3's
    # bidirectional attention over each image.
    image_map_key: str | None = None
    unsupported: tuple[str, ...] = ()  # keys of FEATURES the stock template cannot express
    # Content item types (besides images) the template renders but vlsft does not collate yet: a row with one fails
    # by name instead of training on a placeholder with no features behind it.
    unsupported_media: tuple[str, ...] = ()
    # The processor and model take videos (`pixel_values_videos`, `video_grid_thw`) and vlsft collates them.
    video: bool = False
    # How the positions of packed rows are built ("mrope": Qwen's 3D rope, "1d"), for the families whose packed rows
    # are proven kept apart (tests/test_packing*.py); None where vlsft does not pack the family.
    packed_positions: str | None = None
    # (open, close) of a reasoning block inside an assistant turn, each one token of the family's tokenizer (Qwen3's
    # `<think>`, `</think>`): `reasoning_weight` scales the tokens from open to close, both included. None where the
    # family has no reasoning format.
    reasoning_markers: tuple[str, str] | None = None
    # The text that opens a reasoning block as the template writes it, when it is more than the open marker (Gemma 4:
    # `<|channel>thought\n`): how reasoning written inline in an assistant message is recognised.
    reasoning_opening: str | None = None


_NO_TOOLS = ("tools", "tool_calls", "tool_messages")

# -- Qwen-VL -------------------------------------------------------------------------------------------------------

_QWEN_VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Qwen3's reasoning block: the stock Qwen3-VL template renders it as written in the assistant content.
_QWEN3_THINK = ("<think>", "</think>")
_QWEN3_VL_VISION = r"blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:linear_fc1|linear_fc2))"
_QWEN2_5_VL_VISION = r"blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate_proj|up_proj|down_proj))"
# Qwen3-VL's DeepStack mergers (`visual.deepstack_merger_list`) feed intermediate vision features into early
# decoder layers.
_QWEN3_VL_PARTS = ModelParts(
    "visual", ("visual.merger", "visual.deepstack_merger_list"), "language_model.layers", _QWEN3_VL_VISION
)
_QWEN_TOKENS = dict(
    vision_tokens=_QWEN_VISION,
    image_token="<|image_pad|>",
    end_of_turn="<|im_end|>",
    expand_on_ids=True,
    image_map_key="mm_token_type_ids",
    video=True,
)


def _qwen3_vl(name: str, display_name: str, model_type: str) -> Family:
    # The MoE checkpoints ship the Qwen3-VL processor and template: same collation, same parts names.
    return Family(
        name=name, display_name=display_name, stock_template="qwen3_vl", training_template=None,
        processor_class="Qwen3VLProcessor", model_types=(model_type,), parts=_QWEN3_VL_PARTS,
        packed_positions="mrope", reasoning_markers=_QWEN3_THINK, **_QWEN_TOKENS,
    )


def _qwen3_5(name: str, display_name: str) -> Family:
    """A Qwen3.5-generation template (Qwen3.5 think / nothink, Qwen3.6, Qwen3.8). Every one of them serves the dense
    (`qwen3_5`) and the MoE (`qwen3_5_moe`) architecture with `Qwen3VLProcessor`; the templates differ in what they
    render (thinking default, preserved reasoning history, reasoning effort), not in how images are collated. Videos
    take Qwen3-VL's path (the same video processor, textual timestamps, and `mm_token_type_ids` 2 on video tokens).
    The model is Qwen3-VL's vision tower without DeepStack mergers."""
    return Family(
        name=name, display_name=display_name, stock_template=name, training_template=f"{name}_training.jinja",
        processor_class="Qwen3VLProcessor", model_types=("qwen3_5", "qwen3_5_moe"),
        parts=ModelParts("visual", ("visual.merger",), "language_model.layers", _QWEN3_VL_VISION),
        # Packed rows restart the linear-attention layers' state at every row (vlsft.packing.linear_attention).
        packed_positions="mrope", reasoning_markers=_QWEN3_THINK, **_QWEN_TOKENS,
    )


# -- SigLIP / CLIP towers ------------------------------------------------------------------------------------------

# SigLIP (Gemma 3, Idefics3, SmolVLM) and CLIP (LLaVA-NeXT) encoders name their layers alike.
_SIGLIP_CLIP_VISION = r"encoder\.layers\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|mlp\.(?:fc1|fc2))"
# Idefics3 / SmolVLM image text: the fake token around each tile, the global-image tag and the tile positions.
_IDEFICS_VISION = ("<fake_token_around_image>", "<image>", "<global-img>") + tuple(
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
)


def _idefics3_like(name: str, display_name: str, processor_class: str) -> Family:
    return Family(
        name=name, display_name=display_name, stock_template=name, training_template=None,
        processor_class=processor_class, model_types=(name,), vision_tokens=_IDEFICS_VISION, image_token="<image>",
        end_of_turn="<end_of_utterance>",
        parts=ModelParts("vision_model", ("connector",), "text_model.layers", _SIGLIP_CLIP_VISION),
        unsupported=_NO_TOOLS, packed_positions="1d",
    )


# -- Gemma 4 -------------------------------------------------------------------------------------------------------

# The vision encoder wraps each Linear in a `Gemma4ClippableLinear` (`.linear`); `embed_vision` projects the pooled
# vision features into the language model.
_GEMMA4_VISION = (
    r"encoder\.layers\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj))\.linear"
)


def _gemma4(name: str, display_name: str, marked: bool = True) -> Family:
    """One Gemma 4 stock template revision (recognised by exact text); all are collated alike. Images are `<|image|>`
    placeholders that the processor expands to `<|image>` + n soft tokens + `<image|>` (as text: the replacement is not
    only copies of the placeholder). Audio and video are not collated yet. `marked`: the revision needs vlsft's
    generation-marked copy (it inlines tool responses into the model turn, or renders reasoning); the release
    revision does neither, so the rule masks its stock template."""
    return Family(
        name=name, display_name=display_name, stock_template=name,
        training_template=f"{name}_training.jinja" if marked else None,
        processor_class="Gemma4Processor", model_types=("gemma4",),
        vision_tokens=("<|image>", "<|image|>", "<image|>", "<|video|>", "<|audio>", "<|audio|>", "<audio|>"),
        image_token="<|image|>", end_of_turn="<turn|>", image_map_key="mm_token_type_ids",
        parts=ModelParts("vision_tower", ("embed_vision",), "language_model.layers", _GEMMA4_VISION, caps_logits=True),
        unsupported_media=("audio", "input_audio", "video"),
        reasoning_markers=("<|channel>", "<channel|>"), reasoning_opening="<|channel>thought\n",
    )


_FAMILY_LIST = [
    _qwen3_vl("qwen3_vl", "Qwen3-VL", "qwen3_vl"),
    _qwen3_vl("qwen3_vl_moe", "Qwen3-VL-MoE", "qwen3_vl_moe"),
    Family(
        name="qwen2_5_vl", display_name="Qwen2.5-VL", stock_template="qwen2_5_vl",
        training_template=None, processor_class="Qwen2_5_VLProcessor",
        model_types=("qwen2_5_vl",),
        parts=ModelParts("visual", ("visual.merger",), "language_model.layers", _QWEN2_5_VL_VISION),
        unsupported=_NO_TOOLS, packed_positions="mrope", **_QWEN_TOKENS,
    ),
    Family(
        name="gemma3", display_name="Gemma 3", stock_template="gemma3", training_template=None,
        processor_class="Gemma3Processor", model_types=("gemma3",),
        vision_tokens=("<start_of_image>", "<image_soft_token>", "<end_of_image>"), image_token="<start_of_image>",
        end_of_turn="<end_of_turn>", image_map_key="token_type_ids",
        parts=ModelParts("vision_tower", ("multi_modal_projector",), "language_model.layers", _SIGLIP_CLIP_VISION),
        unsupported=_NO_TOOLS,
    ),
    _idefics3_like("idefics3", "Idefics3", "Idefics3Processor"),
    _idefics3_like("smolvlm", "SmolVLM", "SmolVLMProcessor"),
    Family(
        name="llava_next", display_name="LLaVA-NeXT", stock_template="llava_next",
        training_template=None, processor_class="LlavaNextProcessor",
        model_types=("llava_next",), vision_tokens=("<image>",), image_token="<image>", end_of_turn="</s>",
        # `image_newline` is LLaVA-NeXT's learned separator between image rows: a merger that is a bare parameter.
        parts=ModelParts(
            "vision_tower", ("multi_modal_projector", "image_newline"), "language_model.layers", _SIGLIP_CLIP_VISION
        ),
        expand_on_ids=True, unsupported=_NO_TOOLS, packed_positions="1d",
    ),
    # One entry per Gemma 4 stock template revision TRL ships, newest first.
    _gemma4("gemma4_v5", "Gemma 4 (current template)"),
    _gemma4("gemma4_v4", "Gemma 4 (template 905e84b)"),
    _gemma4("gemma4", "Gemma 4 (template 6b7e72c)"),
    _gemma4("gemma4_v3", "Gemma 4 (template b446025)"),
    _gemma4("gemma4_v2", "Gemma 4 (release template 4742fe8)", marked=False),
    _qwen3_5("qwen3_5_think", "Qwen3.5 (thinking)"),
    _qwen3_5("qwen3_5_nothink", "Qwen3.5 (non-thinking)"),
    _qwen3_5("qwen3_6", "Qwen3.6"),
    _qwen3_5("qwen3_8", "Qwen3.8"),
]
FAMILIES: dict[str, Family] = {family.name: family for family in _FAMILY_LIST}

# The Qwen3.5-generation templates (one model architecture, several template generations).
QWEN3_5_FAMILIES = tuple(name for name, family in FAMILIES.items() if "qwen3_5" in family.model_types)


def family_of_processor(processor) -> str | None:
    """The family whose processor class `processor` is (for a custom template on a known model), or None."""
    name = type(processor).__name__
    return next((family.name for family in FAMILIES.values() if family.processor_class == name), None)


def family_of_model(model) -> str | None:
    """The family of a model (or PEFT / wrapped model) from its `config.model_type`, or None."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    return next((family.name for family in FAMILIES.values() if model_type in family.model_types), None)
