"""Bad input, the rest of the way (issue 16): nothing trains silently wrong, nothing crashes mid-run.

Each test would have caught its item: images (EXIF orientation on every route, each PIL mode converted exactly as
every family's image processor converts it, wide grayscale scaled instead of white), truncation, control-token text,
malformed tool calls, the stale validation cache, rows failing mid-run, non-regular files, and clearer messages."""

from __future__ import annotations

import copy
import logging
import os
import signal

import numpy as np
import pytest
import torch
from datasets import Dataset, Image as ImageFeature, load_from_disk
from PIL import Image, ImageOps

from tests.conftest import IMAGE, assistant, image, tool, user, zoom_call
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collator import VisionChatCollator
from vlsft.tokens import IGNORE_INDEX
from vlsft.data.rows import load_image
from vlsft.families import FAMILIES
from vlsft.templates import resolve_training_template
from vlsft.testing.tiny_families import build_tiny
from vlsft.data.training_rows import TrainingRowError
from vlsft.data.validation import InvalidRowsError, RowChecker, validate_datasets, validate_rows

FAMILY_NAMES = list(FAMILIES)


def collator_for(processor, **kwargs):
    return VisionChatCollator(processor, resolve_training_template(processor.chat_template), **kwargs)


def reasons(collator, rows, **kwargs):
    return [verdict.reason for verdict in RowChecker(collator, **kwargs).check(rows)]


def row_with(picture, question="What is shown?"):
    return {"messages": [user(IMAGE, question), assistant("A picture.")], "images": [picture]}


# -- 1. EXIF orientation -------------------------------------------------------------------------------------------


@pytest.fixture
def phone_photo(tmp_path):
    """A 40x20 PNG stored sideways, with EXIF orientation 6 (rotate 90 degrees clockwise to view): red left half,
    blue right half as stored, so upright it is 20 wide, 40 tall, red on top."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    return path


def test_every_image_route_is_upright_and_they_agree(phone_photo, processor):
    upright = np.asarray(ImageOps.exif_transpose(Image.open(phone_photo)).convert("RGB"))
    assert upright.shape == (40, 20, 3) and tuple(upright[0, 0]) == (255, 0, 0) and tuple(upright[-1, 0]) == (0, 0, 255)
    decoded_by_datasets = Dataset.from_dict({"image": [str(phone_photo)]}).cast_column("image", ImageFeature())[0]["image"]
    routes = {
        "path": str(phone_photo),
        "pathlike": phone_photo,
        "bytes": {"bytes": phone_photo.read_bytes(), "path": None},
        "datasets dict (path)": {"bytes": None, "path": str(phone_photo)},
        "PIL as opened": Image.open(phone_photo),
        "PIL decoded by datasets": decoded_by_datasets,
    }
    for name, value in routes.items():
        assert np.array_equal(np.asarray(load_image(value)), upright), name
    # And the collator trains on the upright picture whichever route the row takes.
    collator = collator_for(processor)
    batches = [collator([row_with(value)])["pixel_values"] for value in (str(phone_photo), decoded_by_datasets)]
    assert torch.equal(batches[0], batches[1])
    assert torch.equal(batches[0], collator._process_images([[Image.fromarray(upright)]])["pixel_values"])


# -- 2. PIL modes, exactly as each family's processor ----------------------------------------------------------------


def transparent_images() -> dict[str, Image.Image]:
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, 0..252 left to right
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, gradient  # red, from fully transparent to opaque
    palette = Image.fromarray((gradient // 64).astype(np.uint8), mode="L").convert("P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0] + [0] * 756)
    palette.info["transparency"] = 0  # palette entry 0 (red) is transparent
    return {
        "RGBA fully transparent": Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
        "RGBA gradient alpha": Image.fromarray(rgba, mode="RGBA"),
        "LA": Image.fromarray(np.stack([np.full((64, 64), 40, np.uint8), gradient], -1), mode="LA"),
        "P with transparency": palette,
        "CMYK": Image.fromarray(np.stack([gradient, 255 - gradient, gradient // 2, gradient // 4], -1), mode="CMYK"),
        "L": Image.fromarray(gradient, mode="L"),
        "1": Image.fromarray(gradient > 128).convert("1"),
    }


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_mode_trains_on_what_the_processor_itself_makes_of_it(family):
    """The collator's pixel_values equal the family's image processor's on the raw image (transparency onto white)."""
    _, processor = build_tiny(family)
    collator = collator_for(processor)
    for name, picture in transparent_images().items():
        ours = collator([row_with(picture)])["pixel_values"]
        theirs = processor.image_processor([[picture]], **collator._images_kwargs)["pixel_values"]
        assert torch.equal(ours, theirs), (family, name)
    # The case: a fully transparent image is white, not black (on each family's own pixel scale).
    transparent = collator([row_with(transparent_images()["RGBA fully transparent"])])["pixel_values"]
    white = collator([row_with(Image.new("RGB", (64, 64), (255, 255, 255)))])["pixel_values"]
    black = collator([row_with(Image.new("RGB", (64, 64)))])["pixel_values"]
    assert torch.equal(transparent, white) and not torch.equal(transparent, black)


