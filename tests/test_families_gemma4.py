"""Gemma 4 beyond the common family bar (`tests/test_families.py` runs that bar on the current template, gemma4_v5):
- every stock template revision vlsft supports is recognised by its exact text, and its training template renders
  byte-identically to it, with thinking on and off, with tools, reasoning and generation prompts;
- reasoning is supervised exactly as the model generates it after the generation prompt: reasoning + answer,
  reasoning + tool call (and the text continuing after the tool's response), answer only with thinking on and off,
  reasoning in history under `reasoning_history` drop and keep, reasoning that imitates the template, inline
  reasoning, and never what the generation prompt already holds;
- `enable_thinking` and friends pass through per recipe and per row (`chat_template_kwargs`);
- audio and video rows fail by row, before training.
"""

from __future__ import annotations

import copy
import re

import pytest
from datasets import Dataset
import torch
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

from tests.conftest import IMAGE, TOOLS, assistant, image, tool, user, zoom_call
from tests.test_families import supervised_texts, tiny
from tests.test_loss import make_trainer
from tests.test_weights import weighted_runs
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collation.template_kwargs import row_template_kwargs
from vlsft.collator import VisionChatCollator, training_collator
from vlsft.tokens import IGNORE_INDEX
from vlsft.data.rows import normalize_messages
from vlsft.families import FAMILIES, family_of_model, family_of_processor
from vlsft.templates import (
    detect_family,
    resolve_training_template,
    stock_template,
    training_template,
)
from vlsft.data.validation import InvalidRowsError

REVISIONS = ["gemma4_v5", "gemma4_v4", "gemma4", "gemma4_v3", "gemma4_v2"]
CURRENT = "gemma4_v5"
CALL = '<|tool_call>call:zoom{{region:<|"|>{}<|"|>}}<tool_call|><|tool_response>'
# Reasoning that spells out Gemma 4's own turn and channel markers: masks come from the template, not from tokens.
LOOKALIKE = "Is it <turn|>\n<|turn>user\nfake<turn|>\n<|turn>model\n? <|channel>thought\nno<channel|> Red, I think."


def thought(text: str) -> str:
    return f"<|channel>thought\n{text}\n<channel|>"


def reasoning(message: dict, text: str) -> dict:
    return {**message, "reasoning_content": text}


def rows():
    """name -> row, the thinking shapes of issue 12 (each with an image, so vision tokens are present)."""
    return {
        "reasoning_answer": {
            "messages": [user(IMAGE, "What colour?"), reasoning(assistant("Red."), "It looks red.")],
            "images": [image()],
        },
        "reasoning_tool_call": {
            "messages": [
                user(IMAGE, "Zoom on the left, please."),
                reasoning(assistant("", [zoom_call("left")]), "Zoom first."),
                tool("done"),
                reasoning(assistant("It is a red dot."), "The tool said done."),
            ],
            "images": [image()],
            "tools": TOOLS,
        },
        "answer_only": {"messages": [user(IMAGE, "Colour?"), assistant("Red.")], "images": [image()]},
        "history": {
            "messages": [
                user(IMAGE, "Shape?"),
                reasoning(assistant("A square."), "Four equal sides."),
                user("And the colour?"),
                reasoning(assistant("Red."), "It looks red."),
            ],
            "images": [image()],
        },
        "history_tool_call": {
            "messages": [
                user(IMAGE, "Zoom right."),
                reasoning(assistant("", [zoom_call("right")]), "Zoom first."),
                tool("ok"),
                assistant("Blue."),
                user("Sure?"),
                reasoning(assistant("Yes."), "It was blue."),
            ],
            "images": [image()],
            "tools": TOOLS,
        },
        # A tool-call message with text: the template writes its text after the inlined tool response, a second
        # generation block of the same message.
        "tool_call_with_text": {
            "messages": [
                user(IMAGE, "Zoom left."),
                reasoning(assistant("Zooming.", [zoom_call("left")]), "Zoom first."),
                tool("done"),
                user("And?"),
                reasoning(assistant("Red."), "Saw red."),
            ],
            "images": [image()],
            "tools": TOOLS,
        },
        "lookalike": {
            "messages": [user(IMAGE, "Colour?"), reasoning(assistant("Red."), LOOKALIKE)],
            "images": [image()],
        },
        "inline_reasoning": {
            "messages": [user(IMAGE, "Colour?"), assistant(thought("It looks red.") + "Red.")],
            "images": [image()],
        },
        "empty_reasoning": {
            "messages": [user(IMAGE, "Colour?"), reasoning(assistant("Red."), "")],
            "images": [image()],
        },
    }


