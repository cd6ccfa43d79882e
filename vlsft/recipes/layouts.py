"""The layouts a recipe can name (`layout.strategy`): one accelerate config each, shipped as package data in
`vlsft/configs/` (the repository's top-level `configs/` is a link to the same files), so `pip install vlsft` has them
and `vlsft train` finds them wherever it runs. The DeepSpeed layouts also name their DeepSpeed JSON, which holds every
DeepSpeed setting (batch sizes, clipping and precision "auto", filled from the recipe's training section).
"""

from __future__ import annotations

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
LAYOUTS = {
    "single_gpu": "single_gpu.yaml",
    "cpu": "cpu.yaml",
    "ddp": "ddp.yaml",
    "zero2": "zero2.yaml",
    "zero3": "zero3.yaml",
    "zero3_offload": "zero3_offload.yaml",
    "fsdp2": "fsdp2.yaml",
}
DEEPSPEED_LAYOUTS = {"zero2": "ds_zero2.json", "zero3": "ds_zero3.json", "zero3_offload": "ds_zero3_offload.json"}
# Layouts that run one process; the others are launched with `accelerate launch`.
SINGLE_PROCESS_LAYOUTS = ("single_gpu", "cpu")


def accelerate_config(strategy: str) -> Path:
    return CONFIGS_DIR / LAYOUTS[strategy]


def deepspeed_config(strategy: str) -> Path | None:
    name = DEEPSPEED_LAYOUTS.get(strategy)
    return CONFIGS_DIR / name if name else None