WIDE = np.tile(np.linspace(0, 1, 64), (64, 1))  # 0..1 left to right


@pytest.mark.parametrize(
    "mode, pixels",
    [
        ("I;16", (WIDE * 65535).round().astype(np.uint16)),
        ("I", (WIDE * 65535).round().astype(np.int32)),  # a 16-bit PNG as older Pillows open it
        ("F", WIDE.astype(np.float32)),
    ],
)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_wide_grayscale_is_scaled_to_8_bits_not_white(family, mode, pixels):
    _, processor = build_tiny(family)
    collator = collator_for(processor)
    picture = Image.fromarray(pixels, mode=mode) if mode != "I;16" else Image.fromarray(pixels)
    assert picture.mode == mode
    loaded = np.asarray(load_image(picture))
    expected_gray = (WIDE * 255).round().astype(np.uint8)
    assert np.abs(loaded[..., 0].astype(int) - expected_gray).max() <= 1 and (loaded[..., 0] == loaded[..., 2]).all()
    assert (loaded == 255).mean() < 0.05  # what `convert("RGB")` (and the processor) made of it: 99% white
    ours = collator([row_with(picture)])["pixel_values"]
    assert torch.equal(ours, processor.image_processor([[Image.fromarray(loaded)]], **collator._images_kwargs)["pixel_values"])
    clipped = processor.image_processor([[picture]], **collator._images_kwargs)["pixel_values"]
    assert not torch.equal(ours, clipped)


