"""Row validation at trainer init: every bad row is named (`row N: reason`) before the first step, `invalid_rows="skip"`
trains on the good rows only, and validation agrees exactly with what the collator trains on."""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import io
import json
import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset, Features, Image, IterableDataset, List, Value, load_dataset

from tests.conftest import IMAGE, assistant, image, user
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.templates import resolve_training_template
from vlsft.data.training_rows import TrainingRowError
from vlsft.data.validation import (
    InvalidRowsError,
    RowChecker,
    validate_datasets,
    validate_rows,
)
from vlsft.data.validation_cache import VERDICT_MODULES
from vlsft.data.validation_report import MAX_LISTED_ROWS
from vlsft.tokens import image_token_runs

MAX_LENGTH = 64
LONG_PROMPT = " ".join(["Describe the colour, the shape and the position of every object you can see."] * 6)


def collator_for(processor, max_length=None, **kwargs):
    return VisionChatCollator(processor, resolve_training_template(processor.chat_template), max_length=max_length, **kwargs)


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=1,
        max_length=MAX_LENGTH,
        dataset_num_proc=None,
    )
    return VLSFTConfig(**{**values, **overrides})


@pytest.fixture
def image_files(tmp_path):
    """Paths of a good PNG, a missing file and a corrupt PNG (a valid header, then garbage)."""
    good = tmp_path / "good.png"
    image((200, 30, 30)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60] + b"\x00garbage" * 20)
    return {"good": str(good), "missing": str(tmp_path / "no_such_image.png"), "corrupt": str(corrupt)}


def good_row(path, n=0):
    return {"id": n, "messages": [user(IMAGE, f"What is shown in picture {n}?"), assistant("A red square.")], "images": [path]}


def bad_rows(files):
    """The independent check's six bad rows: (name, row, what the error must say)."""
    good = files["good"]
    return [
        ("missing image", {**good_row(files["missing"])}, f"image 0 not found: {files['missing']}"),
        ("corrupt image", {**good_row(files["corrupt"])}, "image 0 cannot be decoded"),
        ("two images, one placeholder", {**good_row(good), "images": [good, good]}, "1 image placeholder(s) but 2 image(s)"),
        ("no assistant turn", {**good_row(good), "messages": [user(IMAGE, "Hello?")]}, "no assistant turn"),
        (
            "max_length cuts image tokens",
            {**good_row(good), "messages": [user(LONG_PROMPT, IMAGE), assistant("Red.")]},
            f"max_length={MAX_LENGTH} cuts image tokens",
        ),
        (
            "max_length cuts every assistant token",
            {**good_row(good), "messages": [user(IMAGE, LONG_PROMPT), assistant("Red.")]},
            f"max_length={MAX_LENGTH} leaves no supervised token",
        ),
    ]


def dataset_with_bad_row_3(files, bad, rows=8):
    data = [good_row(files["good"], n) for n in range(rows)]
    data[3] = {**bad, "id": 3}
    return Dataset.from_list(data)


# -- the independent check: each bad row as row 3, an error before any step; then skip trains on the good rows ------


@pytest.mark.parametrize("case", range(6), ids=[name for name, *_ in bad_rows({"good": "", "missing": "", "corrupt": ""})])
def test_bad_row_3_stops_the_trainer_before_any_step(tiny, tmp_path, image_files, case):
    model, processor = tiny
    _, bad, expected = bad_rows(image_files)[case]
    with pytest.raises(InvalidRowsError) as error:
        VLSFTTrainer(copy.deepcopy(model), args=config(tmp_path), train_dataset=dataset_with_bad_row_3(image_files, bad), processing_class=processor)
    assert isinstance(error.value, ValueError)
    assert f"row 3: {expected}" in str(error.value)
    assert [problem.index for problem in error.value.problems] == [3]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class RecordingCollator(VisionChatCollator):
    """The training collator, recording the id of every row it collates."""

    seen: list[int]

    def __call__(self, rows):
        self.seen.extend(row["id"] for row in rows)
        return super().__call__(rows)


