"""Bad input in thinking templates, template variables and reasoning (issue 23, items 1-4 and 25): nothing trains
something other than what the row says.

1. A template switch (`enable_thinking`, `preserve_thinking`, `add_vision_id`, or any variable a custom template
   tests as true/false) given as a string or a number is refused in the config (so the recipe and its dry run), in
   the collator and per row: `"false"` is true to Gemma 4's template and not `false` to Qwen3.5's.
2. Reasoning markers inside a reasoning field, or in the content next to one, or out of place in the content, are
   refused by row (or escaped to plain text with `escape_control_tokens`): only one block at the start of the content
   of a message without a reasoning field is the data's structure.
3. A reasoning field the template leaves out of the turn it trains is refused by row, with what would render it.
4. A reasoning field that is not a string (or on a message that is not an assistant's) is refused by row.
25. A row with nothing to train because of the history rule says so, and names the switch that changes it.
"""

from __future__ import annotations

import copy

import pytest
from datasets import Dataset

from tests.conftest import IMAGE, assistant, image, user
from tests.test_families import supervised_texts, tiny
from tests.test_recipe import tiny_recipe
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collation.template_kwargs import KNOWN_BOOLEAN_SWITCHES, boolean_switches
from vlsft.collator import VisionChatCollator
from vlsft.data.validation import InvalidRowsError, RowChecker
from vlsft.families import FAMILIES
from vlsft.recipes.build import build_training_config
from vlsft.recipes.loading import recipe_from_dict
from vlsft.recipes.schema import RecipeError
from vlsft.templates import stock_template, training_template
from vlsft.tokens import IGNORE_INDEX


def collator(family, **kwargs):
    return VisionChatCollator(tiny(family)[1], training_template(family), **kwargs)


def reasons(collate, rows):
    return [verdict.reason for verdict in RowChecker(collate).check(copy.deepcopy(rows))]


def thinker(answer, **fields):
    return {**assistant(answer), **fields}


def row(*messages, **extra):
    return {"messages": list(messages), "images": [image()] if any("image" in str(m) for m in messages) else [], **extra}


def texts(family, rows, **kwargs):
    batch = collator(family, **kwargs)(rows)
    tokenizer = tiny(family)[1].tokenizer
    return [supervised_texts(tokenizer, batch["input_ids"][i], batch["labels"][i]) for i in range(len(rows))]


# -- 1. template switches take true or false ---------------------------------------------------------------------

def test_the_known_switches_are_those_every_shipped_template_tests_as_booleans():
    found = set()
    for family in FAMILIES:
        found |= boolean_switches(training_template(family)) | boolean_switches(stock_template(family))
    assert found == KNOWN_BOOLEAN_SWITCHES == {"enable_thinking", "preserve_thinking", "add_vision_id"}
    # Tested as `is false` (Qwen3.5) and by truthiness only (Gemma 4): both are switches; a variable compared with
    # strings (`reasoning_history`, `reasoning_effort`) is not.
    assert boolean_switches(training_template("qwen3_5_think")) == {"enable_thinking", "add_vision_id"}
    assert "enable_thinking" in boolean_switches(training_template("gemma4_v2"))
    assert not {"reasoning_history", "reasoning_effort"} & boolean_switches(training_template("qwen3_8"))


@pytest.mark.parametrize("value", ["false", "False", 0, 1, "true", 0.5])
@pytest.mark.parametrize("switch", sorted(KNOWN_BOOLEAN_SWITCHES))
def test_a_switch_that_is_not_a_bool_is_refused_by_the_config_and_the_recipe(switch, value, tmp_path):
    with pytest.raises(ValueError, match=rf"`chat_template_kwargs.{switch}` must be true or false, got the "):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", chat_template_kwargs={switch: value})
    recipe = recipe_from_dict(tiny_recipe(tmp_path / "data.jsonl", tmp_path / "out",
                                          training={"chat_template_kwargs": {switch: value}}))
    with pytest.raises(RecipeError, match=rf"`training`: `chat_template_kwargs.{switch}` must be true or false"):
        build_training_config(recipe, check_only=True)  # what `--dry-run` builds: before anything loads
    for good in (True, False, None):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", chat_template_kwargs={switch: good})


