"""Qwen2-VL, GLM-4.5V and GLM-4.6V beyond the parametrized generic-path tests (tests/test_generic_families.py):
- Qwen2-VL ships Qwen2.5-VL's template byte for byte: vlsft trains it through that record, and there too the masks
  are the incremental-rendering rule, the inputs the processor's, and a step, a LoRA step and exact accumulation run;
- GLM-4.5V's thinking format: a final turn's reasoning is supervised with the stop token after it; a row whose
  earlier reasoning the template drops, or whose reasoning `enable_thinking=False` cannot render, fails by name;
- GLM-4.5V's tool call is supervised through the `<|observation|>` that stops it, after its `</tool_call>` tag;
- GLM-4.5V's mixture of experts: the load-balancing loss is the model's own;
- videos, which their processors take, are refused by row.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from datasets import Dataset
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

from tests.conftest import _shapes
from tests.test_families import supervised_texts
from tests.test_generic_families import NOT_FOR_PROCESSOR, rule_texts
from tests.test_generic_families import test_lora_step_trains_only_the_adapters as lora_step
from tests.test_generic_families import test_one_batch_of_2_equals_2_accumulated_micro_batches_of_1 as exact_accumulation
from tests.test_generic_families import test_one_training_step_moves_every_part as training_step
from tests.test_generic_families import tiny
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.data.validation import InvalidRowsError
from vlsft.families import family_of_model
from vlsft.generic_masks import PrefixRuleError, as_content_items, assistant_spans
from vlsft.loss import attach_supervised_head
from vlsft.model_parts import lora_target_modules
from vlsft.templates import resolve_training_template, training_template
from vlsft.testing.tiny_generic_families import GENERIC_BUILDERS
from vlsft.testing.tiny_generic_qwen2_glm import build_tiny_qwen2_vl
from vlsft.testing.tiny_video import write_moving_shape


def user(text):
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def answer(text, reasoning=None):
    message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
    return {**message, "reasoning_content": reasoning} if reasoning else message


def supervised(processor, messages, **collator):
    batch = VisionChatCollator(processor, processor.chat_template, **collator)([{"messages": messages, "images": []}])
    return supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])


# -- Qwen2-VL: Qwen2.5-VL's template, so Qwen2.5-VL's record ---------------------------------------------------------


@pytest.fixture
def qwen2_vl(monkeypatch):
    """Qwen2-VL among the tiny models the parametrized tests build (it has no generic-path entry of its own)."""
    monkeypatch.setitem(GENERIC_BUILDERS, "qwen2_vl", build_tiny_qwen2_vl)
    return tiny("qwen2_vl")


def test_qwen2_vl_is_trained_by_qwen2_5_vl_record_with_masks_that_are_the_rule(qwen2_vl):
    model, processor = qwen2_vl
    assert family_of_model(model) is None  # no record of its own: its parts are found by transformers 5's names
    template = resolve_training_template(processor.chat_template)
    assert template == training_template("qwen2_5_vl")
    collate = VisionChatCollator(processor, template)
    assert collate.family.name == "qwen2_5_vl" and not collate.generic_family
    checked = 0
    for name, (row, _) in _shapes().items():
        if name in NOT_FOR_PROCESSOR:
            continue
        if row.get("tools"):  # Qwen2-VL's template renders no tools: refused by name, never dropped silently
            with pytest.raises(RowError, match="batch row 0: qwen2_5_vl .*cannot express tool definitions"):
                collate([row])
            continue
        conversation = prepare_multimodal_messages(row["messages"], images=row["images"])
        batch = collate([row])
        texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
        # Qwen2.5-VL's hand-written template also supervises the newline after `<|im_end|>`.
        assert [text.rstrip("\n") for text in texts] == rule_texts(processor, as_content_items(conversation)), name
        reference = processor.apply_chat_template(
            [conversation], tokenize=True, return_dict=True, return_tensors="pt"
        )
        for key, value in reference.items():
            assert torch.equal(batch[key], value), (name, key)
        checked += 1
    assert checked >= 5


def test_qwen2_vl_trains_every_part_with_lora_and_exact_accumulation(qwen2_vl, tmp_path):
    training_step("qwen2_vl", tmp_path / "step")
    lora_step("qwen2_vl", tmp_path / "lora")
    exact_accumulation("qwen2_vl", tmp_path / "accumulation")


# -- GLM-4.5V's thinking format -------------------------------------------------------------------------------------


def test_glm4_5v_final_reasoning_is_supervised_with_the_stop_token_after_it():
    """The final turn's reasoning renders (it follows the last user message): it is trained, and so is the
    `<|user|>` that stops generation after it, which the template writes only once a user message follows."""
    _, processor = tiny("glm4v_moe")
    texts = supervised(processor, [user("Hello"), answer("Hi.", "A greeting.")])
    assert texts == ["\n<think>A greeting.</think>\nHi.<|user|>"]
    # Reasoning written inline in the content is the same turn.
    assert supervised(processor, [user("Hello"), answer("<think>A greeting.</think>Hi.")]) == texts
    # enable_thinking=False: the empty think block is the generation prompt's, the answer and stop are supervised.
    assert supervised(processor, [user("Hello"), answer("Hi.")], template_kwargs={"enable_thinking": False}) == [
        "\nHi.<|user|>"
    ]


def test_glm4_5v_rows_whose_reasoning_the_template_cannot_keep_are_refused_naming_the_message(tmp_path):
    """Earlier reasoning is dropped once a later user message follows, and `enable_thinking=False` renders every turn
    with an empty think block: such rows have no exact mask and fail by row and message; without the reasoning they
    train."""
    model, processor = tiny("glm4v_moe")
    earlier = [user("Hello"), answer("Hi.", "A greeting."), user("Colour?"), answer("Red.", "It is red.")]
    with pytest.raises(RowError, match=r"message 1 \(assistant\): its rendering changes once the later messages"):
        supervised(processor, earlier)
    with pytest.raises(RowError, match=r"message 1 \(assistant\): the template renders the turn without the generat"):
        supervised(processor, earlier[:2], template_kwargs={"enable_thinking": False})
    rows = [{"messages": copy.deepcopy(earlier[2:]), "images": []}, {"messages": earlier, "images": []}]
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(InvalidRowsError, match=r"(?s)row 1.*message 1 \(assistant\): its rendering changes"):
        VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    kept = copy.deepcopy(earlier)
    kept[1].pop("reasoning_content")
    assert supervised(processor, kept) == ["\n<think></think>\nHi.<|user|>", "\n<think>It is red.</think>\nRed.<|user|>"]


def test_glm4_5v_tool_call_is_supervised_through_the_observation_token_that_stops_it():
    """GLM-4.5V writes no end-of-turn marker: a tool-call turn ends with the `</tool_call>` tag (a token its tokenizer
    adds whole), and the model stops by generating the `<|observation|>` the template writes next, which is
    supervised like the `<|user|>` after a text turn."""
    _, processor = tiny("glm4v_moe")
    row, _ = _shapes()["tool_call_with_text"]
    batch = VisionChatCollator(processor, processor.chat_template)([row])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == [
        "\n<think></think>\nZooming in.\n<tool_call>zoom\n<arg_key>region</arg_key>\n<arg_value>left</arg_value>\n"
        "</tool_call><|observation|>",
        "\n<think></think>\nIt is a red dot.<|user|>",
    ]


# A template with no end-of-turn marker that drops an assistant turn's reasoning once a user message follows it.
DROPS_REASONING_NO_MARKER = (
    "{% for m in messages %}<|{{ m.role }}|>\n{% if m.reasoning and loop.last %}<think>{{ m.reasoning }}</think>"
    "{% endif %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_a_final_turn_the_stop_probe_rewrites_gets_the_templates_stop_token_or_is_refused():
    """The stop token after a final turn is found by rendering a user message after it; where that rewrites the turn,
    the template's stop token (found on a plain turn) is supervised, and without one the row is refused: never the
    slice of a rewritten rendering, which gave no stop token (the model would never learn to stop)."""
    def render(messages, add_generation_prompt):
        return render_jinja_template(
            [messages], chat_template=DROPS_REASONING_NO_MARKER, add_generation_prompt=add_generation_prompt
        )[0][0]

    control = ("<|assistant|>", "<|user|>", "</think>", "<think>")
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi.", "reasoning": "Greeting."}]
    text, spans = assistant_spans(render, messages, control, stop_token="<|user|>")
    assert [text[start:end] for start, end in spans] == ["<think>Greeting.</think>Hi.<|user|>"]
    assert text.endswith("Hi.<|user|>")
    with pytest.raises(PrefixRuleError, match="message 1 .*changes once a user message follows it"):
        assistant_spans(render, messages, control)


# -- GLM-4.5V's mixture of experts ----------------------------------------------------------------------------------


def test_glm4_5v_load_balancing_loss_is_the_models_own():
    """GLM-4.5V's config names its routed experts `n_routed_experts`: the supervised head's load-balancing loss is the
    one the model's own forward computes."""
    model, processor = tiny("glm4v_moe")
    model = copy.deepcopy(model)
    model.config.text_config.output_router_logits = True
    batch = VisionChatCollator(processor, processor.chat_template)([{"messages": [user("Hi"), answer("Red.")]}])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected = model(**inputs).aux_loss
    attach_supervised_head(model)
    ours = model(**inputs, supervised_labels=batch["labels"]).aux_loss
    assert expected is not None and torch.allclose(ours, expected)


