"""Per-turn weights and the ShareGPT / LLaVA formats given bad or unusual input (issue 23, findings 5, 6, 18, 22, 23,
24): weights out of range or contradicting `train` are named by row with the range; `weight` / `train` under
`assistant_only_loss=False` are refused, not ignored; ShareGPT turns keep their `weight` / `train` and train exactly
as the same native rows; turns under another column are mapped with `columns: {conversations: ...}`; `<video>`
markers become video placeholders."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from PIL import Image

from tests.conftest import IMAGE, assistant, image, user
from tests.test_loss import make_trainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.data.formats import convert_conversations
from vlsft.data.validation import InvalidRowsError, validate_rows
from vlsft.recipes.datasets import build_datasets
from vlsft.recipes.loading import load_recipe
from vlsft.recipes.schema import RecipeError
from vlsft.templates import training_template
from vlsft.testing.tiny_video import write_moving_shape

RANGE = "a weight is 0 (context only) or a number from 1e-06 to 1e+06"


@pytest.fixture(scope="module")
def collator(processor):
    return VisionChatCollator(processor, training_template("qwen3_vl"))


def row(*answers):
    """A row with an image and one user question before each assistant answer."""
    messages = []
    for number, answer in enumerate(answers):
        messages += [user(IMAGE, "Colour?") if number == 0 else user("Sure?"), answer]
    return {"messages": messages, "images": [image()]}


# -- finding 18 and 24: weights out of range, contradicting `train` ------------------------------------------------


@pytest.mark.parametrize(
    "keys, reason",
    [
        ({"weight": 1e39}, f"message 1 has weight 1e+39; {RANGE}"),
        ({"weight": 1e-50}, f"message 1 has weight 1e-50; {RANGE}"),
        ({"weight": float("nan")}, f"message 1 has weight nan; {RANGE}"),
        ({"weight": float("inf")}, f"message 1 has weight inf; {RANGE}"),
        ({"weight": -0.5}, f"message 1 has weight -0.5; {RANGE}"),
        ({"weight": True}, f"message 1 has weight True; {RANGE}"),
        ({"weight": "2"}, f"message 1 has weight '2'; {RANGE}"),
        ({"train": True, "weight": 0}, "message 1 has train true and weight 0, which contradict each other (weight 0 "
                                       "means context only); keep one of the two keys"),
        ({"train": False, "weight": 2.0}, "message 1 has train false and weight 2.0, which contradict each other "
                                          "(weight 2.0 means trained); keep one of the two keys"),
    ],
)
def test_bad_weights_name_the_weight_and_the_range_by_row(collator, keys, reason):
    rows = [row(assistant("Red.")), row({**assistant("Red."), **keys}, assistant("Yes."))]
    problems = validate_rows(rows, collator).problems
    assert [(p.index, p.reason) for p in problems] == [(1, reason)]
    with pytest.raises(RowError, match="batch row 0: message 1 has "):  # the collator too (validation off)
        collator([rows[1]])


def test_weights_at_the_ends_of_the_range_train_with_that_weight(collator):
    rows = [row({**assistant("Red."), "weight": 1e6}, {**assistant("Yes."), "weight": 1e-6}),
            row({**assistant("Red."), "train": True, "weight": 2}, {**assistant("Yes."), "train": False, "weight": 0})]
    assert validate_rows(rows, collator).problems == []
    weights = collator(rows)["label_weights"]
    assert sorted(set(weights[0].tolist())) == [0.0, pytest.approx(1e-6), 1e6]
    assert sorted(set(weights[1].tolist())) == [0.0, 2.0]


# -- finding 5: `weight` / `train` with assistant_only_loss=False --------------------------------------------------


def test_turn_keys_under_plain_language_modelling_are_refused_by_row(processor, tiny, tmp_path):
    lm = VisionChatCollator(processor, training_template("qwen3_vl"), assistant_only_loss=False)
    fix = "but with `assistant_only_loss: false` every token trains at weight 1; set `assistant_only_loss: true` " \
          "(the default) to weigh turns, or remove the key"
    rows = [
        row(assistant("Red.")),
        row({**assistant("Red."), "train": False}, assistant("Yes.")),
        row({**assistant("Red."), "weight": 0.5}),
        row({**assistant("Red."), "weight": 1.0, "train": True}),  # asks for what plain modelling does: trained
        {**row(assistant("Red.")), "messages": [{**user(IMAGE, "Colour?"), "weight": 0}, assistant("Red.")]},
        row({**assistant("Red."), "weight": 1e39}),
    ]
    problems = validate_rows(rows, lm).problems
    assert [(p.index, p.reason) for p in problems] == [
        (1, f"message 1 has train false, {fix}"),
        (2, f"message 1 has weight 0.5, {fix}"),
        (4, f"message 0 has weight 0, {fix}"),  # the user turn is trained here, whatever it says
        (5, f"message 1 has weight 1e+39; {RANGE}"),
    ]
    for index in (1, 2, 4, 5):
        with pytest.raises(RowError, match="batch row 0: message "):
            lm([rows[index]])
    lm([rows[3]])
    with pytest.raises(InvalidRowsError, match=r"row 1: message 1 has train false, but with `assistant_only_loss"):
        make_trainer(tiny[0], processor, tmp_path, rows=rows[:2], assistant_only_loss=False)


# -- findings 6, 23 and the meeting of formats and weights -----------------------------------------------------


def sharegpt(*turns, **columns):
    """A ShareGPT row: turns are (from, value) or (from, value, {extra keys})."""
    return {"conversations": [{"from": t[0], "value": t[1], **(t[2] if len(t) > 2 else {})} for t in turns], **columns}


def test_sharegpt_turn_weights_are_carried_over_and_checked_like_native_ones(collator):
    rows = [
        sharegpt(("human", "<image>\nColour?", {"weight": 0}), ("gpt", "Blue, no wait.", {"weight": 0}),
                 ("human", "Again?", {"weight": 0}), ("gpt", "Red.", {"weight": 2})),
        sharegpt(("human", "<image>\nColour?"), ("gpt", "Red.", {"train": False}), ("human", "Sure?"), ("gpt", "Yes.")),
        sharegpt(("human", "<image>\nColour?"), ("gpt", "Red.", {"weight": 0}), ("human", "Sure?"),
                 ("gpt", "Yes.", {"train": False})),
        sharegpt(("human", "<image>\nColour?", {"weight": 1}), ("gpt", "Red.")),
        sharegpt(("human", "<image>\nColour?"), ("gpt", "Red.", {"weight": -1})),
    ]
    dataset = Dataset.from_list([{**r, "images": [image()]} for r in rows])
    converted = convert_conversations(dataset, "sharegpt")
    assert [(m["role"], m["weight"], m["train"]) for m in converted[0]["messages"]] == [
        ("user", 0.0, None), ("assistant", 0.0, None), ("user", 0.0, None), ("assistant", 2.0, None)
    ]
    assert converted[1]["messages"][1]["train"] is False
    problems = validate_rows(converted, collator).problems
    assert [(p.index, p.reason) for p in problems] == [
        (2, "no trained assistant turn"),
        (3, "message 0 is a 'user' message with 'weight'; only assistant turns are trained"),
        (4, f"message 1 has weight -1; {RANGE}"),
    ]
    weights = collator([converted[0], converted[1]])["label_weights"]
    assert sorted(set(weights[0].tolist())) == [0.0, 2.0]  # the weight-0 turn is context: it no longer trains at 1
    assert sorted(set(weights[1].tolist())) == [0.0, 1.0]


def test_a_sharegpt_row_with_weights_trains_exactly_as_the_native_row(collator, tmp_path):
    """Through a recipe (JSONL, Arrow storage, the turns under another column name) and without one."""
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "red.png")
    turns = [
        sharegpt(("system", "Be brief."), ("human", "<image>\nColour?"), ("gpt", "Blue, no wait.", {"train": False}),
                 ("human", "Again?"), ("gpt", "Red.", {"weight": 2.5}), ("human", "Sure?"), ("gpt", "Yes.")),
        sharegpt(("human", "What is in <image> here?"), ("gpt", "A red square.", {"weight": 0.5})),
    ]
    native = [
        {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, user(IMAGE, "Colour?"),
                      {**assistant("Blue, no wait."), "train": False}, user("Again?"),
                      {**assistant("Red."), "weight": 2.5}, user("Sure?"), assistant("Yes.")]},
        {"messages": [user("What is in ", IMAGE, " here?"), {**assistant("A red square."), "weight": 0.5}]},
    ]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"dialog": r["conversations"], "image": "red.png"}) + "\n" for r in turns))
    recipe = recipe_file(tmp_path, data, {"format": "sharegpt", "columns": {"conversations": "dialog"}})
    from_recipe, _ = build_datasets(load_recipe(recipe))
    from_python = convert_conversations(Dataset.from_list([{**r, "images": [image()]} for r in turns]), "sharegpt")
    for converted in (from_recipe, from_python):
        assert validate_rows(converted, collator).problems == []
        expected = collator([{**r, "images": [image()]} for r in native])
        batch = collator([converted[0], converted[1]])
        assert set(batch) == set(expected) and "label_weights" in batch
        for key in expected:
            assert torch.equal(batch[key], expected[key]), (key, batch[key], expected[key])


def recipe_file(tmp_path, data_path, source, training=None):
    training = {"output_dir": str(tmp_path / "out"), "max_steps": 1, "report_to": "none", "use_cpu": True,
                "per_device_train_batch_size": 2, "save_strategy": "no", **(training or {})}
    path = tmp_path / "recipe.yaml"
    recipe = {"model": {"name_or_path": "tiny-qwen3-vl"}, "data": {"train": [{"path": str(data_path), **source}]},
              "training": training}
    path.write_text(json.dumps(recipe))
    return path


# -- finding 22: ShareGPT turns under another column name ----------------------------------------------------------


def test_sharegpt_turns_under_another_column_run_through_the_whole_recipe(tmp_path, capsys):
    from vlsft.cli.train import main

    Image.new("RGB", (64, 64), (0, 0, 255)).save(tmp_path / "blue.png")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(
        json.dumps({"turns": [{"from": "human", "value": f"<image>\nColour {n}?"},
                              {"from": "gpt", "value": "Blue.", "weight": 0.5 + n}], "image": "blue.png"}) + "\n"
        for n in range(2)
    ))
    # Without the mapping, the error says how to map the column; the mapping it names is accepted.
    with pytest.raises(RecipeError, match=r"map one with `columns: \{conversations: <column>\}`"):
        build_datasets(load_recipe(recipe_file(tmp_path, data, {"format": "sharegpt"})))
    recipe = recipe_file(tmp_path, data, {"format": "sharegpt", "columns": {"conversations": "turns"}})
    train, _ = build_datasets(load_recipe(recipe))
    assert [m.get("weight") for m in train[1]["messages"]] == [None, 1.5]
    assert main(["--config", str(recipe)]) == 0
    assert (tmp_path / "out").is_dir()

    # The mapping without a ShareGPT / LLaVA format is named, with the fix, when the recipe loads.
    recipe = recipe_file(tmp_path, data, {"columns": {"conversations": "turns"}})
    with pytest.raises(RecipeError, match=r"`data.train.0.columns.conversations` names ShareGPT / LLaVA turns, which "
                                          r"only `format: sharegpt` or `format: llava` reads"):
        load_recipe(recipe)


# -- finding 23: `<video>` markers ---------------------------------------------------------------------------------


def test_video_markers_become_video_placeholders(collator, tmp_path):
    clip = str(write_moving_shape(tmp_path / "right.mp4", num_frames=8, fps=4, size=(64, 48), direction="right"))
    rows = [
        sharegpt(("human", "<video>\nWhich way does it move?"), ("gpt", "Right."), videos=[clip], images=[]),
        sharegpt(("human", "<image> then <video>: same colour?"), ("gpt", "Yes."), videos=[clip], images=[image()]),
        sharegpt(("human", "<video>\n<video>\nSame?"), ("gpt", "Yes."), videos=[clip], images=[]),
    ]
    converted = convert_conversations(Dataset.from_list(rows), "llava")
    assert [(i["type"], i["text"]) for i in converted[0]["messages"][0]["content"]] == [
        ("video", None), ("text", "Which way does it move?")
    ]
    assert [(i["type"], i["text"]) for i in converted[1]["messages"][0]["content"]] == [
        ("image", None), ("text", " then "), ("video", None), ("text", ": same colour?")
    ]
    problems = validate_rows(converted, collator).problems
    assert [p.index for p in problems] == [2]
    assert "2 video placeholder(s) but 1 video(s)" in problems[0].reason
    batch = collator([converted[0], converted[1]])
    assert batch["video_grid_thw"].shape[0] == 2