def collate(family, batch, chat_template_kwargs=None, reasoning_history=None):
    """Collate as the trainer does for these switches (`VLSFTConfig.chat_template_kwargs` / `reasoning_history`)."""
    template_kwargs = dict(chat_template_kwargs or {})
    if reasoning_history is not None:
        template_kwargs["reasoning_history"] = reasoning_history
    processor = tiny(family)[1]
    return VisionChatCollator(processor, training_template(family), template_kwargs=template_kwargs or None)(batch)


def supervised(family, row, **collator_kwargs) -> list[str]:
    batch = collate(family, [row], **collator_kwargs)
    return supervised_texts(tiny(family)[1].tokenizer, batch["input_ids"][0], batch["labels"][0])


def rendered(family, row, template=None, **variables) -> str:
    return render_jinja_template(
        [normalize_messages(row["messages"])],
        tools=row.get("tools"),
        chat_template=template or stock_template(family),
        bos_token="<bos>",
        **variables,
    )[0][0]


# -- templates -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", REVISIONS)
def test_each_revision_is_recognised_and_its_training_template_renders_the_stock_text(family):
    stock, ours = stock_template(family), training_template(family)
    assert detect_family(stock) == family and detect_family(stock.strip() + "\n") == family
    assert resolve_training_template(stock) == ours
    model, processor = tiny(family)
    assert processor.chat_template == stock
    assert family_of_processor(processor) == CURRENT and family_of_model(model) == CURRENT  # all collate alike
    switches = [{}, {"enable_thinking": True}, {"enable_thinking": False}]
    if family == "gemma4_v5":
        switches.append({"enable_thinking": True, "preserve_thinking": True})
    for name, row in rows().items():
        for variables in switches:
            for add_generation_prompt in (False, True):
                kwargs = dict(add_generation_prompt=add_generation_prompt, **variables)
                assert rendered(family, row, ours, **kwargs) == rendered(family, row, **kwargs), (name, kwargs)


@pytest.mark.parametrize("family", ["gemma4_v5", "gemma4"])  # the release revision trains on the rule itself
def test_supervision_starts_where_the_inference_prompt_ends(family):
    """For every supervised turn, the stock template's prompt for it (the conversation before it plus the generation
    prompt, with the same switches) is a prefix of the training text, and a generation block starts right there:
    what the generation prompt holds (`<|turn>model\\n`; after a tool response with thinking on, v5's
    `<|channel>thought\\n`) is never supervised."""
    for name in ("reasoning_answer", "reasoning_tool_call", "history", "lookalike"):
        row = rows()[name]
        messages = normalize_messages(row["messages"])
        for variables in ({"enable_thinking": True}, {"enable_thinking": False}):
            full, spans = render_jinja_template(
                [messages], tools=row.get("tools"), chat_template=training_template(family),
                return_assistant_tokens_mask=True, bos_token="<bos>", **variables,
            )
            full, starts = full[0], [start for start, end in spans[0] if end > start]  # (a context turn's is empty)
            trained = 0
            for i, message in enumerate(messages):
                if message["role"] != "assistant":
                    continue
                prompt = rendered(family, {**row, "messages": messages[:i]}, add_generation_prompt=True, **variables)
                as_last_turn = rendered(family, {**row, "messages": messages[: i + 1]}, **variables)
                assert full.startswith(prompt), (family, name, variables, i)
                # Trained exactly when the turn renders here as it does as the last turn: a history turn whose
                # reasoning the template drops would teach the answer without the reasoning it came with.
                is_trained = full.startswith(as_last_turn)
                assert (len(prompt) in starts) == is_trained, (family, name, variables, i)
                trained += is_trained
            assert trained, (family, name)


# -- what is supervised ----------------------------------------------------------------------------------------------

THINKING = {"enable_thinking": True}


def test_reasoning_and_answer_is_supervised_as_the_model_generates_it():
    assert supervised(CURRENT, rows()["reasoning_answer"]) == [thought("It looks red.") + "Red.<turn|>"]
    assert supervised(CURRENT, rows()["reasoning_answer"], chat_template_kwargs=THINKING) == [
        thought("It looks red.") + "Red.<turn|>"
    ]


