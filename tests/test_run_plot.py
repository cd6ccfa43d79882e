"""The curves of a run (`vlsft.run_plot`): eval loss and answer accuracy by kind against steps, next to chance, drawn
from a trainer_state.json. The real run is `make demo` (tests/test_demo.py, slow); this draws a synthetic history."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from vlsft.run_plot import CURVES_FILE, eval_curves, plot_output_dir, plot_run_curves

HISTORY = [
    {"step": 0, "eval_loss": 6.5},
    {"step": 0, "eval_answer_accuracy": 0.0, "eval_answer_accuracy_colour": 0.0, "eval_answer_accuracy_shape": 0.0},
    {"step": 50, "loss": 3.1, "learning_rate": 1e-3},
    {"step": 100, "eval_loss": 0.4},
    {"step": 100, "eval_answer_accuracy": 0.7, "eval_answer_accuracy_colour": 0.9, "eval_answer_accuracy_shape": 0.5},
    {"step": 200, "eval_loss": 0.1},
    {"step": 200, "eval_answer_accuracy": 0.9, "eval_answer_accuracy_colour": 1.0, "eval_answer_accuracy_shape": 0.8},
]


def test_the_curves_are_read_by_metric_and_kind_in_step_order():
    curves = eval_curves(list(reversed(HISTORY)))
    assert curves["eval_loss"] == [(0, 6.5), (100, 0.4), (200, 0.1)]
    assert curves["all"] == [(0, 0.0), (100, 0.7), (200, 0.9)]
    assert curves["colour"] == [(0, 0.0), (100, 0.9), (200, 1.0)] and set(curves) == {"eval_loss", "all", "colour", "shape"}


def test_a_png_is_drawn_from_a_trainer_state_with_chance(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": HISTORY}))
    (tmp_path / "answer_accuracy.json").write_text(json.dumps({"chance": {"colour": 0.3, "shape": 0.4}}))
    path = plot_output_dir(tmp_path)
    assert path.endswith(CURVES_FILE)
    data = (tmp_path / CURVES_FILE).read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    with Image.open(tmp_path / CURVES_FILE) as image:
        assert image.size == (1100, 420)
        # Not a blank canvas: the lines put many colours on it.
        assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 50


def test_nothing_to_plot_is_an_error_that_says_so(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_run_curves([{"step": 1, "loss": 2.0}], tmp_path / "x.png")
    result = subprocess.run(
        [sys.executable, "-m", "vlsft.run_plot", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "trainer_state.json does not exist" in result.stderr
