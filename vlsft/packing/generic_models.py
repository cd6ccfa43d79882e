"""Which models without a family record (the generic path) pack, and with which positions: decided from the model's
text config, since a processor says nothing of the language model behind it.

Packed rows are kept apart as for the families with a record (`vlsft.packing`): each row's own positions, the rows'
boundaries handed to the text model, the first token of each row unsupervised. That holds only in a language model
whose sole mixing across tokens is attention (full or sliding-window), with positions vlsft can give each row as it
gets them alone:
- plain 1D rope (or none): positions restarting at 0 per row ("1d");
- GLM-4.1V's 3D rope (`mrope_section`): the model's own `get_rope_index` on each row alone, under a first row of text
  positions, the Qwen-VL families' `[4, 1, total]` layout ("mrope"), which GLM-4.1V's text model takes the same way;
- a layer that carries a state along the sequence (LFM2's short convolutions, a recurrent or linear-attention layer)
  would run from one row into the next: refused, naming the layer type;
- 3D rope in another text model, or any text model type not in `GENERIC_PACKABLE_TEXT_MODELS`, is refused until a
  test proves its rows kept apart.
"""

from __future__ import annotations

# Text model types whose packed rows are proven kept apart on the generic path (tests/test_packing_generic.py, on a
# tiny model of the family named in the comment), and their position scheme.
GENERIC_PACKABLE_TEXT_MODELS = {
    "qwen2": "1d",  # InternVL3 / 3.5
    "qwen3": "1d",  # InternVL3.5
    "mistral": "1d",  # Mistral 3 (its `sliding_window`, where set, is kept by transformers' packed mask)
    "cohere2": "1d",  # Aya Vision: sliding-window layers with rope, full layers without
    "glm4v_text": "mrope",  # GLM-4.1V: 3D rope from the model's own `get_rope_index`, per row
}
# Layer types that mix tokens by attention only: the rows' boundaries (or transformers' packed mask) keep them apart.
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")


def _rope_parameter_sets(text_config) -> list[dict]:
    """The rope parameters of `text_config`: one dict, or one per layer type (Gemma-style configs)."""
    rope = getattr(text_config, "rope_parameters", None) or {}
    if all(isinstance(value, dict) for value in rope.values()) and rope:
        return list(rope.values())
    return [rope]


def generic_packing_refusal(config) -> str | None:
    """Why the packed rows of a model with `config` could not be kept apart on the generic path, or None."""
    text_config = config.get_text_config()
    model_type = getattr(text_config, "model_type", None)
    layer_types = getattr(text_config, "layer_types", None) or ()
    stateful = sorted({kind for kind in layer_types if kind not in ATTENTION_LAYER_TYPES})
    if stateful:
        return (
            f"its language model ({model_type!r}) has {', '.join(repr(kind) for kind in stateful)} layers, which carry "
            "a state along the sequence (a short convolution's last tokens, a recurrent state) from one row into the "
            "next inside a pack"
        )
    three_d = any("mrope_section" in rope for rope in _rope_parameter_sets(text_config))
    if three_d and GENERIC_PACKABLE_TEXT_MODELS.get(model_type) != "mrope":
        return (
            f"its language model ({model_type!r}) takes 3D rope positions (`mrope_section`) that the model's own "
            "`get_rope_index` computes over the whole sequence, and no test proves them given per row for this model"
        )
    if model_type not in GENERIC_PACKABLE_TEXT_MODELS:
        return (
            f"its language model type {model_type!r} is not among those proven to keep packed rows apart on the "
            f"generic path ({', '.join(GENERIC_PACKABLE_TEXT_MODELS)})"
        )
    return None


def check_generic_model_packs(config, display_name: str) -> str:
    """The position scheme ("1d" or "mrope") of the packed rows of `display_name`'s model (with `config`), or a
    ValueError naming the reason and the fix when they could not be kept apart on the generic path."""
    reason = generic_packing_refusal(config)
    if reason is not None:
        raise ValueError(
            f"packing is not supported for this {display_name} model: {reason}. Set `packing: false` (and "
            "`padding_free: false`)."
        )
    return GENERIC_PACKABLE_TEXT_MODELS[config.get_text_config().model_type]
