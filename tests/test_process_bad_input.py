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


# A DataLoader with 2 workers, prepared by accelerate as the trainer's are, in a process of its own, made as the
# trainer makes it (`leave_stop_signals_to_main`). It handles SIGTERM as the preemption callback does (a flag) and
# goes on; `ready` is written once the workers serve batches, `survived` once 20 batches came after the signal.
WORKERS_SCRIPT = """
import os, signal, sys, time
import torch
from accelerate.data_loader import DataLoaderShard
from vlsft.worker_signals import leave_stop_signals_to_main

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 10**6
    def __getitem__(self, index):
        time.sleep(0.01)
        return index

stop = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
loader = DataLoaderShard(Slow(), batch_size=2, num_workers=2)
leave_stop_signals_to_main(loader)
after = 0
for number, batch in enumerate(loader):
    if number == 5:
        open(os.path.join(sys.argv[1], "ready"), "w").close()
    after += bool(stop)
    if after == 20:
        open(os.path.join(sys.argv[1], "survived"), "w").close()
        break
"""


def test_dataloader_workers_leave_a_process_group_sigterm_to_the_main_process(tmp_path):
    log = tmp_path / "workers.log"
    process = start([sys.executable, "-c", WORKERS_SCRIPT, str(tmp_path)], log)
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / "ready").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"the DataLoader did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGTERM)  # the main process and both workers
    status = finish(process, log)
    assert status == 0 and (tmp_path / "survived").exists(), log.read_text()[-3000:]


def test_the_dataloader_still_ends_its_own_workers_with_sigterm():
    """The DataLoader ends a worker that does not shut down in time with SIGTERM (`Process.terminate`), and
    `multiprocessing` does at exit: that SIGTERM, sent by the main process, still ends the worker."""
    import torch

    from vlsft.worker_signals import WorkersLeaveSignalsToMain, leave_stop_signals_to_main

    loader = torch.utils.data.DataLoader(list(range(100)), batch_size=2, num_workers=2)
    leave_stop_signals_to_main(loader)
    leave_stop_signals_to_main(loader)  # idempotent: one wrapper
    assert isinstance(loader.worker_init_fn, WorkersLeaveSignalsToMain) and loader.worker_init_fn.worker_init_fn is None
    iterator = iter(loader)
    next(iterator)
    worker = iterator._workers[0]
    # The DataLoader's SIGCHLD handler raises for a worker that died while the loader runs (this test ends one on
    # purpose); whether it fires before `join` reaps the worker is a race, so it is held off while the worker ends.
    loader_handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        worker.terminate()
        worker.join(timeout=30)
    finally:
        signal.signal(signal.SIGCHLD, loader_handler)
    assert worker.exitcode == SIGTERM_STATUS
    del iterator


def test_a_run_stopped_by_sigterm_has_exit_status_143():
    """The status every entry path returns (`vlsft.cli.train.run_reporting_bad_rows`) once SIGTERM stopped the run."""
    from transformers import TrainerControl, TrainerState

    from tests.scripts.checkpoint_run import config
    from vlsft.checkpoints import PreemptionCallback

    class OneProcess:
        num_processes = 1

    callback = PreemptionCallback(OneProcess())
    args = config("unused", max_steps=5, save_steps=1)
    callback.on_step_end(args, TrainerState(global_step=2), TrainerControl())
    assert callback.exit_status == 0  # a run that finishes
    callback._on_sigterm(signal.SIGTERM, None)
    callback.on_step_end(args, TrainerState(global_step=3), TrainerControl())
    assert callback.exit_status == SIGTERM_STATUS


def training_child(process: subprocess.Popen) -> int:
    """The one child of the launcher `process` (`accelerate launch` runs the script as its child)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.slow  # a tiny run per entry path, ~40 s each here
@pytest.mark.parametrize("entry", ["python -m vlsft.train", "accelerate launch vlsft/train.py"])
def test_every_entry_path_exits_non_zero_after_sigterm(tmp_path, entry):
    """`python -m vlsft.train` exits 143 itself; `accelerate launch` reports its training process's 143 and exits
    non-zero (accelerate's status for a failed child). `vlsft train`: the process-group test above."""
    recipe = long_run_recipe(tmp_path)
    log = tmp_path / "run.log"
    if entry.startswith("python"):
        process = start([sys.executable, "-m", "vlsft.train", "--config", str(recipe)], log)
    else:
        process = start([str(BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu", "vlsft/train.py",
                         "--config", str(recipe)], log)
    wait_for_training(process, log)
    # The training process alone, as a launcher passes the signal on.
    os.kill(process.pid if entry.startswith("python") else training_child(process), signal.SIGTERM)
    status = finish(process, log)
    output = log.read_text()
    assert "stopped by SIGTERM at step" in output, output[-3000:]
    if entry.startswith("python"):
        assert status == SIGTERM_STATUS, output[-3000:]
    else:
        assert status != 0 and f"non-zero exit status {SIGTERM_STATUS}" in output, output[-3000:]
    assert 1 <= saved_step(tmp_path / "out") < 500


# -- launcher numbers out of range ---------------------------------------------------------------------------------


def tiny_layout_recipe(tmp_path: Path, **layout) -> Path:
    raw = tiny_recipe(tmp_path / "data.jsonl", tmp_path / "out", layout=layout)
    raw["data"] = {"train": [{"path": "demo-shapes", "split": "train", "rows": 8}]}
    return write_recipe(tmp_path / "recipe.yaml", raw)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_processes", "0"], "`--num_processes 0` must be at least 1"),
        (["--num_processes", "-1"], "`--num_processes -1` must be at least 1"),
        (["--num_processes", "two"], "invalid int value: 'two'"),
        (["--main_process_port", "0"], "`--main_process_port 0` is not a TCP port: pass one from 1 to 65535"),
        (["--main_process_port", "-5"], "`--main_process_port -5` is not a TCP port"),
        (["--main_process_port", "70000"], "`--main_process_port 70000` is not a TCP port"),
        (["--layout.gpus_per_node", "0"], "`layout.gpus_per_node` and `layout.nodes` must be >= 1"),
        (["--layout.nodes", "-1"], "`layout.gpus_per_node` and `layout.nodes` must be >= 1"),
        (["--layout.gpus_per_node", "two"], "`layout.gpus_per_node` must be an integer"),
    ],
)
def test_launcher_numbers_out_of_range_are_refused_with_their_range(tmp_path, capsys, flags, message):
    from vlsft.cli.train import main

    recipe = tiny_layout_recipe(tmp_path, strategy="ddp", gpus_per_node=2)
    try:
        status = main(["--config", str(recipe), *flags, "--dry-run"])
    except SystemExit as exit:  # argparse refuses a number that is no integer
        status = exit.code
    assert status == 2
    error = capsys.readouterr().err
    assert message in error and "multiple of" not in error, error


