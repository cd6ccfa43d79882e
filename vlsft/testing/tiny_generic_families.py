"""Every tiny model of a family trained on the generic exact path (the `vlsft.testing.tiny_generic*` modules), by
`config.model_type`."""

from __future__ import annotations

from vlsft.testing.tiny_generic import build_tiny_internvl, build_tiny_lfm2_vl, build_tiny_mistral3
from vlsft.testing.tiny_generic_aya import build_tiny_aya_vision
from vlsft.testing.tiny_generic_chameleon_emu_dots import build_tiny_cohere_compass, build_tiny_dots3_note
from vlsft.testing.tiny_generic_cohere_lfm3_plm import (
    build_tiny_cohere2_vision,
    build_tiny_lfm3_vl,
    build_tiny_perception_lm,
)
from vlsft.testing.tiny_generic_llama4_muse import build_tiny_llama4, build_tiny_muse_glimmer
from vlsft.testing.tiny_generic_molmo_ovis_minicpm import build_tiny_minicpmv4_6, build_tiny_molmo2, build_tiny_ovis2
from vlsft.testing.tiny_generic_molmo_ovis_minicpm_llava import build_tiny_llava_next_video, build_tiny_video_llava
from vlsft.testing.tiny_generic_llava import build_tiny_llava, build_tiny_llava_onevision, build_tiny_vipllava
from vlsft.testing.tiny_generic_qwen2_glm import build_tiny_glm4v, build_tiny_glm4v_moe, build_tiny_glm46v
from vlsft.testing.tiny_generic_gemma3n_idefics2 import build_tiny_gemma3n, build_tiny_idefics2
from vlsft.testing.tiny_generic_hunyuan_ernie_granite import build_tiny_granite4_vision, build_tiny_hunyuan_vl
from vlsft.testing.tiny_generic_janus_deepseek import (
    build_tiny_deepseek_vl,
    build_tiny_deepseek_vl_hybrid,
    build_tiny_janus,
)
from vlsft.testing.tiny_generic_omni_qwen4 import (
    build_tiny_cosmos3_omni,
    build_tiny_glmga,
    build_tiny_qwen2_5_omni_thinker,
    build_tiny_qwen4_exp,
)
from vlsft.testing.tiny_generic_mistral_gemma_glm5 import build_tiny_glm5_next, build_tiny_mistral_large4
from vlsft.testing.tiny_generic_muse_spark import build_tiny_muse_spark
from vlsft.testing.tiny_generic_phi4_ernie import build_tiny_phi4_multimodal
from vlsft.testing.tiny_generic_mllama_aria import build_tiny_aria, build_tiny_mllama
from vlsft.testing.tiny_generic_minicpm47_ocr import (
    build_tiny_fast_vlm,
    build_tiny_lighton_ocr,
    build_tiny_minicpmv4_7,
)
from vlsft.testing.tiny_generic_ocr import (
    build_tiny_deepseek_ocr2,
    build_tiny_glm_ocr,
    build_tiny_minicpm_ocr,
    build_tiny_qianfan_ocr,
    build_tiny_unlimited_ocr,
)
from vlsft.testing.tiny_generic_clova_inkling import (
    build_tiny_hyperclovax_vision_v2,
    build_tiny_inkling2,
    build_tiny_minimax_m3_vl,
    build_tiny_nemotron_h_omni,
)
from vlsft.testing.tiny_generic_kimi_step_exaone import (
    build_tiny_exaone4_5,
    build_tiny_kimi_k25,
    build_tiny_qwen3_omni_moe_thinker,
    build_tiny_step3p7,
)
from vlsft.testing.tiny_generic_vllama_got_docling import build_tiny_granite_docling, build_tiny_video_llama_3

GENERIC_BUILDERS = {
    "lfm2_vl": build_tiny_lfm2_vl,
    "glm4v": build_tiny_glm4v,
    "mistral3": build_tiny_mistral3,
    "internvl": build_tiny_internvl,
    "aya_vision": build_tiny_aya_vision,
    "cohere2_vision": build_tiny_cohere2_vision,
    "lfm3_vl": build_tiny_lfm3_vl,
    "perception_lm": build_tiny_perception_lm,
    "llama4": build_tiny_llama4,
    "muse_glimmer": build_tiny_muse_glimmer,
    "ovis2": build_tiny_ovis2,
    "molmo2": build_tiny_molmo2,
    "minicpmv4_6": build_tiny_minicpmv4_6,
    "llava_next_video": build_tiny_llava_next_video,
    "video_llava": build_tiny_video_llava,
    "llava": build_tiny_llava,
    "vipllava": build_tiny_vipllava,
    "llava_onevision": build_tiny_llava_onevision,
    "glm4v_moe": build_tiny_glm4v_moe,
    "glm46v": build_tiny_glm46v,
    "gemma3n": build_tiny_gemma3n,
    "idefics2": build_tiny_idefics2,
    "granite4_vision": build_tiny_granite4_vision,
    "hunyuan_vl": build_tiny_hunyuan_vl,
    "deepseek_vl": build_tiny_deepseek_vl,
    "deepseek_vl_hybrid": build_tiny_deepseek_vl_hybrid,
    "janus": build_tiny_janus,
    "mllama": build_tiny_mllama,
    "aria": build_tiny_aria,
    "minicpmv4_7": build_tiny_minicpmv4_7,
    "lighton_ocr": build_tiny_lighton_ocr,
    "fast_vlm": build_tiny_fast_vlm,
    "exaone4_5": build_tiny_exaone4_5,
    "kimi_k25": build_tiny_kimi_k25,
    "step3p7": build_tiny_step3p7,
    "qwen3_omni_moe_thinker": build_tiny_qwen3_omni_moe_thinker,
    "granite_docling": build_tiny_granite_docling,
    "video_llama_3": build_tiny_video_llama_3,
    "glm_ocr": build_tiny_glm_ocr,
    "qianfan_ocr": build_tiny_qianfan_ocr,
    "minicpm_ocr": build_tiny_minicpm_ocr,
    "deepseek_ocr2": build_tiny_deepseek_ocr2,
    "unlimited_ocr": build_tiny_unlimited_ocr,
    "qwen2_5_omni_thinker": build_tiny_qwen2_5_omni_thinker,
    "qwen4_exp": build_tiny_qwen4_exp,
    "cosmos3_omni": build_tiny_cosmos3_omni,
    "glmga": build_tiny_glmga,
    "hyperclovax_vision_v2": build_tiny_hyperclovax_vision_v2,
    "inkling2": build_tiny_inkling2,
    "minimax_m3_vl": build_tiny_minimax_m3_vl,
    "nemotron_h_omni": build_tiny_nemotron_h_omni,
    "dots3_note": build_tiny_dots3_note,
    "cohere_compass": build_tiny_cohere_compass,
    "mistral_large4": build_tiny_mistral_large4,
    "glm5_next": build_tiny_glm5_next,
    "muse_spark": build_tiny_muse_spark,
    "phi4_multimodal": build_tiny_phi4_multimodal,
}