def test_a_16_bit_png_file_is_scaled_too(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray((WIDE * 65535).round().astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = np.asarray(load_image(str(path)))
    assert np.abs(loaded[..., 0].astype(int) - (WIDE * 255).round()).max() <= 1


def test_grayscale_outside_every_range_is_refused(processor):
    collator = collator_for(processor)
    negative = Image.fromarray(np.full((8, 8), -3.0, np.float32), mode="F")
    huge = Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I")
    got = reasons(collator, [row_with(negative), row_with(huge)])
    assert got[0].startswith("image 0: F image with pixel values in [-3, -3], outside every range vlsft can scale")
    assert "convert it to an 8-bit image (L or RGB)" in got[0]
    assert "I image with pixel values in [70000, 70000]" in got[1]


# -- 3. truncation -------------------------------------------------------------------------------------------------


def test_a_cut_final_end_of_turn_is_a_bad_row_and_truncation_is_reported(tiny, tmp_path, caplog):
    model, processor = tiny
    long = {"messages": [user("Describe it."), assistant("It is a very long answer about many things. " * 3)], "images": []}
    short = {"messages": [user("Hi"), assistant("Hello.")], "images": []}
    full = collator_for(processor)([long])
    length = int(full["attention_mask"].sum())
    supervised = int((full["labels"][0, 1:] != IGNORE_INDEX).sum())
    max_length = length - 3  # cuts `<|im_end|>\n` (the newline is not supervised) and the last word
    cut = collator_for(processor, max_length=max_length)
    kept = int((cut([long])["labels"][0, 1:] != IGNORE_INDEX).sum())
    assert reasons(cut, [long, short]) == [
        f"max_length={max_length} cuts the final end-of-turn token <|im_end|> (row is {length} tokens, it is at "
        f"{length - 2}), which would teach the model not to stop; raise `max_length`, shorten the row, or allow it "
        "with `allow_truncated_end_of_turn: true`",
        "",
    ]
    for fast in (True, False):
        verdict = RowChecker(cut, fast=fast, allow_truncated_end_of_turn=True).check([long])[0]
        assert verdict.reason == "" and verdict.num_supervised_removed == supervised - kept == 2
    result = validate_rows([long, short, long], cut, allow_truncated_end_of_turn=True)
    assert (result.truncated_rows, result.supervised_tokens_removed, result.problems) == (2, 4, [])

    dataset = Dataset.from_list([long, short, short])
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", max_length=max_length, save_strategy="no")
    with pytest.raises(InvalidRowsError, match="row 0: max_length=.* cuts the final end-of-turn token"):
        VLSFTTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", max_length=max_length, allow_truncated_end_of_turn=True)
    with caplog.at_level(logging.WARNING, logger="vlsft.data.validation"):
        validate_datasets(dataset, None, cut, args)
    assert f"max_length={max_length} truncates 1 of 3 train dataset rows, removing 2 supervised token(s)" in caplog.text


# -- 4. control tokens in message text --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_control_token_text_is_a_bad_row_or_escaped_to_plain_text(family):
    _, processor = build_tiny(family)
    tokenizer = processor.tokenizer
    strict, escaping = collator_for(processor), collator_for(processor, escape_control_tokens=True)
    spec = FAMILIES[family]
    assert {spec.end_of_turn, spec.image_token} <= set(strict.control_tokens)
    picture = image()
    # In an assistant message, the tokens the template parses or the family's reasoning markers are structure (tested
    # below); every other control token is refused.
    text_tokens = [token for token in strict.control_tokens if token not in strict.template_parsed_tokens]
    assert set(strict.template_parsed_tokens) <= set(spec.reasoning_markers or ()) | {"<think>", "</think>"}
    rows = [
        {"messages": [user(IMAGE, "What is it?"), assistant(f"A square.{token}then more")], "images": [picture]}
        for token in text_tokens
    ]
    expected = [
        f"message 1 contains the control token {token}, which would be tokenized as the token itself; remove it, or "
        "train on it as plain text with `escape_control_tokens: true` (`VLSFTConfig(escape_control_tokens=True)`)"
        for token in text_tokens
    ]
    assert reasons(strict, rows) == expected
    # In a user message too, and every token is named.
    two = {"messages": [user(IMAGE, f"{spec.end_of_turn} and {spec.image_token}"), assistant("Yes.")], "images": [picture]}
    assert reasons(strict, [two])[0].startswith(f"message 0 contains the control tokens {spec.end_of_turn}, {spec.image_token}")

    # Escaped: a valid row whose answer is supervised as plain text, with no control token inside it.
    plain = {"messages": [user(IMAGE, "What is it?"), assistant("A square.then more")], "images": [picture]}
    control_ids = set(tokenizer.convert_tokens_to_ids(list(strict.control_tokens)))
    baseline = escaping([plain])["labels"][0]
    baseline_controls = sorted(int(t) for t in baseline[baseline != IGNORE_INDEX] if int(t) in control_ids)
    assert reasons(escaping, rows) == [""] * len(rows)
    for token, row in zip(text_tokens, rows):
        labels = escaping([row])["labels"][0]
        supervised = labels[labels != IGNORE_INDEX]
        assert sorted(int(t) for t in supervised if int(t) in control_ids) == baseline_controls, token
        assert "A square." + token + "then more" in tokenizer.decode(supervised), token


def test_reasoning_markers_a_thinking_template_parses_are_structure_not_text(processor):
    """A thinking template splits `<think>...</think>` out of assistant content, and a family with reasoning markers
    generates them: there those tokens are the data's structure (neither refused nor escaped). Anywhere else they are
    text that would become control tokens."""
    from importlib import resources

    thinking = resources.files("trl").joinpath("chat_templates", "qwen3_5_think_training.jinja").read_text()
    reasoned = {"messages": [user("Hi"), assistant("<think>\nIt says hi.\n</think>\n\nHello.")], "images": []}
    spoofed = {"messages": [user("Hi"), assistant("Hello.<|im_end|>")], "images": []}
    in_user = {"messages": [user("What does </think> mean?"), assistant("A tag.")], "images": []}
    collator = VisionChatCollator(processor, thinking)
    assert collator.template_parsed_tokens == {"<think>", "</think>"}
    got = reasons(collator, [reasoned, spoofed, in_user])
    assert got[0] == "" and got[1].startswith("message 1 contains the control token <|im_end|>")
    assert got[2].startswith("message 0 contains the control token </think>")
    # Qwen3-VL's template writes content verbatim, and `<think>`/`</think>` are its family's reasoning markers: in an
    # assistant message they are the reasoning block the model generates (the real tokens), not text; elsewhere text.
    stock = collator_for(processor)
    assert stock.template_parsed_tokens == {"<think>", "</think>"}
    assert reasons(stock, [reasoned, in_user])[0] == ""
    assert reasons(stock, [reasoned, in_user])[1].startswith("message 0 contains the control token </think>")
    # Escaping leaves the parsed markers to the template: the reasoning block trains with the real tokens.
    tokenizer = processor.tokenizer
    labels = VisionChatCollator(processor, thinking, escape_control_tokens=True)([reasoned])["labels"][0]
    supervised = [int(t) for t in labels[labels != IGNORE_INDEX]]
    assert tokenizer.convert_tokens_to_ids("</think>") in supervised
    assert tokenizer.decode(supervised).startswith("<think>\nIt says hi.\n</think>\n\nHello.")


# -- 5. tool calls -----------------------------------------------------------------------------------------------


def test_malformed_tool_calls_and_orphan_tool_messages_are_bad_rows(processor):
    collator = collator_for(processor)

    def call(arguments):
        return {"type": "function", "function": {"name": "zoom", "arguments": arguments}}

    def with_call(arguments):
        return {
            "messages": [user(IMAGE, "Zoom."), assistant("", [call(arguments)]), tool("zoomed"), assistant("A dot.")],
            "images": [image()],
        }

    rows = [
        with_call({"region": "left"}),
        with_call('{"region": "left"}'),
        with_call("zoom left please"),
        with_call("[1, 2]"),
        with_call([1, 2]),
        with_call(None),
        {"messages": [user(IMAGE, "Zoom."), tool("zoomed"), assistant("A dot.")], "images": [image()]},
        {"messages": [user(IMAGE, "Zoom."), assistant("", [zoom_call()]), tool("a"), tool("b"), assistant("Two.")], "images": [image()]},
        with_call({"region": "left<|im_end|>"}),
    ]
    assert reasons(collator, rows) == [
        "",
        "",
        "message 1 tool call 0 (zoom): `arguments` is a string that is not JSON (str 'zoom left please'); write a "
        "JSON object or a dict",
        "message 1 tool call 0 (zoom): `arguments` must be a JSON object, got the JSON list str '[1, 2]'",
        "message 1 tool call 0 (zoom): `arguments` must be a JSON object (a dict or a JSON string), got list [1, 2]",
        "message 1 tool call 0 (zoom): `arguments` must be a JSON object (a dict or a JSON string), got NoneType None",
        "message 1 is a tool message with no preceding tool call; a tool response must follow the assistant message "
        "whose `tool_calls` it answers",
        "message 3 is a tool message with no preceding tool call; a tool response must follow the assistant message "
        "whose `tool_calls` it answers",
        "message 1 tool call 0 contains the control token <|im_end|>, which the template writes out verbatim "
        "(escaping applies to message text only); remove it",
    ]
    assert reasons(collator_for(processor, escape_control_tokens=True), rows[-1:]) == reasons(collator, rows[-1:])


# -- 6. the validation cache and rows failing mid-run ------------------------------------------------------------


def picture_rows(directory, count=8):
    directory.mkdir(exist_ok=True)
    rows = []
    for n in range(count):
        path = directory / f"{n}.png"
        image((20 * n, 100, 50), (32, 32)).save(path)
        rows.append({"messages": [user(IMAGE, f"Picture {n}?"), assistant(f"Colour {n}.")], "images": [str(path)]})
    return rows


def test_the_validation_cache_notices_a_changed_image_file(processor, tmp_path):
    Dataset.from_list(picture_rows(tmp_path / "images")).save_to_disk(tmp_path / "data")
    dataset = load_from_disk(tmp_path / "data")  # on disk, so `Dataset.map` caches the verdicts
    collator = collator_for(processor)
    assert validate_rows(dataset, collator).problems == []
    assert validate_rows(load_from_disk(tmp_path / "data"), collator).problems == []  # from the cache
    (tmp_path / "images" / "5.png").write_bytes(b"")  # emptied after the validated run
    problems = validate_rows(load_from_disk(tmp_path / "data"), collator).problems
    assert [(p.index, p.reason.split(" (")[0]) for p in problems] == [(5, "image 0 cannot be decoded")]


def mid_run_trainer(tiny, tmp_path, rows, **overrides):
    model, processor = tiny
    args = VLSFTConfig(
        output_dir=str(tmp_path / "out"), report_to="none", max_steps=4, per_device_train_batch_size=2,
        save_strategy="no", logging_steps=1, gradient_checkpointing=False, disable_tqdm=True, **overrides,
    )
    return VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)


def test_a_row_failing_mid_run_is_named_by_its_dataset_index(tiny, tmp_path):
    rows = picture_rows(tmp_path / "images")
    rows[2]["images"] = [str(tmp_path / "missing.png")]  # refused by validation, so the kept rows shift by one
    trainer = mid_run_trainer(tiny, tmp_path, rows, invalid_rows="skip")
    (tmp_path / "images" / "5.png").write_bytes(b"")  # changes after validation
    with pytest.raises(TrainingRowError) as error:
        trainer.args.invalid_rows = "raise"
        trainer.train()
    message = str(error.value)
    assert message.startswith("train dataset row 5 failed in the middle of training: image cannot be decoded")
    assert "set `invalid_rows: skip`" in message


def test_a_row_failing_mid_run_is_skipped_and_counted(tiny, tmp_path, caplog):
    rows = [{**row, "length": 10 + n} for n, row in enumerate(picture_rows(tmp_path / "images"))]
    # `group_by_length` samples from the dataset's `length` column: the indexed view must keep it working.
    trainer = mid_run_trainer(tiny, tmp_path, rows, invalid_rows="skip", train_sampling_strategy="group_by_length")
    (tmp_path / "images" / "5.png").unlink()
    with caplog.at_level(logging.WARNING, logger="vlsft.data.training_rows"):
        trainer.train()
    assert trainer.state.global_step == 4  # one epoch (8 rows, 2 a step): row 5 comes up once
    assert trainer.rows_skipped_in_training["train dataset"] == 1
    assert "dropped train dataset row 5 during training: image file not found" in caplog.text


def test_an_eval_row_failing_mid_run_is_skipped_and_counted(tiny, tmp_path):
    model, processor = tiny
    rows = picture_rows(tmp_path / "images", count=4)
    args = VLSFTConfig(
        output_dir=str(tmp_path / "out"), report_to="none", per_device_eval_batch_size=2, invalid_rows="skip",
        save_strategy="no", disable_tqdm=True,
    )
    evals = {"a": Dataset.from_list(rows[:2]), "b": Dataset.from_list(rows[2:])}
    trainer = VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows), eval_dataset=evals, processing_class=processor)
    (tmp_path / "images" / "3.png").unlink()
    metrics = trainer.evaluate()
    assert "eval_a_loss" in metrics and "eval_b_loss" in metrics
    assert trainer.rows_skipped_in_training == {"eval dataset 'b'": 1}


