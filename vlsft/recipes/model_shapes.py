"""A recipe's model built on the meta device (no weights, no memory), for the dry run's parameter counts and memory
estimate.

The config comes from a registered local model, a local directory, or the Hugging Face cache (never downloaded by a
dry run). For the checkpoints that the single-GPU memory recipes name, whose config may not be cached, the published
shapes are built in (`PUBLISHED_SHAPES`: the `config.json` values that decide parameter counts and activation sizes),
so `vlsft train --dry-run` on those recipes gives counts and an estimate on a machine that has never seen the Hub.
"""

from __future__ import annotations

import os

from vlsft.recipes.registry import build_local_model, is_local_model
from vlsft.recipes.schema import Recipe

# config class name -> {Hub id: keyword arguments}. Hub ids are matched case-insensitively, also the -Instruct /
# -Base variants of the same shapes.
PUBLISHED_SHAPES = {
    "Qwen3VLConfig": {
        "qwen/qwen3-vl-8b-instruct": dict(
            text_config=dict(
                vocab_size=151_936, hidden_size=4096, intermediate_size=12_288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128,
            ),
            vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, out_hidden_size=4096),
            tie_word_embeddings=False,
        ),
    },
    "Qwen3_5Config": {
        # Qwen3.5-9B: transformers' Qwen3_5Config defaults are its text shapes (24 GatedDeltaNet + 8 attention layers).
        "qwen/qwen3.5-9b": dict(vision_config=dict(out_hidden_size=4096), tie_word_embeddings=False),
    },
}  # fmt: skip
_ALIASES = {"qwen/qwen3-vl-8b-thinking": "qwen/qwen3-vl-8b-instruct", "qwen/qwen3.5-9b-base": "qwen/qwen3.5-9b"}


def published_config(name: str):
    """The built-in config of a Hub id in `PUBLISHED_SHAPES`, or None."""
    import transformers

    key = _ALIASES.get(name.lower(), name.lower())
    for class_name, shapes in PUBLISHED_SHAPES.items():
        if key in shapes:
            return getattr(transformers, class_name)(**shapes[key])
    return None


def meta_model(recipe: Recipe):
    """(model on the meta device, where its config came from), or (None, why not)."""
    import torch

    spec = recipe.model
    if is_local_model(spec.name_or_path):
        try:
            model, _ = build_local_model(spec.name_or_path, spec.tiny, meta=True)
        except Exception as error:  # e.g. `model.tiny` keyword arguments the builder does not take
            return None, f"the local model could not be built ({type(error).__name__}: {error})"
        return model, "built locally"
    from transformers import AutoConfig, AutoModelForImageTextToText

    name = spec.name_or_path
    try:
        config = AutoConfig.from_pretrained(
            name, revision=spec.revision, trust_remote_code=spec.trust_remote_code, local_files_only=not os.path.isdir(name)
        )
        source = "config read offline"
    except Exception as error:  # offline without a cached config, a custom architecture, ...
        config = published_config(name)
        if config is None:
            return None, f"the model config is not available offline ({type(error).__name__})"
        source = "built-in published shapes"
    try:
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config, trust_remote_code=spec.trust_remote_code)
    except Exception as error:
        return None, f"the model could not be built from its config ({type(error).__name__})"
    return model, source