def test_skip_trains_on_the_good_rows_only(tiny, tmp_path, image_files, caplog):
    model, processor = tiny
    good = image_files["good"]
    data = [good_row(good, n) for n in range(12)]
    for n, (_, bad, _) in zip((1, 3, 5, 7, 9, 11), bad_rows(image_files)):
        data[n] = {**bad, "id": n}
    args = config(tmp_path, invalid_rows="skip", max_steps=-1, num_train_epochs=1, per_device_train_batch_size=2)
    collator = RecordingCollator(processor, resolve_training_template(processor.chat_template), max_length=MAX_LENGTH)
    collator.seen = []
    with caplog.at_level(logging.WARNING, logger="vlsft.data.validation"):
        trainer = VLSFTTrainer(
            copy.deepcopy(model), args=args, data_collator=collator, train_dataset=Dataset.from_list(data), processing_class=processor
        )
    good_ids = [0, 2, 4, 6, 8, 10]
    assert trainer.train_dataset["id"] == good_ids
    log = caplog.text
    assert "dropped 6 of 12 train rows" in log
    for n, (_, _, expected) in zip((1, 3, 5, 7, 9, 11), bad_rows(image_files)):
        assert f"row {n}: {expected}" in log
    trainer.train()
    assert trainer.state.global_step == 3
    assert sorted(collator.seen) == good_ids


def test_without_validation_the_bad_row_fails_only_in_training(tiny, tmp_path, image_files):
    """Without the check, the same row only fails mid-training; the error still names its dataset row and the fix."""
    model, processor = tiny
    _, bad, _ = bad_rows(image_files)[0]
    trainer = VLSFTTrainer(
        copy.deepcopy(model),
        args=config(tmp_path, validate_rows=False),
        train_dataset=dataset_with_bad_row_3(image_files, bad),
        processing_class=processor,
    )
    with pytest.raises(TrainingRowError, match=r"train dataset row 3 failed .*not found.*invalid_rows: skip"):
        trainer.train()


# -- messages, eval datasets, the error itself --------------------------------------------------------------------


def test_malformed_messages_are_named(processor, image_files):
    good = image_files["good"]
    rows = [
        {"messages": [{"role": "bot", "content": "hi"}, assistant("Hello.")], "images": []},
        {"messages": [user("Hi"), {"role": "assistant", "content": [{"type": "audio"}]}], "images": []},
        {"messages": [user("Hi"), {"role": "assistant", "content": [{"type": "text", "text": None}]}], "images": []},
        {"messages": [user("Hi"), assistant("", [{"type": "function", "function": {"arguments": {}}}])], "images": []},
        {"messages": [], "images": []},
        {"messages": [user("Hi"), {"role": "assistant", "content": 42}], "images": []},
        {"messages": [user("Hi"), assistant("Hey"), {"role": "system", "content": "late"}, assistant("x")], "images": []},
        {"messages": [user("Hi"), {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}], "images": [good]},
        {"messages": [user(IMAGE, "What is <|image_pad|>?"), assistant("A token.")], "images": [good]},
    ]
    reasons = [verdict.reason for verdict in RowChecker(collator_for(processor)).check(rows)]
    assert reasons == [
        "message 0 has unknown role 'bot' (expected one of system, user, assistant, tool)",
        "message 1 content item 0 has type 'audio'; vlsft trains on 'text', 'image' and 'video' items",
        "message 1 content item 0 is a text item without a string 'text'",
        "message 1 tool call 0 has no function name",
        "'messages' must be a non-empty list of messages, got list []",
        "message 1 content must be a string or a list of items, got int 42",
        "message 2 is a system message; the chat template only renders a system message first",
        "the chat template renders 0 of 1 image placeholder(s); images in message 1 (assistant) are dropped; "
        "put images in user or tool messages",
        # The image token spelled out in text is a control token like any other (issue 16, item 4).
        "message 0 contains the control token <|image_pad|>, which would be tokenized as the token itself; remove it, "
        "or train on it as plain text with `escape_control_tokens: true` (`VLSFTConfig(escape_control_tokens=True)`)",
    ]


