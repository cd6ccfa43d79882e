"""A run at a glance: one PNG of the eval loss and of the held-out answer accuracy by kind against the steps, each
kind's chance drawn beside it as a dashed line of the same colour.

`AnswerAccuracyCallback` writes it into `output_dir` at the end of training (`make demo`: `outputs/demo/
eval_curves.png`); `python -m vlsft.run_plot OUTPUT_DIR` draws it again from `trainer_state.json` (chance comes from
the `answer_accuracy.json` the callback writes beside it, when there is one). matplotlib's Agg backend is used, so
no display is needed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

CURVES_FILE = "eval_curves.png"
CHANCE_FILE = "answer_accuracy.json"
ACCURACY_PREFIX = "eval_answer_accuracy"


def eval_curves(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) points of `eval_loss`, overall answer accuracy (`all`) and each kind's accuracy, in step order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        if "eval_loss" in entry:
            curves.setdefault("eval_loss", []).append((step, float(entry["eval_loss"])))
        for key, value in entry.items():
            if key == ACCURACY_PREFIX:
                curves.setdefault("all", []).append((step, float(value)))
            elif key.startswith(ACCURACY_PREFIX + "_"):
                curves.setdefault(key[len(ACCURACY_PREFIX) + 1 :], []).append((step, float(value)))
    return {name: sorted(points) for name, points in curves.items()}


def plot_run_curves(
    log_history: list[dict[str, Any]], path: str | os.PathLike, chance: dict[str, float] | None = None
) -> str:
    """Draw the eval loss (left) and answer accuracy by kind (right) of `log_history` (a `TrainerState`'s) into a
    PNG at `path`, with `chance` per kind as dashed lines. Returns the path. Raises `ValueError` when the history
    holds no evaluation to draw."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    curves = eval_curves(log_history)
    if not curves:
        raise ValueError("the log history holds no `eval_loss` or `eval_answer_accuracy`: nothing to plot")
    chance = chance or {}
    kinds = sorted(name for name in curves if name not in ("eval_loss", "all"))
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        if "eval_loss" in curves:
            steps, values = zip(*curves["eval_loss"])
            loss_axes.plot(steps, values, marker="o", color="black")
        loss_axes.set(title="eval loss", xlabel="step", ylabel="loss")
        loss_axes.grid(alpha=0.3)
        colours = plt.get_cmap("tab10")
        for index, kind in enumerate(kinds):
            steps, values = zip(*curves[kind])
            colour = colours(index % 10)
            accuracy_axes.plot(steps, values, marker="o", color=colour, label=kind)
            if kind in chance:
                accuracy_axes.axhline(chance[kind], color=colour, linestyle="--", linewidth=1)
        if "all" in curves:
            steps, values = zip(*curves["all"])
            accuracy_axes.plot(steps, values, color="black", linewidth=2.5, label="all")
        title = "answer accuracy by kind" + (" (dashed: chance)" if chance else "")
        accuracy_axes.set(title=title, xlabel="step", ylabel="exact-match accuracy", ylim=(-0.02, 1.02))
        accuracy_axes.grid(alpha=0.3)
        if kinds or "all" in curves:
            accuracy_axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return os.fspath(path)


def plot_output_dir(output_dir: str | os.PathLike) -> str:
    """Redraw `output_dir`'s curves from its `trainer_state.json` (and `answer_accuracy.json` for chance)."""
    state_path = os.path.join(output_dir, "trainer_state.json")
    if not os.path.isfile(state_path):
        raise ValueError(f"{state_path} does not exist: pass the output_dir of a finished run")
    with open(state_path, encoding="utf-8") as file:
        history = json.load(file)["log_history"]
    chance = None
    chance_path = os.path.join(output_dir, CHANCE_FILE)
    if os.path.isfile(chance_path):
        with open(chance_path, encoding="utf-8") as file:
            chance = json.load(file).get("chance")
    return plot_run_curves(history, os.path.join(output_dir, CURVES_FILE), chance)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vlsft.run_plot OUTPUT_DIR")
    try:
        print(f"wrote {plot_output_dir(sys.argv[1])}")
    except ValueError as error:
        sys.exit(f"vlsft.run_plot: {error}")