def test_the_messages_say_what_the_value_would_have_done(tmp_path):
    def message(value):
        with pytest.raises(ValueError) as error:
            VLSFTConfig(output_dir=str(tmp_path), report_to="none", chat_template_kwargs={"enable_thinking": value})
        return str(error.value)

    assert "a string is true whatever it says, so 'false' would turn it on" in message("false")
    assert "0 is neither true nor false (`enable_thinking is false` does not hold for it, yet `if enable_thinking` does not)" in message(0)
    with pytest.raises(ValueError, match=r"`chat_template_kwargs.reasoning_history` must be 'drop' or 'keep', got the str 'Keep'"):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", chat_template_kwargs={"reasoning_history": "Keep"})
    with pytest.raises(ValueError, match=r"`chat_template_kwargs` must be a dict, got str"):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", chat_template_kwargs="enable_thinking=false")


@pytest.mark.parametrize("family", ["qwen3_5_think", "gemma4_v5"])
def test_a_switch_that_is_not_a_bool_is_refused_by_the_collator_and_per_row(family, tmp_path):
    with pytest.raises(ValueError, match=r"`chat_template_kwargs.enable_thinking` must be true or false, got the int 0"):
        collator(family, template_kwargs={"enable_thinking": 0})
    answer = row(user(IMAGE, "Colour?"), assistant("Red."))
    rows = [
        {**answer, "chat_template_kwargs": {"enable_thinking": value}}
        for value in (False, None, "false", 0, "no")
    ]
    got = reasons(collator(family), rows)
    assert got[:2] == ["", ""]
    for reason, value in zip(got[2:], ("false", 0, "no")):
        assert reason.startswith(f"`chat_template_kwargs.enable_thinking` must be true or false, got the "
                                 f"{type(value).__name__} {value!r}"), reason
    with pytest.raises(RowError, match=r"batch row 1: `chat_template_kwargs.enable_thinking` must be true or false"):
        collator(family)([rows[0], rows[2]])
    # Before training, validation names the row.
    model, processor = tiny(family)
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(InvalidRowsError, match=r"row 0: `chat_template_kwargs.enable_thinking` must be true or false"):
        VLSFTTrainer(model, args=args, train_dataset=Dataset.from_list([rows[2], answer]), processing_class=processor)


def test_a_custom_templates_own_switch_is_checked_too():
    template = training_template("qwen3_vl").replace(
        "{%- for message in messages %}", "{%- if shout %}SHOUT{%- endif %}{%- for message in messages %}", 1
    )
    assert template != training_template("qwen3_vl")
    assert "shout" in boolean_switches(template)
    processor = tiny("qwen3_vl")[1]
    with pytest.raises(ValueError, match=r"`chat_template_kwargs.shout` must be true or false, got the str 'off'"):
        VisionChatCollator(processor, template, template_kwargs={"shout": "off"})
    custom = VisionChatCollator(processor, template, template_kwargs={"shout": True})
    assert "SHOUT" in custom.render(row(user("Hi"), assistant("Hello.")))[0]
    assert reasons(custom, [row(user("Hi"), assistant("Hello."), chat_template_kwargs={"shout": "off"})])[0].startswith(
        "`chat_template_kwargs.shout` must be true or false"
    )


# -- 2. reasoning markers are structure only where the template parses them ------------------------------------------

MARKERS = {"qwen3_5_think": ("<think>", "</think>"), "qwen3_vl": ("<think>", "</think>"),
           "gemma4_v5": ("<|channel>", "<channel|>")}


@pytest.mark.parametrize("family", ["qwen3_5_think", "gemma4_v5"])
def test_a_marker_inside_a_reasoning_field_is_refused(family):
    opening, closing = MARKERS[family]
    question = user(IMAGE, "Colour?")
    rows = [
        row(question, thinker("Red.", reasoning_content="It is red.")),
        row(question, thinker("Red.", reasoning_content=f"It is {closing} red.")),
        row(question, thinker("Red.", reasoning_content=f"{opening}It is red.")),
        row(question, thinker("Red.", reasoning=f"It is {closing} red.")),
    ]
    got = reasons(collator(family), rows)
    assert got[0] == ""
    for reason, (field, token) in zip(got[1:], [("reasoning_content", closing), ("reasoning_content", opening),
                                                ("reasoning", closing)]):
        assert reason.startswith(
            f"message 1 `{field}` contains the control token {token}, the reasoning block's own marker: the template "
            "writes the field verbatim, so the block would end there and the model learn to close its reasoning "
            "mid-thought; remove it, or train on it as plain text with `escape_control_tokens: true`"
        ), reason