def test_reasoning_and_tool_call_then_the_answer_after_the_tool_response():
    row = rows()["reasoning_tool_call"]
    call = thought("Zoom first.") + CALL.format("left")
    # Thinking off: after the tool's response the model generates the whole continuation.
    assert supervised(CURRENT, row) == [call, thought("The tool said done.") + "It is a red dot.<turn|>"]
    # Thinking on: the generation prompt after a tool response already holds `<|channel>thought\n`.
    assert supervised(CURRENT, row, chat_template_kwargs=THINKING) == [
        call,
        "The tool said done.\n<channel|>It is a red dot.<turn|>",
    ]


@pytest.mark.parametrize("thinking", [True, False])
def test_answer_only_with_thinking_on_and_off(thinking):
    """No reasoning: the stock template writes no empty channel, so the answer and `<turn|>` are supervised; the
    thinking switch only changes the (unsupervised) system turn."""
    row = rows()["answer_only"]
    batch = collate(CURRENT, [row], chat_template_kwargs={"enable_thinking": thinking})
    tokenizer = tiny(CURRENT)[1].tokenizer
    assert supervised_texts(tokenizer, batch["input_ids"][0], batch["labels"][0]) == ["Red.<turn|>"]
    text = tokenizer.decode(batch["input_ids"][0])
    assert ("<|turn>system\n<|think|>\n<turn|>" in text) == thinking
    # An empty reasoning field is no reasoning: nothing is rendered for it, nothing extra supervised.
    assert supervised(CURRENT, rows()["empty_reasoning"], chat_template_kwargs={"enable_thinking": thinking}) == [
        "Red.<turn|>"
    ]


def test_reasoning_in_history_under_drop_and_keep():
    row = rows()["history"]
    # drop (default): the stock text; the first answer's reasoning is dropped there, so that turn is not trained.
    assert supervised(CURRENT, row) == [thought("It looks red.") + "Red.<turn|>"]
    assert collate(CURRENT, [row])["input_ids"].shape == collate(CURRENT, [rows()["history"]])["input_ids"].shape
    # keep: every turn's reasoning rendered and supervised (TRL's training-template behaviour).
    assert supervised(CURRENT, row, reasoning_history="keep") == [
        thought("Four equal sides.") + "A square.<turn|>",
        thought("It looks red.") + "Red.<turn|>",
    ]
    drop_text = rendered(CURRENT, row, training_template(CURRENT))
    keep_text = rendered(CURRENT, row, training_template(CURRENT), reasoning_history="keep")
    assert drop_text == rendered(CURRENT, row)
    assert keep_text == drop_text.replace("A square.", thought("Four equal sides.") + "A square.")
    # A tool-call turn in history: under drop its reasoning is dropped and it is not trained; the answer that
    # continues it has no reasoning and is trained, as is the last turn.
    assert supervised(CURRENT, rows()["history_tool_call"]) == ["Blue.<turn|>", thought("It was blue.") + "Yes.<turn|>"]
    assert supervised(CURRENT, rows()["history_tool_call"], reasoning_history="keep") == [
        thought("Zoom first.") + CALL.format("right"),
        "Blue.<turn|>",
        thought("It was blue.") + "Yes.<turn|>",
    ]


def test_an_earlier_revision_supervises_what_it_renders():
    """The revisions before v5 render reasoning on tool-call turns only (and after the last user turn): an answer's
    reasoning is not rendered even in the last turn, so under drop the row is refused (its answer would train without
    the reasoning it was given with, issue 23); keep renders and supervises it."""
    with pytest.raises(RowError, match=r"message 1 has `reasoning_content`, but .* does not render it.*set `reasoning_history: keep`"):
        supervised("gemma4", rows()["reasoning_answer"])
    assert supervised("gemma4", rows()["reasoning_answer"], reasoning_history="keep") == [
        thought("It looks red.") + "Red.<turn|>"
    ]
    row = rows()["reasoning_tool_call"]
    row["messages"][-1].pop("reasoning_content")  # an answer's: not rendered under drop (above)
    assert supervised("gemma4", row, chat_template_kwargs=THINKING) == [
        thought("Zoom first.") + CALL.format("left"),
        "It is a red dot.<turn|>",
    ]


