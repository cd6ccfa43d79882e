"""Models and datasets that a recipe names instead of a Hub id or a path, because they are built on this machine:
the tiny random models and the demo data of `vlsft.testing`.

They are registered by import path ("module:function"), so neither this module nor the core imports `vlsft.testing`
until a recipe names one of them: `import vlsft` and a run on a real model load no fixture. Register your own with
`register_model` / `register_dataset` before loading a recipe.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

# name -> "module:function" returning `(model, processor)` for the recipe's `model.tiny` keyword arguments.
LOCAL_MODELS: dict[str, str] = {
    "tiny-qwen3-vl": "vlsft.testing.tiny_qwen3_vl:build_tiny_qwen3_vl",
    "tiny-qwen3-vl-moe": "vlsft.testing.tiny_qwen:build_tiny_qwen3_vl_moe",
    "tiny-qwen2.5-vl": "vlsft.testing.tiny_qwen:build_tiny_qwen2_5_vl",
    "tiny-qwen3.5": "vlsft.testing.tiny_qwen:build_tiny_qwen3_5",
    "tiny-gemma3": "vlsft.testing.tiny_gemma:build_tiny_gemma3",
    "tiny-gemma4": "vlsft.testing.tiny_gemma:build_tiny_gemma4",
    "tiny-idefics3": "vlsft.testing.tiny_idefics_llava:build_tiny_idefics3",
    "tiny-smolvlm": "vlsft.testing.tiny_idefics_llava:build_tiny_smolvlm",
    "tiny-llava-next": "vlsft.testing.tiny_idefics_llava:build_tiny_llava_next",
}

# name -> "module:function" returning a `datasets.Dataset` for `(split=..., rows=..., seed=..., cache_dir=...)`.
# These datasets are generated, so a source that names one must say how many rows it wants.
LOCAL_DATASETS: dict[str, str] = {
    "demo-shapes": "vlsft.testing.demo_data:load_demo_split",
}


def register_model(name: str, builder: str | Callable[..., tuple[Any, Any]]) -> None:
    """Let recipes name `name` as `model.name_or_path`: `builder(**model.tiny)` returns `(model, processor)`."""
    LOCAL_MODELS[name] = builder


def register_dataset(name: str, loader: str | Callable[..., Any]) -> None:
    """Let recipes name `name` as a data source path: `loader(split=, rows=, seed=, cache_dir=)` returns a Dataset."""
    LOCAL_DATASETS[name] = loader


def is_local_model(name: str) -> bool:
    return name in LOCAL_MODELS


def is_local_dataset(path: str) -> bool:
    return path in LOCAL_DATASETS


def _resolve(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def build_local_model(name: str, kwargs: dict[str, Any] | None = None, meta: bool = False):
    """`(model, processor)` of a registered model. `meta=True` builds the model on the meta device (no weights, no
    memory): for its processor alone, or to count its parameters."""
    builder = _resolve(LOCAL_MODELS[name])
    if not meta:
        return builder(**(kwargs or {}))
    import torch

    with torch.device("meta"):
        return builder(**(kwargs or {}))


def load_local_dataset(path: str, split: str, rows: int, seed: int, cache_dir: str | None):
    return _resolve(LOCAL_DATASETS[path])(split=split, rows=rows, seed=seed, cache_dir=cache_dir)