@pytest.mark.parametrize("family", ["qwen3_5_think", "qwen3_vl"])
def test_markers_in_the_content_are_structure_only_as_one_leading_block_without_a_reasoning_field(family):
    question = user("Colour?")
    block = "<think>\nAll red.\n</think>\n\nRed."
    rows = [
        row(question, assistant(block)),  # what the model generates: structure
        row(question, thinker(block, reasoning_content="All red.")),  # reasoning given twice
        row(question, assistant(block + " Or </think> maybe.")),  # a second closing marker
        row(question, assistant("Red. <think>\nsure\n</think>\n\n")),  # a block after the answer began
        row(question, assistant("Use <think> tags.")),  # an opening marker alone
    ]
    got = reasons(collator(family), rows)
    assert got[0] == ""
    assert got[1].startswith("message 1 contains the control tokens <think>, </think> in its content next to a "
                             "reasoning field"), got[1]
    for reason in got[2:]:
        assert reason.startswith("message 1 contains the control token") and "not as one reasoning block at the start" in reason, reason
    assert all("escape_control_tokens: true" in reason for reason in got[1:])


def test_escaping_trains_markers_in_the_reasoning_as_text_and_weighs_the_real_block():
    family = "qwen3_5_think"
    tokenizer = tiny(family)[1].tokenizer
    closing_id = tokenizer.convert_tokens_to_ids("</think>")
    spoof = row(user(IMAGE, "Colour?"), thinker("Red.", reasoning_content="It says </think> here."))
    escaping = collator(family, escape_control_tokens=True, reasoning_weight=0.5)
    assert reasons(escaping, [spoof]) == [""]
    batch = escaping([spoof])
    labels, weights = batch["labels"][0], batch["label_weights"][0]
    supervised = labels[labels != IGNORE_INDEX]
    # One closing marker trains as the control token (the real one), the spelled-out one as text.
    assert int((supervised == closing_id).sum()) == 1
    assert tokenizer.decode(supervised) == "It says </think> here.\n</think>\n\nRed.<|im_end|>"
    # `reasoning_weight` covers the whole reasoning up to the real marker, not up to the spelled-out one.
    kept = weights[labels != IGNORE_INDEX]
    marker = int((supervised == closing_id).nonzero()[0])
    assert bool((kept[: marker + 1] == 0.5).all()) and bool((kept[marker + 1 :] == 1.0).all())


# -- 3. reasoning the template does not render in a trained turn ------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl", "gemma3", "idefics3", "gemma4_v2"])
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_a_template_does_not_render_is_refused_by_row(family, field):
    reasoned = row(user(IMAGE, "Colour?"), thinker("Red.", **{field: "All of it is red."}))
    plain = row(user(IMAGE, "Colour?"), assistant("Red."))
    got = reasons(collator(family), [plain, reasoned])
    display = FAMILIES[family].display_name
    assert got[0] == ""
    assert got[1].startswith(
        f"message 1 has `{field}`, but the chat template ({display}) does not render it in this trained turn: the "
        "reasoning would be dropped and the answer trained without it; "
    ), got[1]
    assert got[1].endswith("or remove the field to train the answer alone")
    with pytest.raises(RowError, match=rf"batch row 1: message 1 has `{field}`, but the chat template"):
        collator(family)([plain, reasoned])