def test_the_release_revision_supervises_tool_calls_as_their_own_turn():
    """The release template renders no reasoning and closes a tool-call turn with `<turn|>`; the tool's response is
    a `<|turn>tool` turn of its own (prompt)."""
    call = '<|tool_call>call:zoom{region:<|"|>left<|"|>}<tool_call|>'
    row = rows()["reasoning_tool_call"]
    for message in row["messages"]:
        message.pop("reasoning_content", None)
    assert supervised("gemma4_v2", row) == [
        call + "<turn|>",
        "It is a red dot.<turn|>",
    ]
    # It renders no reasoning: a row with some is refused, not trained as its answer alone.
    with pytest.raises(RowError, match=r"message 1 has `reasoning_content`, but .*release template.* does not render it"):
        supervised("gemma4_v2", rows()["reasoning_answer"], reasoning_history="keep")


def test_reasoning_that_imitates_the_template_is_supervised_verbatim():
    assert supervised(CURRENT, rows()["lookalike"]) == [thought(LOOKALIKE) + "Red.<turn|>"]


def test_inline_reasoning_in_the_channel_form_is_trained_as_reasoning():
    """The stock template strips a channel block written inside the content; vlsft moves it to `reasoning_content`
    first, so the model learns the reasoning it generated."""
    assert supervised(CURRENT, rows()["inline_reasoning"]) == supervised(CURRENT, rows()["reasoning_answer"])


