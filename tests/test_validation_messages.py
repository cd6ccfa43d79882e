"""Clearer messages and dry-run checks (issue 16): ShareGPT/LLaVA data converted with `format:` (or named with the key
that converts it), the dry run refusing what the run would refuse after loading, clean messages for `--save_strategy
no` and `--resume_from_checkpoint true`, a Hub model without network failing fast, `vlsft inspect --rows 5:2`."""

from __future__ import annotations

import json
import time

import pytest
from datasets import Dataset
from PIL import Image

from tests.conftest import assistant, user
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.cli import main as cli_main
from vlsft.collator import VisionChatCollator
from vlsft.data.formats import convert_conversations
from vlsft.inspection import select_rows
from vlsft.recipes.loading import load_recipe
from vlsft.recipes.schema import RecipeError
from vlsft.recipes.datasets import build_datasets
from vlsft.templates import resolve_training_template
from vlsft.cli.train import main
from vlsft.recipes.model_source import check_model_source
from vlsft.data.validation import validate_rows


def llava_rows(directory):
    directory.mkdir(exist_ok=True)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(directory / "blue.png")
    rows = [
        {"id": n, "image": "blue.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is picture {n}?"},
            {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "Sure?"},
            {"from": "gpt", "value": "Yes."},
        ]}
        for n in range(4)
    ]
    rows[2]["conversations"][1]["from"] = "bot"  # a turn that maps to no role
    path = directory / "llava.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def recipe_file(tmp_path, data_path, training=None, data_source=None, model="tiny-qwen3-vl"):
    training = {"output_dir": str(tmp_path / "out"), "max_steps": 1, "report_to": "none", **(training or {})}
    source = {"path": str(data_path), **(data_source or {})}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"model": {"name_or_path": model}, "data": {"train": [source]}, "training": training}))
    return path


def test_llava_data_names_its_format_and_is_converted_with_the_format_key(tmp_path, processor):
    data = llava_rows(tmp_path / "data")
    with pytest.raises(RecipeError) as error:
        build_datasets(load_recipe(recipe_file(tmp_path, data)))
    assert "has no `messages` column; it looks like the LLaVA format" in str(error.value)
    assert "`format: llava`" in str(error.value)

    train, _ = build_datasets(load_recipe(recipe_file(tmp_path, data, data_source={"format": "llava"})))
    first = train[0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [(item["type"], item["text"]) for item in first["messages"][0]["content"]] == [
        ("image", None), ("text", "What colour is picture 0?")
    ]
    assert first["images"][0]["path"] == str(tmp_path / "data" / "blue.png")
    collator = VisionChatCollator(processor, resolve_training_template(processor.chat_template))
    problems = validate_rows(train, collator).problems
    assert [(p.index, p.reason) for p in problems] == [
        (2, "conversations[1].from is 'bot'; the known speakers are human, user, gpt, assistant, model, system, tool, "
            "observation, function_response")
    ]


def test_a_dataset_without_messages_is_named_in_python_too(tiny, tmp_path):
    model, processor = tiny
    sharegpt = Dataset.from_list([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]}])
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match=r"looks like the ShareGPT format.*`format: sharegpt`.*convert_conversations"):
        VLSFTTrainer(model, args=args, train_dataset=sharegpt, processing_class=processor)
    other = Dataset.from_list([{"prompt": "Hi", "completion": "Hey"}])
    with pytest.raises(ValueError, match=r"has no `messages` column \(columns: \['prompt', 'completion'\]\)"):
        VLSFTTrainer(model, args=args, train_dataset=other, processing_class=processor)
    converted = convert_conversations(sharegpt, "sharegpt")
    assert converted[0]["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "Hey"}]}


@pytest.mark.parametrize(
    "override, message",
    [
        (["--learning_rate", "-1"], "`learning_rate` must be a number >= 0, got -1.0"),
        (["--per_device_train_batch_size", "0"], "`per_device_train_batch_size` must be an integer >= 1, got 0"),
        (["--model.name_or_path", "./no_such_model"], "'./no_such_model' does not exist"),
        (["--resume_from_checkpoint", "true"], "found no complete checkpoint in"),
        (["--resume_from_checkpoint", "some/dir"], "is not a checkpoint directory"),
    ],
)
def test_dry_run_refuses_what_the_run_would(tmp_path, capsys, override, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"messages": [user("Hi"), assistant("Hey")], "images": []}) + "\n")
    assert main(["--config", str(recipe_file(tmp_path, data)), "--dry-run", *override]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_save_strategy_no_and_resume_true_parse_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"messages": [user("Hi"), assistant("Hey")], "images": []}) + "\n")
    recipe = load_recipe(recipe_file(tmp_path, data), ["--save_strategy", "no", "--resume_from_checkpoint", "true"])
    assert recipe.training["save_strategy"] == "no" and recipe.training["resume_from_checkpoint"] == "true"
    assert main(["--config", str(recipe_file(tmp_path, data)), "--dry-run", "--save_strategy", "no"]) == 0


def test_a_hub_model_without_network_fails_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(RecipeError, match="cannot reach the Hub; pass a local path"):
        check_model_source("vlsft-test/no-such-model")
    assert time.monotonic() - start < 10
    assert check_model_source("vlsft-test/no-such-model", reach_hub=False) == "hub"  # a dry run fetches nothing
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RecipeError, match="HF_HUB_OFFLINE is set: cannot reach the Hub; pass a local path"):
        check_model_source("vlsft-test/no-such-model")


def test_an_empty_or_reversed_row_range_is_an_error(tmp_path, capsys):
    for spec in ("5:2", "3:3", "20:"):
        with pytest.raises(ValueError, match="selects no row"):
            select_rows(spec, 10)
    assert select_rows("2:5", 10) == [2, 3, 4]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"messages": [user(f"Hi {n}"), assistant("Hey")]}) + "\n" for n in range(6)))
    assert cli_main(["inspect", "--config", str(recipe_file(tmp_path, data)), "--rows", "5:2"]) == 2
    assert "--rows 5:2 selects no row of the 6-row dataset" in capsys.readouterr().err
