"""Processes, signals and the launcher under bad input (issue 23): a SIGTERM to the whole process group with
DataLoader workers still saves the checkpoint; a run stopped by SIGTERM exits 128 + 15 on every entry path; launcher
numbers out of range are refused with their range; family-dependent refusals come in the dry run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_recipe import REPO, tiny_recipe, write_colour_dataset, write_recipe
from vlsft.checkpoints import incomplete_reason

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 300
SIGTERM_STATUS = 128 + signal.SIGTERM  # as a shell reports a process ended by SIGTERM


def long_run_recipe(tmp_path: Path, **training) -> Path:
    """A tiny run of many steps that saves only when stopped (save_steps far away)."""
    data = write_colour_dataset(tmp_path / "data", rows=8)
    raw = tiny_recipe(data, tmp_path / "out")
    raw["data"].pop("eval_fraction")
    raw["training"].update(max_steps=500, save_strategy="steps", save_steps=10_000, **training)
    return write_recipe(tmp_path / "recipe.yaml", raw)


def start(command: list[str], log: Path) -> subprocess.Popen:
    """`command` in its own process group (as a batch job is), its output in `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_training(process: subprocess.Popen, log: Path) -> None:
    """Until the run has logged its first step (`logging_steps: 1`)."""
    deadline = time.monotonic() + TIMEOUT
    while "'loss'" not in log.read_text():
        if process.poll() is not None:
            pytest.fail(f"the run ended before its first step:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no step logged in {TIMEOUT} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def finish(process: subprocess.Popen, log: Path) -> int:
    try:
        return process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the run did not stop after SIGTERM:\n{log.read_text()[-3000:]}")


def saved_step(output_dir: Path) -> int:
    """The step of the one complete checkpoint in `output_dir`."""
    checkpoints = [path for path in output_dir.glob("checkpoint-*") if not incomplete_reason(str(path))]
    assert len(checkpoints) == 1, sorted(output_dir.iterdir())
    return int(checkpoints[0].name.split("-")[1])


@pytest.mark.slow  # two tiny runs, ~70 s here
def test_sigterm_to_the_process_group_with_dataloader_workers_saves_a_resumable_checkpoint(tmp_path):
    """Slurm and Kubernetes signal every process of the job, DataLoader workers included. The workers leave the
    signal to the main process, which saves at the end of the step; the run exits 143 and resumes from there."""
    recipe = long_run_recipe(tmp_path, dataloader_num_workers=2)
    log = tmp_path / "run.log"
    process = start([str(BIN / "vlsft"), "train", "--config", str(recipe)], log)
    wait_for_training(process, log)
    os.killpg(process.pid, signal.SIGTERM)
    status = finish(process, log)
    output = log.read_text()
    assert status == SIGTERM_STATUS, output[-3000:]
    assert "stopped by SIGTERM at step" in output and "exited unexpectedly" not in output, output[-3000:]
    step = saved_step(tmp_path / "out")
    assert 1 <= step < 500

    resumed = subprocess.run(
        [str(BIN / "vlsft"), "train", "--config", str(recipe), "--resume_from_checkpoint", "true",
         "--max_steps", str(step + 1)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == step + 1
