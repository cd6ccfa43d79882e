"""`vlsft inspect` / `vlsft.inspect(...)`: rows shown through the training collator itself, supervised tokens marked
exactly where the loss is, token and image-token counts equal to the trainer's, and an HTML page that a real browser
renders with the highlight and the images inline."""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from PIL import Image

import vlsft
from tests.conftest import IMAGE, assistant, image, user
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.cli import main as cli_main
from vlsft.collator import training_collator
from vlsft.inspection import select_rows
from vlsft.inspection.html_page import SUPERVISED_COLOUR, render_html

BLUE = (0, 0, 255)


def args_for(tmp_path, **overrides):
    return VLSFTConfig(**{"output_dir": str(tmp_path / "out"), "report_to": "none", "use_cpu": True, **overrides})


def quiet():
    return io.StringIO()


def test_supervised_segments_are_exactly_the_assistant_turns(processor, shapes, tmp_path):
    """On every conversation shape, the highlighted text is the expected assistant text, and the counts are the
    collator's (what `compute_loss` sees)."""
    names = list(shapes)
    rows = [shapes[name][0] for name in names]
    views = vlsft.inspect(rows, processor, args=args_for(tmp_path), rows=slice(None), file=quiet())
    collator = training_collator(processor, args_for(tmp_path))
    for name, view in zip(names, views):
        expected_turns = shapes[name][1]
        assert [s.text for s in view.segments if s.supervised] == expected_turns, name
        batch = collator([shapes[name][0]])
        assert view.num_tokens == int(batch["attention_mask"].sum())
        assert view.num_supervised_tokens == int((batch["labels"][0, 1:] != -100).sum())
        if "image_grid_thw" in batch:
            assert view.image_tokens == (batch["image_grid_thw"].prod(-1) // 4).tolist(), name
        assert len(view.image_tokens) == len(shapes[name][0]["images"])
        # Nothing is lost: the segments decode back to the whole rendered row.
        rendered = "".join(s.text if s.image is None else "<|image_pad|>" for s in view.segments)
        assert rendered == collator.render(shapes[name][0])[0]


def test_inspect_uses_the_trainers_collator(tiny, tmp_path):
    model, processor = tiny
    dataset = Dataset.from_list([{"messages": [user("Hi"), assistant("Hello.")], "images": []}])
    for overrides in ({}, {"max_length": 48, "assistant_only_loss": False}, {"image_root": str(tmp_path)}):
        args = args_for(tmp_path, **overrides)
        trainer = VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=processor)
        ours = training_collator(processor, args)
        theirs = trainer.data_collator
        for attribute in ("chat_template", "max_length", "pad_to_multiple_of", "image_root", "assistant_only_loss"):
            assert getattr(ours, attribute) == getattr(theirs, attribute), attribute


def test_text_view_markers_colour_and_counts(processor, tmp_path):
    rows = [{"messages": [user(IMAGE, "What colour?"), assistant("Blue.")], "images": [image(BLUE, (64, 96))]}]
    out = quiet()
    (view,) = vlsft.inspect(rows, processor, args=args_for(tmp_path), rows="0", file=out)
    text = out.getvalue()
    assert "[[Blue.<|im_end|>]]" in text
    assert "\x1b[" not in text  # not a terminal: plain markers, no escape codes
    assert f"=== row 0: {view.num_tokens} tokens, {view.num_supervised_tokens} supervised, 2 image tokens (image 0 64x96 -> 2 tokens)" in text
    assert "[image 0: 2 x <|image_pad|>]" in text

    coloured = quiet()
    vlsft.inspect(rows, processor, args=args_for(tmp_path), rows="0", file=coloured, color=True)
    assert "\x1b[30;43mBlue.<|im_end|>\x1b[0m" in coloured.getvalue()
    assert "[[" not in coloured.getvalue().split("\n", 1)[1]


def test_truncated_and_bad_rows_are_shown_not_raised(processor, tmp_path):
    long_prompt = "Please describe everything in this picture in great detail. " * 4
    rows = [
        {"messages": [user(IMAGE, long_prompt), assistant("A blue rectangle on its own.")], "images": [image(BLUE)]},
        {"messages": [user(IMAGE, "Hi")], "images": [str(tmp_path / "missing.png")]},
    ]
    out = quiet()
    truncated, bad = vlsft.inspect(rows, processor, args=args_for(tmp_path, max_length=60), rows="0:2", file=out)
    assert truncated.num_tokens == 60 and truncated.full_length > 60
    assert truncated.problem.startswith(f"max_length=60 leaves no supervised token (row is {truncated.full_length} tokens")
    assert not any(segment.supervised for segment in truncated.segments)
    assert f"60 tokens (truncated from {truncated.full_length})" in out.getvalue()
    assert bad.problem == f"no assistant turn; image 0 not found: {tmp_path / 'missing.png'}"
    assert f"=== row 1: cannot be trained on: {bad.problem}" in out.getvalue()


def test_row_selection():
    assert select_rows("0:5", 3) == [0, 1, 2]
    assert select_rows("2:", 5) == [2, 3, 4]
    assert select_rows("1,4", 5) == [1, 4]
    assert select_rows("-1", 5) == [4]
    assert select_rows(slice(None, None, 2), 5) == [0, 2, 4]
    with pytest.raises(ValueError, match="row 9 does not exist"):
        select_rows("9", 5)
    with pytest.raises(ValueError, match="START:STOP"):
        select_rows("a-b", 5)


