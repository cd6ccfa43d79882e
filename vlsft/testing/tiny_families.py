"""Tiny, randomly initialised models of every VLM family vlsft supports, built without any download, by family name.

Each builder returns `(model, processor)`: the family's real model class with a 2-layer language model and a small
vision tower, and the family's real processor class with the stock chat template (as TRL ships it). The tokenizer is
the family's real tokenizer class, trained in-process on a small vocabulary with the family's special tokens
(`vlsft.testing.tiny_tokenizers`). The builders live by architecture: `tiny_qwen3_vl`, `tiny_qwen` (Qwen2.5-VL,
Qwen3-VL-MoE, Qwen3.5), `tiny_gemma`, `tiny_idefics_llava`.

`build_tiny(family)` builds any of them; `FAMILY_BUILDERS` lists them, keyed like `vlsft.families.FAMILIES` (every
family has one; `qwen3_5_moe` is the MoE architecture of the Qwen3.5 templates).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from vlsft.families import FAMILIES, QWEN3_5_FAMILIES
from vlsft.testing.tiny_gemma import build_tiny_gemma3, build_tiny_gemma4
from vlsft.testing.tiny_idefics_llava import build_tiny_idefics3, build_tiny_llava_next, build_tiny_smolvlm
from vlsft.testing.tiny_qwen import build_tiny_qwen2_5_vl, build_tiny_qwen3_5, build_tiny_qwen3_vl_moe
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

GEMMA4_REVISIONS = tuple(name for name, family in FAMILIES.items() if "gemma4" in family.model_types)

FAMILY_BUILDERS: dict[str, Callable] = {
    "qwen3_vl": build_tiny_qwen3_vl,
    "qwen3_vl_moe": build_tiny_qwen3_vl_moe,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "gemma3": build_tiny_gemma3,
    # One builder per Gemma 4 template revision: the same model, the processor carrying that revision's template.
    **{revision: partial(build_tiny_gemma4, template=revision) for revision in GEMMA4_REVISIONS},
    "idefics3": build_tiny_idefics3,
    "smolvlm": build_tiny_smolvlm,
    "llava_next": build_tiny_llava_next,
    # One builder per Qwen3.5-generation template; the dense architecture unless `moe=True`.
    **{name: partial(build_tiny_qwen3_5, template=name) for name in QWEN3_5_FAMILIES},
    "qwen3_5_moe": partial(build_tiny_qwen3_5, template="qwen3_5_think", moe=True),
}


def build_tiny(family: str, seed: int = 0, **kwargs):
    """`(model, processor)` of a tiny random model of `family` (a key of `FAMILY_BUILDERS`)."""
    if family not in FAMILY_BUILDERS:
        raise ValueError(f"No tiny builder for family {family!r}; known: {', '.join(FAMILY_BUILDERS)}.")
    return FAMILY_BUILDERS[family](seed=seed, **kwargs)
