"""DeepSeek-VL (1.3B and the 7B hybrid) and Janus on the generic exact path: what their shared tests
(tests/test_generic_families.py) do not show on their own."""

from __future__ import annotations

from functools import lru_cache

import pytest
from PIL import Image

from tests.test_families import supervised_texts
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.generic_family import added_tokens
from vlsft.generic_masks import assistant_spans
from vlsft.model_parts import LANGUAGE_MODEL, MERGER, VISION_TOWER, component_of, named_parameters_by_component
from vlsft.testing.tiny_generic_janus_deepseek import (
    EOS,
    build_tiny_deepseek_vl,
    build_tiny_deepseek_vl_hybrid,
    build_tiny_janus,
)

BUILDERS = {"deepseek_vl": build_tiny_deepseek_vl, "deepseek_vl_hybrid": build_tiny_deepseek_vl_hybrid,
            "janus": build_tiny_janus}


@lru_cache
def tiny(family):
    return BUILDERS[family]()


def _user(text, image=False):
    return {"role": "user", "content": [*([{"type": "image"}] if image else []), {"type": "text", "text": text}]}


def _assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def test_an_empty_final_answer_supervises_the_stop_token_right_after_the_prompt():
    """DeepSeek-VL's template writes `Assistant:` and a space before the answer, but no space for an empty final
    answer (rendered as the bare generation prompt), and the eos only once another message follows: the model must
    generate the eos right after `Assistant:`, so the row ends `Assistant:<eos>` and only the eos is supervised."""
    _, processor = tiny("deepseek_vl")

    def render(messages, prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    messages = [_user("Say nothing."), _assistant("")]
    text, spans = assistant_spans(render, messages, added_tokens(processor.tokenizer), stop_token=EOS)
    assert text == render(messages[:1], True) + EOS
    assert [text[start:end] for start, end in spans] == [EOS]
    batch = VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == [EOS]


def test_janus_rows_hold_the_processors_default_system_prompt_once_and_unsupervised():
    """The Janus checkpoints' processor writes its default system prompt before every text (not the template): a
    row holds it once, as at inference, and the answers alone are supervised."""
    _, processor = tiny("janus")
    row = {"messages": [_user("Colour?", image=True), _assistant("Red.")], "images": [Image.new("RGB", (40, 24))]}
    batch = VisionChatCollator(processor, processor.chat_template)([row])
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.count("You are a helpful language and vision assistant.") == 1
    assert text.startswith("<｜begin▁of▁sentence｜>You are a helpful")
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == [" Red." + EOS]


def test_deepseek_and_janus_parts_are_found_by_their_names():
    """The `aligner` is DeepSeek-VL's and Janus's projector; DeepSeek-VL 7B's SAM tower, its neck, its strided
    projection and its gate are vision tower: frozen with it, never taken for the language model."""
    model, _ = tiny("deepseek_vl_hybrid")
    names = [name for name, _ in model.named_parameters()]
    sam = ("high_res_vision_model.", "high_res_vision_neck.", "model.high_res_vision_proj.", "high_res_vision_alpha")
    for part in sam:
        assert {component_of(n) for n in names if part in n and "aligner" not in n} == {VISION_TOWER}, part
    assert {component_of(n) for n in names if ".aligner." in n} == {MERGER}
    groups = named_parameters_by_component(tiny("janus")[0])
    assert any(".aligner." in n for n, _ in groups[MERGER])
    assert all("language_model" not in n for n, _ in groups[VISION_TOWER])
    assert any(n.startswith("model.language_model.") for n, _ in groups[LANGUAGE_MODEL])


@pytest.mark.parametrize("family", list(BUILDERS))
def test_videos_are_refused_by_row(family):
    """These processors take images only: a video item fails by name, never trains on a placeholder."""
    _, processor = tiny(family)
    video = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}
    messages = [video, _assistant("A dot.")]
    with pytest.raises(RowError, match=r"message 0 has a 'video' item: vlsft trains .*Processor \(generic path\)"):
        VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])