@pytest.mark.parametrize("name", ["reasoning_answer", "reasoning_tool_call", "history", "lookalike", "tool_call_with_text"])
def test_no_vision_or_padding_token_is_supervised_and_inputs_equal_the_processor(name):
    processor = tiny(CURRENT)[1]
    row = rows()[name]
    batch = collate(CURRENT, [row, rows()["answer_only"]], chat_template_kwargs=THINKING)
    vision = processor.tokenizer.convert_tokens_to_ids(list(FAMILIES[CURRENT].vision_tokens))
    is_vision = sum(batch["input_ids"] == i for i in vision).bool()
    supervised_ = batch["labels"] != IGNORE_INDEX
    assert is_vision.any() and not (supervised_ & is_vision).any()
    assert not (supervised_ & (batch["attention_mask"] == 0)).any()
    ours = collate(CURRENT, [row], chat_template_kwargs=THINKING)
    theirs = processor.apply_chat_template(
        [prepare_multimodal_messages(normalize_messages(row["messages"]), images=row["images"])],
        tools=row.get("tools"),
        enable_thinking=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert set(ours) - {"labels"} == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


# -- per-turn weights ------------------------------------------------------------------------------------------------


def weighted(family, row, reasoning_history, chat_template_kwargs=None, **weight_kwargs):
    """(decoded text, weight) runs of one row, checking that weighting leaves the tokens as they are."""
    template_kwargs = {"reasoning_history": reasoning_history, **(chat_template_kwargs or {})}
    processor = tiny(family)[1]
    batch = VisionChatCollator(processor, training_template(family), template_kwargs=template_kwargs, **weight_kwargs)(
        [row])
    plain = VisionChatCollator(processor, training_template(family), template_kwargs=template_kwargs)([row])
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    return weighted_runs(processor.tokenizer, batch, 0)


def without_unrendered_reasoning(family, row, chat_template_kwargs, reasoning_history):
    """The row less the reasoning that `family`'s template does not render in a trained turn (the earlier revisions:
    an answer's; the release revision: all), which the collator refuses (issue 23); the rest of the row as it is."""
    row = copy.deepcopy(row)
    try:
        collate(family, [row], chat_template_kwargs, reasoning_history)
    except RowError as error:
        for position in re.findall(r"message (\d+) has `reasoning_content`, but", str(error)):
            row["messages"][int(position)].pop("reasoning_content")
    return row


def with_weights(row, *weights):
    """The row with `weight` set on its assistant messages, in order."""
    row = copy.deepcopy(row)
    for message, weight in zip((m for m in row["messages"] if m["role"] == "assistant"), weights, strict=True):
        message["weight"] = weight
    return row


def test_per_turn_weights_and_reasoning_weight_on_reasoning_history():
    """A model turn that is context (under drop, a history turn whose reasoning the template drops) renders an empty
    generation block, and a tool-call message's text after the inlined tool response is a second block announced by
    an empty one: weights map one per assistant message. Written out by hand for the current revision."""
    history, tool_text, tool_call = rows()["history"], rows()["tool_call_with_text"], rows()["reasoning_tool_call"]
    red, square = "Red.<turn|>", "A square.<turn|>"
    for thinking in ({"enable_thinking": False}, THINKING):
        def runs(row, reasoning_history, **kwargs):
            return weighted(CURRENT, row, reasoning_history, thinking, **kwargs)

        # drop: the first turn is context (its reasoning is not rendered), whatever its weight.
        assert runs(history, "drop", reasoning_weight=0.5) == [(thought("It looks red."), 0.5), (red, 1.0)]
        assert runs(history, "drop", reasoning_weight=0.0) == [(red, 1.0)]
        assert runs(history, "drop", train_on_turns="last") == [(thought("It looks red.") + red, 1.0)]
        assert runs(with_weights(history, 3.0, 0.25), "drop") == [(thought("It looks red.") + red, 0.25)]
        assert runs(with_weights(history, 3.0, 0.25), "drop", reasoning_weight=0.5) == [
            (thought("It looks red."), 0.125), (red, 0.25)]
        # keep: both turns trained, each with its weight.
        assert runs(history, "keep", reasoning_weight=0.5) == [
            (thought("Four equal sides."), 0.5), (square, 1.0), (thought("It looks red."), 0.5), (red, 1.0)]
        assert runs(history, "keep", train_on_turns="last") == [(thought("It looks red.") + red, 1.0)]
        assert runs(with_weights(history, 3.0, 0.25), "keep") == [
            (thought("Four equal sides.") + square, 3.0), (thought("It looks red.") + red, 0.25)]
        # The tool-call message's two blocks (call, then its text after the response) carry its one weight.
        call = thought("Zoom first.") + CALL.format("left")
        last = thought("Saw red.") + red
        assert runs(with_weights(tool_text, 2.0, 0.5), "keep") == [(call, 2.0), ("Zooming.<turn|>", 2.0),
                                                                    (last, 0.5)]
        assert runs(with_weights(tool_text, 2.0, 0.5), "drop") == [(last, 0.5)]
        assert runs(tool_text, "keep", reasoning_weight=0.5) == [
            (thought("Zoom first."), 0.5), (CALL.format("left"), 1.0), ("Zooming.<turn|>", 1.0),
            (thought("Saw red."), 0.5), (red, 1.0)]
        assert runs(tool_text, "keep", train_on_turns="last") == [(last, 1.0)]
    # Thinking on, after a tool response the generation prompt already opened the thought channel: the reasoning
    # that the turn starts with is still reasoning.
    assert weighted(CURRENT, tool_call, "drop", THINKING, reasoning_weight=0.5) == [
        (thought("Zoom first."), 0.5), (CALL.format("left"), 1.0), ("The tool said done.\n<channel|>", 0.5),
        ("It is a red dot.<turn|>", 1.0)]


@pytest.mark.parametrize("family", REVISIONS)
def test_every_revision_weighs_one_weight_per_assistant_message(family):
    """Every revision, both histories, thinking on and off: the weighted runs cover exactly the unweighted
    supervised text; `train_on_turns='last'` keeps exactly the last trained block; reasoning runs (and only they)
    carry `reasoning_weight`; message weights 2, 1, 0.5, ... appear in message order."""
    tokenizer = tiny(family)[1].tokenizer
    for name in ("history", "history_tool_call", "reasoning_tool_call", "tool_call_with_text"):
        for history in ("drop", "keep"):
            for thinking in ({"enable_thinking": False}, THINKING):
                where = (name, history, thinking)
                row = without_unrendered_reasoning(family, rows()[name], thinking, history)
                batch = collate(family, [row], chat_template_kwargs=thinking, reasoning_history=history)
                plain = supervised_texts(tokenizer, batch["input_ids"][0], batch["labels"][0])
                runs = weighted(family, row, history, thinking, train_on_turns="last")
                assert runs == [(plain[-1], 1.0)], where
                runs = weighted(family, row, history, thinking, reasoning_weight=0.5)
                assert "".join(text for text, _ in runs) == "".join(plain), where
                for text, weight in runs:
                    assert weight == (0.5 if "<channel|>" in text else 1.0), where
                    assert (weight == 0.5) == text.endswith("<channel|>"), where
                n = sum(m["role"] == "assistant" for m in row["messages"])
                runs = weighted(family, with_weights(row, *[2.0 ** (1 - k) for k in range(n)]), history, thinking)
                assert "".join(text for text, _ in runs) == "".join(plain), where
                weights = [weight for _, weight in runs]
                assert weights == sorted(weights, reverse=True) and weights[-1] == 2.0 ** (2 - n), where


# -- switches --------------------------------------------------------------------------------------------------------


def test_chat_template_kwargs_per_recipe_and_per_row(tmp_path):
    row = rows()["answer_only"]
    off = {**row, "chat_template_kwargs": {"enable_thinking": False}}
    # Through a datasets table, as training reads rows: Arrow gives the row without the column a None there.
    table = Dataset.from_list([off, row])
    processor = tiny(CURRENT)[1]
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", chat_template_kwargs=THINKING)
    collator = training_collator(processor, args)
    texts = [processor.tokenizer.decode(ids) for ids in collator([table[0], table[1]])["input_ids"]]
    assert table[1]["chat_template_kwargs"] is None
    assert "<|think|>" not in texts[0] and "<|think|>" in texts[1]
    assert row_template_kwargs(collator.template_kwargs, table[1]) == {**THINKING, "reasoning_history": "drop"}


def test_reasoning_history_is_checked_and_reaches_the_collator(tmp_path):
    with pytest.raises(ValueError, match="reasoning_history"):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", reasoning_history="all")
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", reasoning_history="keep")
    collator = training_collator(tiny(CURRENT)[1], args)
    batch = collator([rows()["history"]])
    texts = supervised_texts(tiny(CURRENT)[1].tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts[0] == thought("Four equal sides.") + "A square.<turn|>"


# -- media vlsft does not collate for Gemma 4 ------------------------------------------------------------------------


def test_audio_and_video_rows_fail_naming_the_row(tmp_path):
    good = rows()["answer_only"]
    audio = copy.deepcopy(good)
    audio["messages"][0]["content"].append({"type": "audio"})
    video = copy.deepcopy(good)
    video["messages"][0]["content"].insert(0, {"type": "video"})
    video_column = {**copy.deepcopy(good), "videos": ["clip.mp4"]}
    video_reason = "video is not collated for this family yet"
    for bad, what, why in [
        (audio, r"audio \(message 0\)", "audio is out of scope"),
        (video, r"video \(message 0\)", video_reason),
        (video_column, r"a `videos` column", video_reason),
    ]:
        with pytest.raises(RowError, match=rf"batch row 1: gemma4_v5 .*{what}.*{why}"):
            collate(CURRENT, [good, bad])
    model, processor = tiny(CURRENT)
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(InvalidRowsError, match=r"row 1: .*'audio'"):
        VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list([good, audio]), processing_class=processor)


# -- training on reasoning rows --------------------------------------------------------------------------------------


def test_reasoning_rows_train_exactly_one_batch_of_4_as_4_micro_batches_of_1(tmp_path):
    """Reasoning rows (history, tool call, look-alike, answer only), with thinking on from the config and history
    reasoning kept: the trainer's collator gets the switches, and accumulation over micro-batches gives the same step."""
    model = tiny(CURRENT)[0]
    train_rows = [rows()[name] for name in ("history", "reasoning_tool_call", "lookalike", "answer_only")]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights, losses = [], []
    for batch_size, accumulation in ((4, 1), (1, 4)):
        trainer = make_trainer(
            model, tiny(CURRENT)[1], tmp_path / f"{batch_size}x{accumulation}", rows=train_rows,
            per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
            gradient_checkpointing=True, chat_template_kwargs=THINKING, reasoning_history="keep",
            escape_control_tokens=True,  # the look-alike row spells out template tokens: trained as plain text
        )
        assert trainer.data_collator.template_kwargs["reasoning_history"] == "keep"
        assert trainer.data_collator.template_kwargs == {**THINKING, "reasoning_history": "keep"}
        assert tiny(CURRENT)[1].chat_template == stock_template(CURRENT)  # the processor keeps its stock template
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        losses.append(trainer.state.log_history[0]["loss"])
    update = max((weights[0][n] - start[n]).abs().max() for n in start)
    difference = max((weights[0][n] - weights[1][n]).abs().max() for n in start)
    assert update > 1e-3
    assert difference <= 1e-4 * update
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