def test_placeholders_count_in_every_role(processor, image_files):
    """Images in tool messages count (and render); a missing image for a tool placeholder is a mismatch."""
    good = image_files["good"]
    messages = [user(IMAGE, "Zoom."), assistant("", [{"type": "function", "function": {"name": "zoom", "arguments": {}}}])]
    messages.append({"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "zoomed"}]})
    messages.append(assistant("A dot."))
    checker = RowChecker(collator_for(processor))
    ok, short = checker.check([{"messages": messages, "images": [good, good]}, {"messages": messages, "images": [good]}])
    assert ok.reason == ""
    assert short.reason == "2 image placeholder(s) but 1 image(s)"


def test_eval_datasets_are_named_and_the_list_is_capped(processor, tmp_path, image_files):
    good = image_files["good"]
    train = Dataset.from_list([good_row(image_files["missing"] if n % 2 else good, n) for n in range(60)])
    evals = {"val": dataset_with_bad_row_3(image_files, bad_rows(image_files)[3][1])}
    with pytest.raises(InvalidRowsError) as error:
        validate_datasets(train, evals, collator_for(processor), config(tmp_path))
    message = str(error.value)
    assert len(error.value.problems) == 31
    assert "row 1: image 0 not found" in message
    assert "eval dataset 'val' row 3: no assistant turn" not in message  # past the cap: listed as a count
    assert f"... and {31 - MAX_LISTED_ROWS} more invalid row(s)" in message
    assert error.value.problems[-1].dataset == "val" and str(error.value.problems[-1]) == "eval dataset 'val' row 3: no assistant turn"
    assert "invalid_rows='skip'" in message

    single_eval = dataset_with_bad_row_3(image_files, bad_rows(image_files)[3][1])
    with pytest.raises(InvalidRowsError, match="eval dataset 'eval' row 3: no assistant turn"):
        validate_datasets(Dataset.from_list([good_row(good)]), single_eval, collator_for(processor), config(tmp_path))


def test_skip_filters_eval_datasets_and_refuses_an_empty_one(processor, tmp_path, image_files):
    good = image_files["good"]
    train = Dataset.from_list([good_row(good, n) for n in range(4)])
    evals = {"val": dataset_with_bad_row_3(image_files, bad_rows(image_files)[3][1]), "clean": train}
    args = config(tmp_path, invalid_rows="skip")
    new_train, new_evals = validate_datasets(train, evals, collator_for(processor), args)
    assert new_train is train and new_evals["clean"] is train
    assert new_evals["val"]["id"] == [0, 1, 2, 4, 5, 6, 7]

    all_bad = Dataset.from_list([good_row(image_files["missing"], n) for n in range(3)])
    with pytest.raises(InvalidRowsError, match="row 2: image 0 not found"):
        validate_datasets(all_bad, None, collator_for(processor), args)


def test_an_iterable_dataset_is_left_with_a_warning(processor, tmp_path, image_files, caplog):
    rows = [good_row(image_files["missing"])]
    iterable = IterableDataset.from_generator(lambda: iter(rows))
    with caplog.at_level(logging.WARNING, logger="vlsft.data.validation"):
        out, _ = validate_datasets(iterable, None, collator_for(processor), config(tmp_path))
    assert out is iterable
    assert "IterableDataset, whose rows cannot be checked before training" in caplog.text


def test_corrupt_bytes_in_an_image_column_are_found_not_decoded_by_datasets(processor, tmp_path):
    """With an `Image` feature, `datasets` would decode (and fail on) a corrupt image before any check could name it."""
    png = io.BytesIO()
    image().save(png, format="PNG")
    images = [[{"bytes": png.getvalue(), "path": None}] for _ in range(5)]
    images[3] = [{"bytes": png.getvalue()[:50], "path": None}]
    rows = {"messages": [[user(IMAGE, "What?"), assistant("Red.")]] * 5, "images": images}
    messages_feature = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
    dataset = Dataset.from_dict(rows, features=Features({"messages": messages_feature, "images": List(Image())}))
    problems = validate_rows(dataset, collator_for(processor)).problems
    assert [str(problem) for problem in problems][0].startswith("row 3: image 0 cannot be decoded (")
    assert len(problems) == 1


# -- validation agrees with the collator --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (17, 300), (1000, 24), (33, 47), (500, 380), (8, 8)])
def test_token_counts_match_the_collator(processor, shapes, size):
    """Lengths (with image tokens expanded from the image size alone) and supervised counts equal the collator's,
    on every conversation shape and on odd image sizes."""
    rows = [copy.deepcopy(row) for row, _ in shapes.values()]
    for row in rows:
        row["images"] = [image((10, 200, 10), size) for _ in row["images"]]
    # Escaping, so that the shape whose user text spells out the template's tokens is a valid row too.
    for max_length in (None, 200, 60):
        collator = collator_for(processor, max_length, escape_control_tokens=True)
        checker = RowChecker(collator)
        verdicts = checker.check(rows)
        assert RowChecker(collator, fast=False).check(rows) == verdicts  # image sizes alone vs the image processor
        for row, verdict in zip(rows, verdicts):
            full = collator_for(processor, escape_control_tokens=True)([row])
            if max_length is None:
                assert verdict.reason == ""
            elif verdict.reason:  # then the collator refuses the row, or trains on nothing in it
                with pytest.raises(RowError) if "cuts image tokens" in verdict.reason else contextlib.nullcontext():
                    assert int((collator([row])["labels"][0, 1:] != -100).sum()) == 0
                continue
            batch = collator([row])
            assert verdict.num_tokens == int(full["attention_mask"].sum())
            assert verdict.num_supervised_tokens == int((batch["labels"][0, 1:] != -100).sum())
            if row["images"]:
                # Per image: the count validation derives from the size alone, the run of image tokens the
                # collator writes, and the image processor's grid.
                grid_counts = (full["image_grid_thw"].prod(-1) // 4).tolist()
                from_sizes = [checker.image_token_count(i.height, i.width) for i in row["images"]]
                runs = image_token_runs(torch.isin(full["input_ids"][0], torch.tensor(collator.image_feature_token_ids)))
                assert from_sizes == runs == grid_counts


def test_a_row_validation_passes_is_a_row_the_collator_takes(processor, image_files):
    """Sweep max_length over a row with a long prompt around the image: validation flags exactly the lengths at which
    the collator refuses the row (cut image tokens) or produces no supervised token."""
    row = {"messages": [user("Look at this picture.", IMAGE, LONG_PROMPT), assistant("Red.")], "images": [image_files["good"]]}
    for max_length in range(4, 140, 3):
        collator = collator_for(processor, max_length)
        (verdict,) = RowChecker(collator).check([row])
        assert RowChecker(collator, fast=False).check([row]) == [verdict]
        try:
            supervised = int((collator([row])["labels"][0, 1:] != -100).sum())
        except RowError:
            assert "cuts image tokens" in verdict.reason, max_length
            continue
        assert (verdict.reason == "") == (supervised > 0), (max_length, verdict.reason)


# -- parallel and cached -------------------------------------------------------------------------------------------


def test_parallel_validation_matches_and_results_are_cached(processor, tmp_path, image_files, monkeypatch):
    rows = [good_row(image_files["good"], n) for n in range(600)]
    for n in (3, 299, 598):
        rows[n] = good_row(image_files["missing"], n)
    # String content in some rows and item lists in others: `datasets` stores such a column as JSON text, which
    # validation must decode like training does.
    rows[10]["messages"][1]["content"] = "A red square."
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    collator = collator_for(processor, MAX_LENGTH)

    expected = [3, 299, 598]
    assert validate_rows(dataset, collator, num_proc=2).bad_indices == expected
    assert validate_rows(dataset, collator).bad_indices == expected

    # A second run reads the cached verdicts: the checker never runs.
    def must_not_run(self, rows):
        raise AssertionError("validation recomputed a cached result")

    monkeypatch.setattr(RowChecker, "check", must_not_run)
    assert validate_rows(dataset, collator).bad_indices == expected
    # ... but another max_length is another fingerprint.
    with pytest.raises(AssertionError, match="recomputed"):
        validate_rows(dataset, collator_for(processor, MAX_LENGTH + 1))


def vlsft_imports(module: str) -> set[str]:
    """The vlsft modules `module`'s source imports (at the top or inside a function), read from its syntax tree."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module.startswith("vlsft") and importlib.util.find_spec(node.module).submodule_search_locations:
                # `from vlsft.data import rows` imports the module `vlsft.data.rows`
                names = (f"{node.module}.{alias.name}" for alias in node.names)
                found |= {name for name in names if importlib.util.find_spec(name) is not None}
    return {name for name in found if name.startswith("vlsft.")}


def test_the_verdict_cache_key_covers_every_module_the_row_checker_runs():
    """A cached verdict is reused until a module in VERDICT_MODULES changes: a module that decides verdicts but is
    missing from the list would let a stale verdict through after an upgrade. Every vlsft module the row checker
    imports, directly or through another, must be listed (package `__init__` files hold no logic). A module split
    off one of them, or a new one they import, fails here until it is listed."""
    reached, todo = set(), ["vlsft.data.row_checker"]  # `Dataset.map` caches what its `map_batch` returns
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += vlsft_imports(module)
    modules = {name for name in reached if importlib.util.find_spec(name).submodule_search_locations is None}
    assert {"vlsft.collator", "vlsft.data.media_checks", "vlsft.tokens"} <= modules  # the walk follows imports
    assert modules - set(VERDICT_MODULES) == set()


def test_validation_runs_in_the_trainer_for_eval_datasets_too(tiny, tmp_path, image_files):
    model, processor = tiny
    good = Dataset.from_list([good_row(image_files["good"], n) for n in range(4)])
    evals = {"val": dataset_with_bad_row_3(image_files, bad_rows(image_files)[1][1])}
    with pytest.raises(InvalidRowsError, match="eval dataset 'val' row 3: image 0 cannot be decoded"):
        VLSFTTrainer(copy.deepcopy(model), args=config(tmp_path), train_dataset=good, eval_dataset=evals, processing_class=processor)
    trainer = VLSFTTrainer(
        copy.deepcopy(model),
        args=config(tmp_path, invalid_rows="skip"),
        train_dataset=good,
        eval_dataset=evals,
        processing_class=processor,
    )
    assert len(trainer.eval_dataset["val"]) == 7
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_val_loss"]))


def test_row_numbers_follow_the_datasets_order_after_select_and_shuffle(processor, image_files):
    """Row N is the N-th row the trainer would read, also for a dataset with an indices mapping."""
    rows = [good_row(image_files["missing"] if n == 2 else image_files["good"], n) for n in range(10)]
    shuffled = Dataset.from_list(rows).shuffle(seed=1).select(range(1, 10))
    (bad,) = validate_rows(shuffled, collator_for(processor)).bad_indices
    assert shuffled[bad]["id"] == 2


def test_both_ways_of_checking_agree_on_the_bad_rows(processor, image_files):
    """Collators that cannot count image tokens from image sizes are checked by collating the row: same verdicts."""
    rows = [bad for _, bad, _ in bad_rows(image_files)] + [good_row(image_files["good"])]
    collator = collator_for(processor, MAX_LENGTH)
    fast, collated = RowChecker(collator).check(rows), RowChecker(collator, fast=False).check(rows)
    assert RowChecker(collator).fast and not RowChecker(collator, fast=False).fast
    assert [v.reason for v in collated] == [v.reason for v in fast]
    assert [v.reason.split(" (")[0] for v in fast[:6]] == [expected.split(" (")[0] for _, _, expected in bad_rows(image_files)]
    assert fast[6] == collated[6] and fast[6].reason == ""


FAMILIES_TO_CHECK = ["qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl", "gemma3", "idefics3", "smolvlm", "llava_next"]


@pytest.mark.parametrize("family", FAMILIES_TO_CHECK)
def test_validation_agrees_with_the_collator_on_every_family(family, image_files):
    """For every supported family, a row validation passes is one the collator trains on (same length and supervised
    count), and each bad row is one the collator refuses or would train on nothing of."""
    tiny_families = pytest.importorskip("vlsft.testing.tiny_families", reason="the model families are not merged yet")
    _, processor = tiny_families.build_tiny(family)
    template = resolve_training_template(processor.chat_template)
    good = image_files["good"]
    long_text = " ".join(["Describe every object you see."] * 30)
    rows = {
        "good": good_row(good),
        "two images": {**good_row(good), "images": [good, good]},
        "no assistant": {**good_row(good), "messages": [user(IMAGE, "Hello?")]},
        "missing": good_row(image_files["missing"]),
        "corrupt": good_row(image_files["corrupt"]),
        "long prompt": {**good_row(good), "messages": [user(IMAGE, long_text), assistant("Red.")]},
        "image last": {**good_row(good), "messages": [user(long_text, IMAGE), assistant("Red.")]},
    }
    untruncated = VisionChatCollator(processor, template)
    short, long = (int(untruncated([rows[name]])["attention_mask"].sum()) for name in ("good", "long prompt"))
    collator = VisionChatCollator(processor, template, max_length=(short + long) // 2)
    verdicts = dict(zip(rows, RowChecker(collator).check(list(rows.values()))))
    if RowChecker(collator).fast:
        assert list(verdicts.values()) == RowChecker(collator, fast=False).check(list(rows.values()))

    assert verdicts["good"].reason == ""
    batch = collator([rows["good"]])
    assert verdicts["good"].num_tokens == int(batch["attention_mask"].sum())
    assert verdicts["good"].num_supervised_tokens == int((batch["labels"][0, 1:] != -100).sum()) > 0
    assert verdicts["two images"].reason == "1 image placeholder(s) but 2 image(s)"
    assert verdicts["no assistant"].reason == "no assistant turn"
    assert verdicts["missing"].reason.startswith("image 0 not found")
    assert verdicts["corrupt"].reason.startswith("image 0 cannot be decoded")
    assert "leaves no supervised token" in verdicts["long prompt"].reason
    for name in ("long prompt", "image last"):  # where the template puts the image decides which of the two it is
        assert verdicts[name].reason
        try:
            assert int((collator([rows[name]])["labels"][0, 1:] != -100).sum()) == 0, name
            assert "leaves no supervised token" in verdicts[name].reason
        except RowError:
            assert "cuts image tokens" in verdicts[name].reason