def test_the_fix_offered_is_one_that_renders_it():
    reasoned = row(user(IMAGE, "Colour?"), thinker("Red.", reasoning_content="All of it is red."))
    # Qwen3-VL writes reasoning inline in the content: that row trains.
    assert "write it at the start of the content as the model generates it (<think>" in reasons(collator("qwen3_vl"), [reasoned])[0]
    inline = row(user(IMAGE, "Colour?"), assistant("<think>\nAll of it is red.\n</think>\n\nRed."))
    assert reasons(collator("qwen3_vl"), [inline]) == [""]
    # An earlier Gemma 4 revision renders an answer's reasoning under `reasoning_history: keep` only.
    got = reasons(collator("gemma4"), [reasoned])[0]
    assert "set `reasoning_history: keep`" in got
    assert reasons(collator("gemma4", template_kwargs={"reasoning_history": "keep"}), [reasoned]) == [""]
    # The release revision renders none: keep is not offered.
    assert "reasoning_history" not in reasons(collator("gemma4_v2"), [reasoned])[0]
    # Where the template renders it, nothing is refused; a history turn's reasoning dropped under drop is context.
    history = row(user("Hi"), thinker("Hello.", reasoning_content="A greeting."), user(IMAGE, "Colour?"),
                  thinker("Red.", reasoning_content="All of it is red."))
    for family in ("qwen3_5_think", "qwen3_6", "qwen3_8", "gemma4_v5"):
        assert reasons(collator(family), [reasoned, history]) == ["", ""], family


# -- 4. a reasoning field is an assistant's string ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen3_5_think", "gemma4_v5", "qwen3_vl"])
def test_reasoning_that_is_not_a_string_is_refused_by_row(family):
    question = user(IMAGE, "Colour?")
    rows = [
        row(question, thinker("Red.", reasoning_content=["Look.", "It is red."])),
        row(question, thinker("Red.", reasoning_content=3)),
        row(question, thinker("Red.", reasoning={"step": 1})),
        row({**user(IMAGE, "Colour?"), "reasoning_content": "Ask."}, assistant("Red.")),
    ]
    got = reasons(collator(family), rows)
    assert got[0].startswith("message 1 `reasoning_content` must be a string, got list ['Look.', 'It is red.']: the "
                             "template renders only a string, and would train an empty reasoning block; join the steps")
    assert got[1].startswith("message 1 `reasoning_content` must be a string, got int 3")
    assert got[2].startswith("message 1 `reasoning` must be a string, got dict {'step': 1}")
    assert got[3].startswith("message 0 is a 'user' message with `reasoning_content`; only assistant turns carry reasoning")
    with pytest.raises(RowError, match=r"batch row 0: message 1 `reasoning_content` must be a string"):
        collator(family)(rows[:1])


# -- 25. the history rule, named ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen3_5_think", "qwen3_6"])
def test_a_row_with_only_history_to_train_names_the_history_rule_and_the_switch(family):
    history_only = row(user(IMAGE, "Colour?"), thinker("Red.", reasoning_content="All red."), user("Thanks."))
    got = reasons(collator(family), [history_only])[0]
    assert got.startswith(
        "no supervised token: the row's assistant turns all come before its last user message, and under "
        "`reasoning_history: drop` the template renders such history turns as the stock template does"
    ), got
    assert "set `reasoning_history: keep` to render and train every turn with its reasoning" in got
    assert ("`preserve_thinking: true`" in got) == (family == "qwen3_6")
    assert reasons(collator(family, template_kwargs={"reasoning_history": "keep"}), [history_only]) == [""]


@pytest.mark.parametrize("family", ["gemma4_v2", "gemma4_v3"])
def test_a_list_valued_system_prompt_is_never_trained_as_python_text(family):
    """Gemma 4's v2 and v3 templates write the system prompt with a string filter: a list of text items (as TRL's data
    path gives every message) rendered as `[{'type': 'text', ...}]`. It is given as its string, as at inference, and
    the row equals the same row with a string system prompt."""
    import torch

    from tests.conftest import _shapes
    from vlsft.collator import VisionChatCollator
    from vlsft.templates import training_template
    from vlsft.testing.tiny_families import build_tiny

    _, processor = build_tiny(family)
    collate = VisionChatCollator(processor, training_template(family))
    row, _ = _shapes()["system_list"]
    as_list = collate([row])
    text = processor.tokenizer.decode(as_list["input_ids"][0])
    assert "'type'" not in text and "Be brief." in text
    system = row["messages"][0]
    as_string = {**row, "messages": [{**system, "content": system["content"][0]["text"]}, *row["messages"][1:]]}
    assert torch.equal(collate([as_string])["input_ids"], as_list["input_ids"])
