"""Checkpoints survive a kill (issue 16): a real training run killed with SIGKILL in the middle of writing a checkpoint
leaves no half-written `checkpoint-N`, and resuming ends at exactly the uninterrupted run's weights; an incomplete newer
checkpoint is skipped with a warning naming the one used; SIGTERM saves a checkpoint and exits cleanly."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerControl, TrainerState

from tests.scripts.checkpoint_run import config, trainer
from vlsft.checkpoints import STAGING_DIR, PreemptionCallback, incomplete_reason, resume_argument

SCRIPT = Path(__file__).parent / "scripts" / "checkpoint_run.py"
TIMEOUT = 300


def start(output_dir, *arguments):
    # The subprocess computes with as many threads as this process (whose in-process runs it is compared with bit for
    # bit): CPU kernels may sum in another order with another thread count.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(SCRIPT), "--output_dir", str(output_dir), *map(str, arguments)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(process, condition, what):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{process.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.2)


def weights(run):
    return {name: tensor.detach().clone() for name, tensor in run.model.state_dict().items()}


def test_a_run_killed_mid_save_resumes_to_the_uninterrupted_weights(tmp_path, caplog):
    straight = trainer(str(tmp_path / "straight"), max_steps=6, save_steps=2)
    straight.train()
    expected = weights(straight)

    output_dir = tmp_path / "killed"
    process = start(output_dir, "--max_steps", 6, "--save_steps", 2, "--hang_in_save_at", 4)
    wait_for(process, (output_dir / "in_save").exists, "the save of checkpoint 4")
    process.send_signal(signal.SIGKILL)  # weights of checkpoint 4 written, its optimizer state not yet
    process.wait(timeout=60)

    # Nothing half-written carries a checkpoint's name: checkpoint 4 exists only in the staging directory.
    assert incomplete_reason(str(output_dir / "checkpoint-2")) == ""
    assert not (output_dir / "checkpoint-4").exists()
    staged = output_dir / STAGING_DIR / "checkpoint-4"
    assert (staged / "model.safetensors").exists() and incomplete_reason(str(staged)) == "no trainer_state.json"

    # What a non-atomic writer (the stock Trainer) leaves: the half-written checkpoint under its final name. Resuming
    # with `True` skips it, says so, and resumes from checkpoint 2.
    shutil.move(str(staged), str(output_dir / "checkpoint-4"))
    resumed = trainer(str(output_dir), max_steps=6, save_steps=2)
    with caplog.at_level(logging.WARNING, logger="vlsft.checkpoints"):
        resumed.train(resume_from_checkpoint=True)
    warning = " ".join(record.getMessage() for record in caplog.records if record.name == "vlsft.checkpoints")
    assert "Skipping incomplete checkpoint(s):" in warning and "checkpoint-4 (no trainer_state.json)" in warning
    assert f"Resuming from {output_dir / 'checkpoint-2'}" in warning
    assert resumed.state.global_step == 6
    result = weights(resumed)
    different = [name for name in expected if not torch.equal(result[name], expected[name])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
    # The resumed run saved checkpoint 4 again, over the incomplete one, and left no staging directory.
    assert incomplete_reason(str(output_dir / "checkpoint-4")) == "" and not (output_dir / STAGING_DIR).exists()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    output_dir, marker = tmp_path / "run", tmp_path / "steps"
    process = start(output_dir, "--max_steps", 500, "--save_steps", 1000, "--step_marker", marker)
    wait_for(process, lambda: marker.exists() and marker.read_text().strip(), "the first step")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, output[-3000:]
    step = int(output.split("stopped by SIGTERM at ")[1].split()[0])
    assert 1 <= step < 500
    assert incomplete_reason(str(output_dir / f"checkpoint-{step}")) == ""
    assert TrainerState.load_from_json(str(output_dir / f"checkpoint-{step}" / "trainer_state.json")).global_step == step
    assert resume_argument(True, str(output_dir)) == str(output_dir / f"checkpoint-{step}")


def test_sigterm_with_save_strategy_no_stops_without_a_checkpoint(tmp_path):
    class OneProcess:
        num_processes = 1

    callback = PreemptionCallback(OneProcess())
    args, state = config(str(tmp_path), max_steps=5, save_steps=1, save_strategy="no"), TrainerState(global_step=3)
    assert not callback.on_step_end(args, state, TrainerControl()).should_training_stop
    callback._on_sigterm(signal.SIGTERM, None)
    control = callback.on_step_end(args, state, TrainerControl())
    assert control.should_training_stop and not control.should_save and callback.stopped_at_step == 3
    args = config(str(tmp_path), max_steps=5, save_steps=1)
    control = callback.on_step_end(args, state, TrainerControl())
    assert control.should_training_stop and control.should_save


def test_resume_arguments_get_clean_messages(tmp_path):
    assert resume_argument("false", str(tmp_path)) is None and resume_argument(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match="found no complete checkpoint in .*Start without `resume_from_checkpoint`"):
        resume_argument("true", str(tmp_path))  # `--resume_from_checkpoint true` on a command line
    with pytest.raises(ValueError, match="is not a checkpoint directory.*or `true` to resume"):
        resume_argument(str(tmp_path / "nope"), str(tmp_path))


def test_the_best_checkpoint_is_named_where_it_is_published(tmp_path):
    run = trainer(str(tmp_path), max_steps=3, save_steps=1)
    run.args.eval_strategy = run.args.save_strategy  # evaluate at every save, keep the best by eval loss
    run.args.eval_steps, run.args.load_best_model_at_end, run.args.metric_for_best_model = 1, True, "loss"
    run.args.greater_is_better = False
    run.eval_dataset = run.train_dataset.select(range(2))
    run.train()
    best = run.state.best_model_checkpoint
    assert best == str(tmp_path / f"checkpoint-{run.state.best_global_step}") and os.path.isdir(best)
    saved = TrainerState.load_from_json(os.path.join(best, "trainer_state.json"))
    assert saved.best_model_checkpoint == best and STAGING_DIR not in saved.best_model_checkpoint
