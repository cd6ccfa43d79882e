"""Floating-point model inputs raised to the model's precision.

Some image processors return pixel values in a lower precision than a model trained in float32: Llama 4's always
returns bfloat16 (its checkpoints run in bfloat16), and its vision tower's first Linear then fails on the mixed
dtypes. Raising them is exact (every bfloat16 or float16 value is a float32 value); an input already as precise as
the model is left as the processor made it, so no family's inputs change otherwise (under autocast the layers cast
as before).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def model_float_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (its weights' precision), or None."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def raise_input_precision(inputs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """`inputs` with each floating-point tensor of lower precision than the model's weights cast up to it."""
    dtype = model_float_dtype(model)
    if dtype is None:
        return inputs
    bits = torch.finfo(dtype).bits

    def raised(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and torch.finfo(value.dtype).bits < bits:
            return value.to(dtype)
        return value

    return {key: raised(value) for key, value in inputs.items()}
