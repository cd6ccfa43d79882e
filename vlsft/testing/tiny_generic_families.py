"""Every tiny model of a family trained on the generic exact path (`vlsft.testing.tiny_generic`,
`vlsft.testing.tiny_generic_aya`, `vlsft.testing.tiny_generic_molmo_ovis_minicpm`,
`vlsft.testing.tiny_generic_molmo_ovis_minicpm_llava`), by `config.model_type`."""

from __future__ import annotations

from vlsft.testing.tiny_generic import build_tiny_glm4v, build_tiny_internvl, build_tiny_lfm2_vl, build_tiny_mistral3
from vlsft.testing.tiny_generic_aya import build_tiny_aya_vision
from vlsft.testing.tiny_generic_molmo_ovis_minicpm import build_tiny_minicpmv4_6, build_tiny_molmo2, build_tiny_ovis2
from vlsft.testing.tiny_generic_molmo_ovis_minicpm_llava import build_tiny_llava_next_video, build_tiny_video_llava

GENERIC_BUILDERS = {
    "lfm2_vl": build_tiny_lfm2_vl,
    "glm4v": build_tiny_glm4v,
    "mistral3": build_tiny_mistral3,
    "internvl": build_tiny_internvl,
    "aya_vision": build_tiny_aya_vision,
    "ovis2": build_tiny_ovis2,
    "molmo2": build_tiny_molmo2,
    "minicpmv4_6": build_tiny_minicpmv4_6,
    "llava_next_video": build_tiny_llava_next_video,
    "video_llava": build_tiny_video_llava,
}
