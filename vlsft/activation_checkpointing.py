"""`activation_checkpointing_kwargs` (alias `gradient_checkpointing_kwargs`): checked before anything loads.

transformers 5.23's `Trainer` pops two keys of that dict itself and hands them to
`PreTrainedModel.activation_checkpointing_enable(every_n_layers=..., offload=...)`
(transformers/trainer.py, "Activate activation checkpointing"; transformers/modeling_utils.py):
- `every_n_layers` (int >= 1): only every n-th decoder layer (`GradientCheckpointingLayer`) is checkpointed; the
  others keep their activations. `1` checkpoints every layer. `0` would fail with a ZeroDivisionError only once the
  model is built, a negative value silently checkpoints a different set of layers.
- `offload` (bool): each checkpointed layer runs under `torch.autograd.graph.save_on_cpu(pin_memory=True)`, so the
  tensors a checkpoint keeps for its recompute (the layer inputs, `layers x tokens x hidden`) wait in pinned host
  memory instead of on the GPU. On a CPU run there is no device to free; it changes nothing but costs copies.
Every other key goes to `torch.utils.checkpoint.checkpoint`; TRL reads `selective` (selective activation
checkpointing). Recipes reach these through `training.activation_checkpointing_kwargs`.
"""

from __future__ import annotations

import difflib
from typing import Any

# torch.utils.checkpoint.checkpoint's own keyword arguments that a recipe can write (plain values), and TRL's.
_BOOLEAN_KEYS = ("offload", "use_reentrant", "preserve_rng_state", "debug", "selective")
_STRING_KEYS = {"determinism_check": ("default", "none")}
KNOWN_KEYS = ("every_n_layers",) + _BOOLEAN_KEYS + tuple(_STRING_KEYS)


def check_checkpointing_kwargs(kwargs: Any, field_name: str = "activation_checkpointing_kwargs") -> list[str]:
    """The problems of a checkpointing kwargs dict (empty when it is fine), each naming the key and the fix."""
    if kwargs is None:
        return []
    if not isinstance(kwargs, dict):
        return [f"`{field_name}` must be a mapping such as {{offload: true, every_n_layers: 2}}, got {kwargs!r}"]
    problems = []
    for key, value in kwargs.items():
        where = f"`{field_name}.{key}`"
        if key == "every_n_layers":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{where} must be an integer >= 1 (1 checkpoints every layer), got {value!r}")
        elif key in _BOOLEAN_KEYS:
            if not isinstance(value, bool):
                problems.append(f"{where} must be true or false, got {value!r}")
        elif key in _STRING_KEYS:
            if value not in _STRING_KEYS[key]:
                problems.append(f"{where} must be one of {', '.join(_STRING_KEYS[key])}, got {value!r}")
        else:
            close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(KNOWN_KEYS)}"
            problems.append(f"unknown key {where} ({hint})")
    return problems


def checkpointing_plan(enabled: bool, kwargs: dict | None) -> tuple[int, bool]:
    """(every_n_layers, offload) a run uses: (0, False) when checkpointing is off."""
    if not enabled:
        return 0, False
    kwargs = kwargs or {}
    return int(kwargs.get("every_n_layers", 1)), bool(kwargs.get("offload", False))
