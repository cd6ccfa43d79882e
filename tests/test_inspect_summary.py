"""`vlsft inspect --summary`: a dataset at a glance. Its numbers are the trainer's (validation's row lengths and
supervised counts, the pack plan `packing: true` trains on), and the page holds a histogram per measure."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

import vlsft
from tests.conftest import IMAGE, assistant, user
from vlsft import VLSFTConfig
from vlsft.cli import main as cli_main
from vlsft.collator import training_collator
from vlsft.inspection.summary import histogram, summarize
from vlsft.packing.plan import plan_packs
from vlsft.testing.tiny_video import moving_shape_frames, write_video


def rows_of(count: int, images_per_row) -> list[dict]:
    rows = []
    for n in range(count):
        k = images_per_row(n)
        rows.append({
            "messages": [user(*([IMAGE] * k), "What colour? " * (1 + n % 3)), assistant("Blue." * (1 + n % 5))],
            "images": [Image.new("RGB", (64, 64), (0, 0, 255))] * k,
        })
    return rows


def test_the_summary_counts_what_the_collator_trains_and_plans_the_trainers_packs(processor, tmp_path):
    rows = rows_of(9, lambda n: n % 3)
    rows.append({"messages": [user("no answer")], "images": []})  # cannot be trained on
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=160, seed=3)
    collator = training_collator(processor, args)
    summary = summarize(rows, collator, seed=args.seed)
    for index, row in enumerate(rows[:9]):
        batch = collator([row])
        assert summary.lengths[index] == int(batch["attention_mask"].sum())
        assert summary.supervised[index] == int((batch["labels"][0, 1:] != -100).sum())
    assert summary.images == [n % 3 for n in range(9)] + [0]
    assert list(summary.problems) == [9]
    # The packs are the plan packing trains on: the trainable rows, the run's max_length and seed.
    assert summary.pack_budget == 160
    assert summary.packs == plan_packs(summary.lengths[:9], 160, 3)
    assert sorted(i for pack in summary.packs for i in pack) == list(range(9))


def test_histograms_bin_every_value_once():
    hist = histogram([1, 2, 2, 3, 10], bins=3, integer=True)
    assert sum(hist.counts) == 5 and hist.edges[0] == 1 and hist.edges[-1] > 10
    assert histogram([0.5, None, 0.5]).counts == [2] and histogram([0.5, None]).unknown == 1
    assert histogram([]).counts == []


def test_video_length_is_measured_without_decoding(processor, tmp_path):
    from vlsft.inspection.summary import _video_seconds

    clip = write_video(tmp_path / "clip.mp4", moving_shape_frames(num_frames=8), fps=4)
    assert _video_seconds(str(clip), None) == pytest.approx(2.0)
    assert _video_seconds({"frames": [Image.new("RGB", (8, 8))] * 6, "fps": 3.0}, None) == pytest.approx(2.0)
    assert _video_seconds([Image.new("RGB", (8, 8))] * 6, None) is None  # no frame rate: not measured


def test_the_summary_page_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (0, 0, 255)).save(data / "blue.png")
    rows = [
        {"messages": [user(*([IMAGE] * (n % 3)), f"Question {n}"), assistant("Blue. " * (1 + n))],
         "images": ["blue.png"] * (n % 3)}
        for n in range(12)
    ]
    (data / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model:\n  name_or_path: tiny-qwen3-vl\n"
        f"data:\n  train:\n    - path: {data / 'rows.jsonl'}\n"
        f"training:\n  output_dir: {tmp_path / 'out'}\n  max_length: 128\n"
    )
    page = tmp_path / "summary.html"
    assert cli_main(["inspect", "--config", str(recipe), "--summary", str(page)]) == 0
    out = capsys.readouterr().out
    assert "rows            12 (0 cannot be trained on)" in out and "images per row  0-2, median 1" in out
    html = page.read_text()
    for title in ("Tokens per row", "Supervised share", "Images per row", "Video length", "Packing: "):
        assert title in html
    assert html.count("<svg") == 3  # no video in these rows: that histogram says so instead
    # The images-per-row bars: 4 rows each with 0, 1 and 2 images.
    assert re.findall(r"<title>(\d-\d): (\d+)</title>", html) == [("0-0", "4"), ("1-1", "4"), ("2-2", "4")]
    packed = [int(i) for i in re.findall(r"<td>\d+</td><td>\d+</td><td>([\d, ]+)</td>", html)[0].split(", ")]
    assert packed and all(0 <= i < 12 for i in packed)
    views = vlsft.inspect(config=str(recipe), summary=str(tmp_path / "again.html"), summary_rows="0:4", file=io.StringIO())
    assert views.indices == [0, 1, 2, 3]
