"""vlsft's notes reach the user of `vlsft train` on stderr, once, from the main process: the library logs through
`accelerate.logging` and the command-line entry points show vlsft's loggers (`vlsft.cli.console_logs`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.test_distributed import launch
from tests.test_recipe import REPO, tiny_recipe, write_colour_dataset, write_recipe

NOTE = "note: this run differs from layout `ddp`"


def test_one_process_run_shows_vlsft_notes_on_stderr(tmp_path):
    data = write_colour_dataset(tmp_path / "data", rows=8)
    with open(data, "a") as file:  # one row whose image does not exist: skipped, and the run says so
        bad = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}], "images": ["images/missing.png"]}
        file.write(json.dumps(bad) + "\n")
    raw = tiny_recipe(data, tmp_path / "out", layout={"strategy": "ddp", "gpus_per_node": 2})
    raw["training"].update(max_steps=1, invalid_rows="skip")
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "vlsft.train", "--config", str(recipe)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if NOTE in line]
    assert len(notes) == 1 and notes[0].startswith("vlsft: ") and "1 process(es) instead of 2" in notes[0], result.stderr[-3000:]
    assert "invalid_rows='skip': dropped 1 of" in result.stderr, result.stderr[-3000:]


def test_two_ranks_log_notes_and_answer_accuracy_once(tmp_path):
    """Every rank reaches the same notes and evaluations; each is shown and recorded once (main process)."""
    raw = tiny_recipe(tmp_path, tmp_path / "out", layout={"strategy": "ddp", "gpus_per_node": 4})
    raw["data"] = {
        "train": [{"path": "demo-shapes", "split": "train", "rows": 8}],
        "eval": [{"path": "demo-shapes", "split": "eval", "rows": 2}],
        "eval_answer_accuracy": 2,
    }
    raw["training"].update(eval_strategy="steps", eval_steps=1, max_steps=2, disable_tqdm=False)
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)
    result = launch(["vlsft/train.py", "--config", str(recipe)], processes=2)
    notes = [line for line in result.stderr.splitlines() if NOTE in line]
    assert len(notes) == 1 and "2 process(es) instead of 4" in notes[0], result.stderr[-3000:]
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    evaluations = [entry["step"] for entry in history if "eval_loss" in entry]
    assert evaluations == [1, 2]
    assert [entry["step"] for entry in history if "eval_answer_accuracy" in entry] == evaluations
    # The progress bar shows each logged entry once (main process): the accuracy once per evaluation.
    assert (result.stdout + result.stderr).count("'eval_answer_accuracy':") == len(evaluations)
