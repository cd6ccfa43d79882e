"""What the token tensors of a collated batch mean, in one place for every module that reads them (collator, loss,
packing, distributed step shapes, validation, inspection).

A leaf module: it imports nothing of vlsft, so the loss, the collator and `distributed` (which the loss imports) can
all use it without an import cycle.
"""

from __future__ import annotations

import torch

# The label of a position the loss skips: a prompt, image or padding token, or a row's first token in a pack. The
# value is PyTorch's `cross_entropy` default `ignore_index`, which TRL and transformers use too.
IGNORE_INDEX = -100


def image_token_runs(is_image: torch.Tensor) -> list[int]:
    """The length of each run of consecutive True values in the 1-D mask `is_image`, in order.

    Where each image is one run of image tokens (Qwen-VL, Gemma 3, LLaVA-NeXT) these are the images' token counts;
    a tiled image (Idefics3, SmolVLM) is one run per tile.
    """
    is_image = is_image.reshape(-1).bool()
    starts = is_image.clone()
    starts[1:] &= ~is_image[:-1]
    run_of_token = torch.cumsum(starts.long(), 0)[is_image] - 1
    return torch.bincount(run_of_token, minlength=int(starts.sum())).tolist()