def test_vlsft_inspect_is_the_function_and_the_command_lives_in_vlsft_cli_inspect():
    from vlsft.cli.inspect import main
    from vlsft.inspection import inspect

    assert vlsft.inspect is inspect and callable(main)
    # In a fresh interpreter, `import vlsft` alone is enough (the package exports it lazily).
    code = "import vlsft, vlsft.inspection; assert vlsft.inspect is vlsft.inspection.inspect and 'inspect' in vlsft.__all__"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)


# -- the command, from a recipe ------------------------------------------------------------------------------------


@pytest.fixture
def recipe(tmp_path):
    """A recipe on a local JSONL file whose images are relative paths next to it."""
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), BLUE).save(data / "blue.png")
    rows = [
        {"messages": [user(IMAGE, f"Question {n}: what colour?"), assistant(f"Answer {n}: blue.")], "images": ["blue.png"]}
        for n in range(6)
    ]
    (data / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "model:\n  name_or_path: tiny-qwen3-vl\n"
        f"data:\n  train:\n    - path: {data / 'rows.jsonl'}\n  eval_fraction: 0.34\n"
        f"training:\n  output_dir: {tmp_path / 'out'}\n  max_length: 256\n"
    )
    return path


def test_command_from_a_recipe(recipe, tmp_path, capsys):
    page = tmp_path / "rows.html"
    assert cli_main(["inspect", "--config", str(recipe), "--rows", "1:3", "--html", str(page), "--max_length", "200"]) == 0
    out = capsys.readouterr().out
    assert "=== row 1: " in out and "=== row 2: " in out and "=== row 0: " not in out
    assert "[[Answer " in out and "blue.<|im_end|>]]" in out
    assert "image 0 64x64 -> 4 tokens" in out
    assert page.read_text().count("<img src=\"data:image/png;base64,") == 2

    assert cli_main(["inspect", "--config", str(recipe), "--split", "eval", "--rows", "0"]) == 0
    assert "=== row 0: " in capsys.readouterr().out
    assert cli_main(["inspect", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "Recipe file not found" in capsys.readouterr().err


# -- the HTML page in a real browser -------------------------------------------------------------------------------


def find_chromium():
    for name in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def screenshot(browser, page, png, size=(1000, 1400)):
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
        f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", page.as_uri(),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return Image.open(png).convert("RGB")


def count_colour(picture, rgb, tolerance=8):
    return sum(
        count
        for count, pixel in picture.getcolors(maxcolors=1 << 24)
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, rgb))
    )


def test_html_page_in_a_real_browser(processor, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium binary found (Debian: apt-get install chromium)")
    long_answer = "The picture is one flat blue rectangle, with nothing else in it at all. " * 3
    rows = [
        {"messages": [user(IMAGE, "Describe the picture."), assistant(long_answer)], "images": [image(BLUE, (64, 64))]},
        {"messages": [user("And without a picture?"), assistant(long_answer)], "images": []},
    ]
    views = vlsft.inspect(rows, processor, args=args_for(tmp_path), rows="0:2", html=tmp_path / "rows.html", file=quiet())
    assert (tmp_path / "rows.html").read_text() == render_html(views, title="vlsft inspect: dataset (train)")
    (tmp_path / "legend.html").write_text(render_html([], title="vlsft inspect: dataset (train)"))

    shot = screenshot(browser, tmp_path / "rows.html", tmp_path / "rows.png")
    legend_only = screenshot(browser, tmp_path / "legend.html", tmp_path / "legend.png")
    highlight = tuple(int(SUPERVISED_COLOUR[i : i + 2], 16) for i in (1, 3, 5))

    # Not blank: text and boxes drawn, not one flat colour.
    assert len(shot.getcolors(maxcolors=1 << 24)) > 20
    white = count_colour(shot, (255, 255, 255), tolerance=0)
    assert white < shot.width * shot.height * 0.97
    # The supervised highlight fills the two long answers, far more than the legend's one highlighted word.
    assert count_colour(shot, highlight) > 10 * max(1, count_colour(legend_only, highlight))
    assert count_colour(legend_only, BLUE, tolerance=0) == 0
    # The image is drawn inline (at least 96 px wide, as the page asks): a solid blue square.
    assert count_colour(shot, BLUE, tolerance=0) >= 96 * 96


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3", "idefics3", "llava_next"])
def test_every_family_is_shown_as_it_trains(family, tmp_path):
    tiny_families = pytest.importorskip("vlsft.testing.tiny_families", reason="the model families are not merged yet")
    _, processor = tiny_families.build_tiny(family)
    row = {"messages": [user(IMAGE, "What colour?"), assistant("Blue.")], "images": [image(BLUE, (64, 48))]}
    (view,) = vlsft.inspect([row], processor, args=args_for(tmp_path), rows="0", html=tmp_path / "row.html", file=quiet())
    batch = training_collator(processor, args_for(tmp_path))([row])
    assert view.num_tokens == int(batch["attention_mask"].sum())
    assert view.num_supervised_tokens == int((batch["labels"][0, 1:] != -100).sum())
    assert "".join(s.text for s in view.segments if s.supervised).strip().startswith("Blue.")
    image_ids = torch.tensor(getattr(processor, "image_token_ids", None) or [processor.image_token_id])
    assert view.num_image_tokens == int(torch.isin(batch["input_ids"], image_ids).sum()) > 0
    assert sum(s.num_tokens for s in view.segments if s.is_image) == view.num_image_tokens
    assert view.image_tokens in ([view.num_image_tokens], [])  # one run for the image, or tiles
    assert (tmp_path / "row.html").read_text().count("<img ") == 1