# -- 7. non-regular files, remote images, `images` not a list ------------------------------------------------------


def test_a_fifo_or_a_directory_is_refused_without_blocking(processor, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("validation blocked on a FIFO"))
    signal.alarm(30)
    try:
        got = reasons(collator_for(processor), [row_with(str(fifo)), row_with(str(tmp_path))])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert got == [
        f"image 0: image path {fifo} is a FIFO; an image must be a regular file",
        f"image 0: image path {tmp_path} is a directory; an image must be a regular file",
    ]


def test_remote_images_say_they_are_not_fetched(processor):
    urls = ["https://example.com/cat.png", "http://example.com/cat.png", "file:///tmp/cat.png"]
    got = reasons(collator_for(processor), [row_with(url) for url in urls] + [row_with({"bytes": None, "path": urls[0]})])
    for url, reason in zip(urls + urls[:1], got):
        assert reason == (
            f"image 0: {url} is a remote image, and vlsft does not fetch remote images: download it and pass its "
            "local path (or its bytes as `{'bytes': ...}`)"
        )


def test_images_given_as_one_value_say_they_must_be_a_list(processor, tmp_path):
    path = tmp_path / "t.png"
    image().save(path)
    rows = [{**row_with(None), "images": str(path)}, {**row_with(None), "images": image()}]
    got = reasons(collator_for(processor), rows)
    assert got[0].startswith("`images` must be a list, got str ") and "write `images: [value]`" in got[0]
    assert got[1].startswith("`images` must be a list, got Image ")
