"""The done-when check of the embedded demo: the exact command `make demo` runs trains the tiny Qwen3-VL on the
generated shapes, and its evaluation loss falls by at least 20%, with held-out answer accuracy logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_recipe_trains_and_the_eval_loss_falls(tmp_path):
    output_dir = tmp_path / "demo"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--num_processes", "1", "--cpu", "vlsft/train.py"]
    command += ["--config", "recipes/demo.yaml", "--output_dir", str(output_dir)]
    # No network: everything the demo needs is built here.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert len(eval_losses) >= 2, history
    assert eval_losses[-1] <= 0.8 * eval_losses[0], eval_losses
    accuracies = [entry["eval_answer_accuracy"] for entry in history if "eval_answer_accuracy" in entry]
    assert accuracies and accuracies[-1] > 0, history
    # The progress bar and the accuracy are printed.
    assert "eval_answer_accuracy" in result.stdout + result.stderr
    assert "it/s]" in result.stderr or "s/it]" in result.stderr
