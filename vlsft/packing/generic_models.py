"""Which models without a family record (the generic path) pack: decided from the model's text config, since a
processor says nothing of the language model behind it.

The generic path packs with the "1d" scheme (`vlsft.packing`): positions restarting at 0 per row, the rows' boundaries
handed to the text model, the first token of each row unsupervised. That keeps rows apart only in a language model
whose sole mixing across tokens is attention (full or sliding-window) and whose positions are plain 1D rope (or none):
- a layer that carries a state along the sequence (LFM2's short convolutions, a recurrent or linear-attention layer)
  would run from one row into the next: refused, naming the layer type;
- 3D rope positions (GLM-4.1V's `mrope_section`, computed by the model's `get_rope_index` over the whole sequence)
  are not what a row gets alone from 1D positions: refused;
- any other text model type is refused until a test proves its rows kept apart (`GENERIC_PACKABLE_TEXT_MODELS`).
"""

from __future__ import annotations

# Text model types whose packed rows are proven kept apart on the generic path (tests/test_packing_generic.py, on a
# tiny model of the family named): plain 1D rope, attention layers only.
GENERIC_PACKABLE_TEXT_MODELS = {
    "qwen2": "InternVL3 / 3.5's Qwen2 language model",
    "qwen3": "InternVL3.5's Qwen3 language model",
    "mistral": "Mistral 3's Mistral language model",
    "cohere2": "Aya Vision's Cohere2 language model (sliding-window layers with rope, full layers without)",
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
    stateful = sorted({kind for kind in getattr(text_config, "layer_types", None) or () if kind not in ATTENTION_LAYER_TYPES})
    if stateful:
        return (
            f"its language model ({model_type!r}) has {', '.join(repr(kind) for kind in stateful)} layers, which carry "
            "a state along the sequence (a short convolution's last tokens, a recurrent state) from one row into the "
            "next inside a pack"
        )
    if any("mrope_section" in rope for rope in _rope_parameter_sets(text_config)):
        return (
            f"its language model ({model_type!r}) takes 3D rope positions (`mrope_section`) that the model's own "
            "`get_rope_index` computes over the whole sequence, while the generic path gives packed rows 1D positions"
        )
    if model_type not in GENERIC_PACKABLE_TEXT_MODELS:
        return (
            f"its language model type {model_type!r} is not among those proven to keep packed rows apart on the generic "
            f"path ({', '.join(GENERIC_PACKABLE_TEXT_MODELS)})"
        )
    return None


def check_generic_model_packs(config, display_name: str) -> None:
    """Raise a ValueError, naming the reason and the fix, when the packed rows of `display_name`'s model (with
    `config`) could not be kept apart on the generic path."""
    reason = generic_packing_refusal(config)
    if reason is not None:
        raise ValueError(
            f"packing is not supported for this {display_name} model: {reason}. Set `packing: false` (and "
            "`padding_free: false`)."
        )
