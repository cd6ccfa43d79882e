"""The dummy vision pass: a family's vision tower and merger run on the smallest image input they take.

A rank whose micro-batch lacks a modality that another rank has runs this instead (`vlsft.distributed`), so that it
calls the same modules as the other ranks (under ZeRO-3 each call gathers the module's parameters with a collective)
and gives a gradient to the same parameters. It calls the code a real image goes through, with the model's own
arguments, so the modules run and the parameters used are those of a real image:

- the Qwen-VL families (Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5): `visual(patches, grid_thw)` on one merged token;
- Gemma 3: `get_image_features` on one image of the tower's fixed size;
- Gemma 4: `get_image_features` on one pooling window of patches (one soft token), with its patch positions;
- Idefics3 / SmolVLM: `get_image_features` on one tile, with its pixel mask;
- LLaVA-NeXT: `get_image_features` on one image of the tower's size: its any-resolution tiles, projected, unpadded
  and packed with the learned `image_newline`.

Each returns the sum of the features the model feeds to its language model. These families collate images only
(`Family.video` is set for the Qwen-VL ones), so a video's dummy pass is Qwen-VL's, the same tower call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _summed(features) -> torch.Tensor:
    """The sum of a feature tensor or of a list of them (one per image), in float32."""
    if isinstance(features, torch.Tensor):
        return features.float().sum()
    return sum(feature.float().sum() for feature in features)


def _is_qwen_vl(model: nn.Module) -> bool:
    """A `visual` tower called as `visual(patches, grid_thw)` on flattened patches, whose size the vision config
    gives."""
    vision_config = getattr(model.config, "vision_config", None)
    return hasattr(model.base_model, "visual") and all(
        hasattr(vision_config, key) for key in ("patch_size", "temporal_patch_size", "spatial_merge_size")
    )


def _qwen_vl(model: nn.Module, device: torch.device) -> torch.Tensor:
    """One merged token of zero pixels; the merged features and, for Qwen3-VL, the DeepStack features."""
    visual = model.base_model.visual
    config = model.config.vision_config
    merge = config.spatial_merge_size
    channels = getattr(config, "in_channels", getattr(config, "in_chans", 3))
    patch_dim = channels * config.temporal_patch_size * config.patch_size**2
    grid = torch.tensor([[1, merge, merge]], dtype=torch.long, device=device)
    patches = torch.zeros(merge * merge, patch_dim, dtype=visual.dtype, device=device)
    output = visual(patches, grid_thw=grid)
    if isinstance(output, torch.Tensor):
        return _summed(output)
    return _summed([output.pooler_output, *(getattr(output, "deepstack_features", None) or [])])


def _square_image(model: nn.Module, device: torch.device, *leading: int) -> torch.Tensor:
    """Zero pixels of one image of the vision tower's own size, `[*leading, channels, size, size]`."""
    config = model.config.vision_config
    size = config.image_size
    return torch.zeros(*leading, config.num_channels, size, size, dtype=model.base_model.dtype, device=device)


def _gemma3(model: nn.Module, device: torch.device) -> torch.Tensor:
    return _summed(model.base_model.get_image_features(_square_image(model, device, 1)).pooler_output)


def _gemma4(model: nn.Module, device: torch.device) -> torch.Tensor:
    """One pooling window of `k x k` patches (pooled to one soft token), positions (x, y) in row order as the image
    processor writes them."""
    config = model.config.vision_config
    kernel, patch = config.pooling_kernel_size, config.patch_size
    positions = [[x, y] for y in range(kernel) for x in range(kernel)]
    position_ids = torch.tensor([positions], dtype=torch.long, device=device)
    pixels = torch.zeros(1, kernel * kernel, 3 * patch * patch, dtype=model.base_model.dtype, device=device)
    return _summed(model.base_model.get_image_features(pixels, position_ids).pooler_output)


def _idefics3(model: nn.Module, device: torch.device) -> torch.Tensor:
    """One tile; of ones, because `get_image_features` drops all-zero tiles as the processor's padding."""
    pixels = _square_image(model, device, 1, 1) + 1
    mask = torch.ones(pixels.shape[:2] + pixels.shape[-2:], dtype=torch.bool, device=device)
    return _summed(model.base_model.get_image_features(pixels, mask).pooler_output)


def _llava_next(model: nn.Module, device: torch.device) -> torch.Tensor:
    """One image of the tower's size, cut into as many any-resolution tiles as the model expects for that size."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    size = model.config.vision_config.image_size
    tiles = image_size_to_num_patches((size, size), model.config.image_grid_pinpoints, size)
    image_sizes = torch.tensor([[size, size]], dtype=torch.long, device=device)
    pixels = _square_image(model, device, 1, tiles)
    return _summed(model.base_model.get_image_features(pixels, image_sizes).pooler_output)


# By `config.model_type`, the families whose image path is not Qwen-VL's `visual(patches, grid_thw)`.
_IMAGE_FEATURE_PASSES: dict[str, Callable[[nn.Module, torch.device], torch.Tensor]] = {
    "gemma3": _gemma3,
    "gemma4": _gemma4,
    "idefics3": _idefics3,
    "smolvlm": _idefics3,
    "llava_next": _llava_next,
}


def dummy_vision_pass(model: nn.Module) -> Callable[[nn.Module, torch.device], torch.Tensor] | None:
    """The function that runs `model`'s dummy vision pass (`pass(model, device)` returns its summed features), or
    None where vlsft has none for the model."""
    if _is_qwen_vl(model):
        return _qwen_vl
    return _IMAGE_FEATURE_PASSES.get(getattr(model.config, "model_type", None))
