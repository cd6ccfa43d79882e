"""Every tiny model of a family trained on the generic exact path (`vlsft.testing.tiny_generic`,
`vlsft.testing.tiny_generic_aya`, `vlsft.testing.tiny_generic_gemma3n_idefics2`), by `config.model_type`."""

from __future__ import annotations

from vlsft.testing.tiny_generic import build_tiny_glm4v, build_tiny_internvl, build_tiny_lfm2_vl, build_tiny_mistral3
from vlsft.testing.tiny_generic_aya import build_tiny_aya_vision
from vlsft.testing.tiny_generic_gemma3n_idefics2 import build_tiny_gemma3n, build_tiny_idefics2

GENERIC_BUILDERS = {
    "lfm2_vl": build_tiny_lfm2_vl,
    "glm4v": build_tiny_glm4v,
    "mistral3": build_tiny_mistral3,
    "internvl": build_tiny_internvl,
    "aya_vision": build_tiny_aya_vision,
    "gemma3n": build_tiny_gemma3n,
    "idefics2": build_tiny_idefics2,
}
