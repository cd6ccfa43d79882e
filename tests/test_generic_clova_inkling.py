"""HyperCLOVA X SEED Vision (v2) and the other families of `vlsft.testing.tiny_generic_clova_inkling` beyond the
parametrized generic-path tests (tests/test_generic_families.py):
- HyperCLOVA X's linear `projector` (after its Qwen2.5-VL tower's own merger) is found as the projector, not trained as
  part of the language model;
- a turn's supervised text ends with `<|im_end|><|endofturn|>`, the tokens the model writes before it stops;
- videos are refused by row.
"""

from __future__ import annotations

import pytest

from tests.test_families import supervised_texts
from tests.test_generic_families import tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import MERGER, component_of, merger_module_names, named_parameters_by_component


def answer(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def test_hyperclovax_projector_is_the_projector():
    """Without `projector` among transformers 5's projector names, HyperCLOVA X's projection into the language model
    would be counted (and frozen, and adapted) as part of the language model."""
    model, _ = tiny("hyperclovax_vision_v2")
    assert component_of("model.projector.weight") == MERGER
    assert "model.projector" in merger_module_names(model)
    merger = {name for name, _ in named_parameters_by_component(model)[MERGER]}
    assert {"model.projector.weight", "model.projector.bias"} <= merger


def test_hyperclovax_supervises_through_the_end_of_turn_token():
    _, processor = tiny("hyperclovax_vision_v2")
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, answer("Hello."),
                {"role": "user", "content": [{"type": "text", "text": "Colour?"}]}, answer("Red.")]
    batch = VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == ["Hello.<|im_end|><|endofturn|>", "Red.<|im_end|><|endofturn|>"]


@pytest.mark.parametrize("family", ["hyperclovax_vision_v2"])
def test_videos_are_refused_by_row(family):
    """Their processors take videos; the generic path collates images only: a video fails by name."""
    _, processor = tiny(family)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}, answer("A dot.")]
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {type(processor).__name__}"):
        VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])