# -- LoRA targets ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_vl", "glm4v_moe", "glm46v"])
def test_lora_adapts_every_linear_layer_of_the_decoder_layers_and_vision_blocks(family, qwen2_vl):
    """GLM-4's fused `mlp.gate_up_proj`, GLM-4.5's `mlp.shared_experts` and Qwen2-VL's vision `mlp.fc1`/`fc2` are
    adapted like the other families' projections (the MoE's routed experts are fused parameters, not Linear layers)."""
    model, _ = tiny(family)
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    decoder = {name for name in linear if ".language_model.layers." in name}
    vision = {name for name in linear if ".visual.blocks." in name}
    assert set(lora_target_modules(model=model)) == decoder
    assert set(lora_target_modules(vision=True, model=model)) == decoder | vision


# -- Videos ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["glm4v_moe", "glm46v"])
def test_glm_videos_are_refused_by_row(family):
    """Their processors and templates take videos; the generic path collates images only: a video fails by name."""
    _, processor = tiny(family)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}, answer("A dot.")]
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {type(processor).__name__}"):
        VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])


def test_qwen2_vl_video_equals_the_processor_and_its_model_takes_it(qwen2_vl, tmp_path):
    """Qwen2.5-VL's record collates videos: for Qwen2-VL's processor too the batch is the processor's own (it returns
    no `second_per_grid_ts`, and its model takes none) and the model's forward gives the same logits."""
    from tests.test_video import _decoded, assert_same, processor_reference, video_row

    model, processor = qwen2_vl
    clip = write_moving_shape(tmp_path / "left.gif", num_frames=9, fps=3, size=(65, 47), direction="left")
    rows = [video_row(str(clip), answer="left")]
    batch = VisionChatCollator(processor, training_template("qwen2_5_vl"))(rows)
    reference = processor_reference(processor, "qwen2_5_vl", rows, [_decoded(clip)])
    assert_same(batch, reference)
    assert "pixel_values_videos" in batch and "second_per_grid_ts" not in batch
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == ["left<|im_end|>"]
    with torch.no_grad():
        ours, theirs = model(**batch), model(**reference)
    assert torch.isfinite(ours.loss) and torch.equal(ours.logits, theirs.logits)
