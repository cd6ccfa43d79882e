"""EXAONE 4.5, Kimi K2.5, Step 3.7 and Qwen3-Omni's thinker beyond the parametrized generic-path tests
(tests/test_generic_families.py):
- Kimi K2.5's projector (`mm_projector`) is found as the projector, and LoRA adapts its language model's multi-head
  latent attention (DeepSeek-V3's low-rank query and key/value projections);
- videos are refused by row; Qwen3-Omni's audio is refused by row with the reason while its images train;
- Qwen3-Omni's whole model (no forward, only `generate`) is refused before training, naming its thinker.
"""

from __future__ import annotations

import pytest
from PIL import Image
from torch import nn
from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

from tests.test_generic_families import tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import MERGER, check_model_parts, component_of, lora_target_modules, merger_module_names


def answer(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def test_kimi_k25_mm_projector_is_the_projector():
    """Without `mm_projector` among transformers 5's projector names, the model is refused as having no projector."""
    model, _ = tiny("kimi_k25")
    check_model_parts(model)
    assert component_of("model.mm_projector.in_proj.weight") == MERGER
    assert merger_module_names(model) == ["model.mm_projector"]


def test_kimi_k25_lora_adapts_every_linear_layer_of_the_decoder_layers():
    """DeepSeek-V3's attention projects through `q_a_proj`/`q_b_proj` and `kv_a_proj_with_mqa`/`kv_b_proj`: each is
    adapted, as are the dense MLP and the shared expert (the routed experts are fused parameters, the router no
    Linear layer)."""
    model, _ = tiny("kimi_k25")
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    decoder = {name for name in linear if ".language_model.layers." in name}
    assert any(name.endswith("kv_b_proj") for name in decoder)
    assert set(lora_target_modules(model=model)) == decoder


@pytest.mark.parametrize("family", ["exaone4_5", "kimi_k25", "step3p7", "qwen3_omni_moe_thinker"])
def test_videos_are_refused_by_row(family):
    """Their processors take videos; the generic path collates images only: a video fails by name."""
    _, processor = tiny(family)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}, answer("A dot.")]
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {type(processor).__name__}"):
        VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])


def test_qwen3_omni_thinker_audio_is_refused_by_row_with_the_reason():
    """Qwen3-Omni's processor expands an audio item into placeholders that only its Whisper features fill: vlsft
    collates images only, so an audio item (or an audio column) fails by name, never trained on as an empty
    placeholder; the same conversation with its image alone collates."""
    _, processor = tiny("qwen3_omni_moe_thinker")
    collate = VisionChatCollator(processor, processor.chat_template)
    image = Image.new("RGB", (64, 64), (255, 0, 0))
    question = [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What is said?"}]
    messages = [{"role": "user", "content": question}, answer("Hello.")]
    with pytest.raises(RowError, match=r"message 0 has a 'audio' item: vlsft trains .* on text and images only"):
        collate([{"messages": messages, "images": [image]}])
    without_audio = [{"role": "user", "content": [question[0], question[2]]}, answer("Hello.")]
    with pytest.raises(RowError, match=r"the row has a `audio` column: vlsft trains .* on text and images only"):
        collate([{"messages": without_audio, "images": [image], "audio": [[0.0] * 1600]}])
    batch = collate([{"messages": without_audio, "images": [image]}])
    assert processor.audio_token_id not in batch["input_ids"][0].tolist()
    assert "pixel_values" in batch and (batch["labels"][0] != -100).any()


def test_qwen3_omni_whole_model_is_refused_naming_its_thinker():
    """Qwen3-Omni's whole model (`Qwen3OmniMoeForConditionalGeneration`) has no forward, only `generate`: it is
    refused before training with the sub-model to train instead, not failed inside the first step."""
    thinker, _ = tiny("qwen3_omni_moe_thinker")
    config = Qwen3OmniMoeConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    whole = Qwen3OmniMoeForConditionalGeneration(config)
    with pytest.raises(ValueError, match=r"qwen3_omni_moe: .* has no forward to train.*`thinker` "
                                         r"\(Qwen3OmniMoeThinkerForConditionalGeneration\)"):
        check_model_parts(whole)
    check_model_parts(whole.thinker)