def test_more_processes_than_this_machine_has_devices_for_are_refused_before_launching(tmp_path, capsys):
    """A huge `--num_processes` (or `layout.gpus_per_node`) is refused before it starts anything; the dry run says
    why it cannot run here."""
    from vlsft.cli.train import main
    from vlsft.recipes.launch import LaunchError, check_launchable, has_gpu
    from vlsft.recipes.loading import load_recipe

    recipe = tiny_layout_recipe(tmp_path, strategy="ddp", gpus_per_node=2)
    assert main(["--config", str(recipe), "--num_processes", "100000000000", "--dry-run"]) == 0
    assert "(not on this machine: the layout starts 100000000000 process(es) on this machine" in capsys.readouterr().out
    assert main(["--config", str(recipe), "--num_processes", "100000000000"]) == 2
    assert "vlsft: cannot launch: the layout starts 100000000000 process(es)" in capsys.readouterr().err
    huge = load_recipe(str(recipe), ["--layout.gpus_per_node", str(10**9)])
    with pytest.raises(LaunchError, match="GPU" if has_gpu() else "CPU core"):
        check_launchable(huge)
    check_launchable(load_recipe(str(recipe), ["--layout.gpus_per_node", "1"]))


def test_node_rank_must_be_a_rank_of_the_layout(monkeypatch):
    from tests.test_recipe import minimal
    from vlsft.recipes.launch import LaunchError, launch_argv
    from vlsft.recipes.loading import recipe_from_dict

    recipe = recipe_from_dict(minimal(layout={"strategy": "zero3", "gpus_per_node": 8, "nodes": 2}), path="r.yaml")
    monkeypatch.setenv("MAIN_HOST", "10.0.0.1")
    for rank in ("2", "-1", "one", "1.0"):
        monkeypatch.setenv("NODE_RANK", rank)
        with pytest.raises(LaunchError, match=f"NODE_RANK='{rank}': this node's rank must be a whole number from 0"):
            launch_argv(recipe, gpu=True)
    monkeypatch.setenv("NODE_RANK", "1")
    command = launch_argv(recipe, gpu=True)
    assert command[command.index("--machine_rank") + 1] == "1"


# -- family-dependent refusals in the dry run ------------------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_reasoning_weight_on_a_family_without_reasoning_is_refused_before_anything_loads(tmp_path, capsys, dry_run):
    """Qwen2.5-VL has no reasoning markers: `--dry-run` refuses `reasoning_weight`, and so does the run, with the same
    message, before the datasets and the model load (no traceback)."""
    from vlsft.cli.train import main

    raw = tiny_recipe(tmp_path / "missing.jsonl", tmp_path / "out", model={"name_or_path": "tiny-qwen2.5-vl"})
    raw["data"] = {"train": [{"path": "demo-shapes", "split": "train", "rows": 8}]}
    raw["training"]["reasoning_weight"] = 0.5
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)
    assert main(["--config", str(recipe), *dry_run]) == 2
    error = capsys.readouterr().err
    assert "vlsft: invalid recipe: `training`: `reasoning_weight` needs a family whose reasoning block" in error, error
    assert "Qwen2.5-VL has no reasoning format" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()
    # A family with reasoning markers takes it, and the plan names the family.
    raw["model"]["name_or_path"] = "tiny-qwen3.5"
    assert main(["--config", str(write_recipe(tmp_path / "qwen3_5.yaml", raw)), "--dry-run"]) == 0
    assert "family     Qwen3.5" in capsys.readouterr().out


def test_a_chat_template_the_generic_rule_cannot_mask_is_refused_by_the_dry_run(tmp_path, capsys):
    """An unmarked template takes the generic path (`vlsft.generic_masks`); one that writes no control token after
    an assistant turn could never teach the model to stop, and the dry run refuses it, as the run would."""
    from vlsft.cli.train import main

    template = tmp_path / "plain.jinja"
    template.write_text("{% for message in messages %}{{ message['content'] }}{% endfor %}")
    raw = tiny_recipe(tmp_path / "missing.jsonl", tmp_path / "out")
    raw["data"] = {"train": [{"path": "demo-shapes", "split": "train", "rows": 8}]}
    raw["training"]["chat_template_path"] = str(template)
    assert main(["--config", str(write_recipe(tmp_path / "recipe.yaml", raw)), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "the chat template ends an assistant turn with no control token" in error
    assert "chat_template_path" in error  # the fix
