"""`vlsft train` on the DeepSpeed layouts, end to end on 2 CPU processes (gloo): `vlsft train --config R` starts
`accelerate launch` itself (the command its `--dry-run` prints), the tiny model built while a ZeRO-3 config is live,
the embedded demo data (image, text-only, multi-turn and tool rows mixed), evaluation, saving, and LoRA with
`save_merged` under ZeRO-3 (which used to hang). Each launch runs under a timeout that turns a hang into a failure
showing the log tail."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_distributed import LAUNCH_TIMEOUT, REPO, free_port
from tests.test_recipe import tiny_recipe, write_recipe
from vlsft.cli.train import main
from vlsft.distributed import check_offload_keeps_optimizer


def demo_recipe(tmp_path, strategy: str, **sections):
    raw = tiny_recipe(tmp_path, tmp_path / "out", layout={"strategy": strategy, "gpus_per_node": 2})
    raw["data"] = {
        "train": [{"path": "demo-shapes", "split": "train", "rows": 8}],
        "eval": [{"path": "demo-shapes", "split": "eval", "rows": 3}],  # 3 rows over 2 ranks: an uneven last batch
    }
    raw["training"].update(eval_strategy="steps", eval_steps=2, loss_chunk_size=8)
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return write_recipe(tmp_path / "recipe.yaml", raw)


VLSFT = str(Path(sys.executable).parent / "vlsft")


def vlsft_train(args: list[str], timeout: int = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    """`vlsft train ARGS` as a user runs it; a hang fails with the log tail."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        return subprocess.run([VLSFT, "train", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as error:
        tail = [(text or b"")[-3000:] for text in (error.stdout, error.stderr)]
        pytest.fail(f"hung for {timeout} s:\n" + "\n".join(t.decode() if isinstance(t, bytes) else t for t in tail))


def train(tmp_path, recipe, flags: list[str] = ()) -> dict:
    """`vlsft train --config recipe FLAGS` on this CPU: 2 processes over gloo, running the layout's DeepSpeed stage."""
    port = ["--main_process_port", str(free_port()), *flags]
    result = vlsft_train(["--config", str(recipe), *port])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    # It launched the command its dry run prints ...
    plan = io.StringIO()
    with contextlib.redirect_stdout(plan):
        assert main(["--config", str(recipe), *port, "--dry-run"]) == 0
    launch_line = next(line for line in plan.getvalue().splitlines() if line.startswith("launch "))
    assert f"vlsft: launching {launch_line.split(None, 1)[1]}\n" in result.stderr
    assert " --multi_gpu --num_processes 2 " in launch_line
    # ... which ran two processes with the layout's DeepSpeed stage (vlsft notes any difference from the layout).
    assert "differs from layout" not in result.stderr, result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert state["epoch"] == 1.0  # 2 steps x 2 ranks x 2 rows cover the 8 training rows (one process: half of them)
    assert any("eval_loss" in entry for entry in state["log_history"])
    return state


def test_vlsft_train_zero2(tmp_path):
    train(tmp_path, demo_recipe(tmp_path, "zero2", training={"save_strategy": "steps", "save_steps": 2}))
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # A DeepSpeed checkpoint: ZeRO-2 optimizer state partitioned over the two ranks.
    shards = sorted(path.name for path in (tmp_path / "out" / "checkpoint-2" / "global_step2").iterdir())
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in name and name.endswith("optim_states.pt") for name in shards), shards


def test_vlsft_train_zero3_lora_save_merged(tmp_path):
    """A saved model (loaded with `from_pretrained`, so under `zero.Init` while ZeRO-3 is live) trains a LoRA
    adapter under ZeRO-3; the merge on the main process (which used to hang in `zero.Init`) equals base + adapter
    merged here, in one process."""
    from peft import PeftModel
    from transformers import Qwen3VLForConditionalGeneration

    from vlsft.testing.tiny_qwen3_vl import save_tiny_qwen3_vl

    base_dir = save_tiny_qwen3_vl(tmp_path / "base", seed=0)
    recipe = demo_recipe(
        tmp_path, "zero3", model={"name_or_path": str(base_dir), "dtype": "float32"},
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "save_merged": True}, training={"activation_checkpointing": True},
    )
    train(tmp_path, recipe)
    out = tmp_path / "out"
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") and tensor.abs().max() > 0 for name, tensor in adapter.items())
    base = Qwen3VLForConditionalGeneration.from_pretrained(base_dir)
    expected = PeftModel.from_pretrained(base, str(out)).merge_and_unload().state_dict()
    merged = load_file(str(out / "merged" / "model.safetensors"))
    assert merged and all(torch.equal(merged[name], expected[name]) for name in merged)


def test_vlsft_train_zero3_offload_with_the_recipe_optimizer(tmp_path):
    """Also `--num_processes 2` on a 1-GPU layout: it becomes the override every process applies (their recipe says 2
    processes, so no "differs from layout" note)."""
    recipe = demo_recipe(tmp_path, "zero3_offload", training={"optim": "sgd"}, layout={"gpus_per_node": 1})
    train(tmp_path, recipe, ["--num_processes", "2"])
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_optimizer_offload_that_would_swap_the_optimizer_is_refused():
    offloading = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    with pytest.raises(ValueError, match="zero_force_ds_cpu_optimizer"):
        check_offload_keeps_optimizer(offloading, "sgd")
    check_offload_keeps_optimizer({**offloading, "zero_force_ds_cpu_optimizer": False}, "sgd")
    check_offload_keeps_optimizer({"zero_optimization": {"stage": 3}}, "sgd")
    shipped = json.loads((REPO / "configs/ds_zero3_offload.json").read_text())
    check_offload_keeps_optimizer(shipped, "sgd")


@pytest.mark.slow
def test_sigterm_to_vlsft_train_saves_the_preemption_checkpoint_on_every_rank(tmp_path):
    """A scheduler's SIGTERM to `vlsft train` alone reaches both DeepSpeed processes through the launcher: they save a
    checkpoint at the end of the step (`vlsft.checkpoints.PreemptionCallback`) and stop; `vlsft train` ends with the
    launcher's status, non-zero (the run did not finish, so a scheduler requeues it)."""
    import signal
    import time

    recipe = demo_recipe(
        tmp_path, "zero2",
        training={"max_steps": 500, "save_strategy": "steps", "save_steps": 1000, "eval_strategy": "no"},
    )
    log = tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [VLSFT, "train", "--config", str(recipe), "--main_process_port", str(free_port())]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while "'loss'" not in log.read_text():  # the first step is logged: training is under way
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-5000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert status != 0, text[-3000:]
    assert "SIGTERM: saving a checkpoint at step" in text, text[-5000:]
    (checkpoint,) = (tmp_path / "out").glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 1 <= step < 500
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    shards = [path.name for path in (checkpoint / f"global_step{step}").iterdir()]
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in name and name.endswith("optim_states.pt") for name in shards), shards
    assert f"stopped by SIGTERM at step {step}" in text
