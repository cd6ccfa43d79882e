"""The entry points for real: `accelerate launch vlsft/train.py` (one CPU process, and two data-parallel processes
over gloo), and the `vlsft` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_recipe import REPO, tiny_recipe, write_colour_dataset, write_recipe

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "accelerate"), "launch", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def recipe_file(tmp_path: Path, **sections) -> Path:
    data = write_colour_dataset(tmp_path / "data", rows=12)
    raw = tiny_recipe(data, tmp_path / "recipe-output", **sections)
    raw["data"]["eval_fraction"] = 1 / 3  # 8 train rows, 4 eval rows
    raw["training"].update(eval_strategy="steps", eval_steps=1)
    return write_recipe(tmp_path / "recipe.yaml", raw)


def state(output_dir: Path) -> dict:
    return json.loads((output_dir / "trainer_state.json").read_text())


def test_accelerate_launch_one_cpu_process_with_output_dir_override(tmp_path):
    recipe = recipe_file(tmp_path)
    out = tmp_path / "out"
    launch(["--num_processes", "1", "--cpu", "vlsft/train.py", "--config", str(recipe), "--output_dir", str(out)])
    logs = state(out)
    assert logs["global_step"] == 2
    assert logs["epoch"] == 0.5  # 2 steps x 2 rows of 8
    assert len([entry for entry in logs["log_history"] if "eval_loss" in entry]) == 2
    assert (out / "model.safetensors").is_file() and not (tmp_path / "recipe-output").exists()


def test_accelerate_launch_two_processes_is_data_parallel(tmp_path):
    """Two ranks each take 2 rows per step, so 2 steps cover all 8 training rows: one epoch (one process: half)."""
    recipe = recipe_file(tmp_path, layout={"strategy": "ddp", "gpus_per_node": 2})
    out = tmp_path / "out"
    # accelerate 1.15 starts a single process for `--cpu` whatever --num_processes says; its multi-process launcher
    # is `--multi_gpu`, which runs on CPU over gloo when no GPU is present (VLSFTConfig sets use_cpu).
    launch(
        ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000),
         "vlsft/train.py", "--config", str(recipe), "--output_dir", str(out)]
    )
    logs = state(out)
    assert logs["global_step"] == 2 and logs["epoch"] == 1.0


def test_console_script_dispatches_train_and_inspect(tmp_path, monkeypatch, capsys):
    recipe = recipe_file(tmp_path)
    result = subprocess.run(
        [str(BIN / "vlsft"), "train", "--config", str(recipe), "--dry-run"], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"-m vlsft.train --config {recipe}\n" in result.stdout  # one CPU process: trained by `vlsft train` itself

    import types

    from vlsft import cli

    received = []
    fake = types.ModuleType("vlsft.cli.inspect")
    fake.main = lambda argv: received.append(argv) or 0
    monkeypatch.setitem(sys.modules, "vlsft.cli.inspect", fake)
    assert cli.main(["inspect", "--config", "x.yaml", "--rows", "2"]) == 0
    assert received == [["--config", "x.yaml", "--rows", "2"]]
    assert cli.main(["trian"]) == 2 and "unknown command" in capsys.readouterr().err


def test_bad_rows_end_the_command_with_their_list_and_no_traceback(tmp_path, capsys):
    import json

    from PIL import Image as PILImage

    from vlsft.cli.train import main

    PILImage.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "ok.png")
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}], "images": [name]}
        for name in ("ok.png", "ok.png", "ok.png", "missing.png")
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    (tmp_path / "recipe.yaml").write_text(
        "model: {name_or_path: tiny-qwen3-vl}\n"
        f"data: {{train: [{{path: {tmp_path / 'rows.jsonl'}, image_root: {tmp_path}}}]}}\n"
        "training: {max_steps: 1, report_to: none}\n"
        "layout: {strategy: cpu}\n"
    )
    code = main(["--config", str(tmp_path / "recipe.yaml"), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "row 3: image 0 not found" in err and "--invalid_rows skip" in err and "Traceback" not in err


# -- `vlsft train`'s launcher flags -------------------------------------------------------------------------------


def test_num_processes_becomes_the_layout_override_every_process_sees(tmp_path, capsys):
    from vlsft.cli.train import main

    recipe = recipe_file(tmp_path, layout={"strategy": "zero2", "gpus_per_node": 1})
    assert main(["--config", str(recipe), "--num_processes", "2", "--main_process_port", "29611", "--dry-run"]) == 0
    out = capsys.readouterr().out
    launch_line = next(line for line in out.splitlines() if line.startswith("launch "))
    # The launcher's count, and the override the processes apply: their recipe says 2, so no "differs" note.
    assert " --num_processes 2 " in launch_line and " --main_process_port 29611 " in launch_line
    assert launch_line.endswith(f"-m vlsft.train --config {recipe} --layout.gpus_per_node 2")
    assert "x 2 process(es)" in out

    (tmp_path / "two_nodes").mkdir()
    two_nodes = recipe_file(tmp_path / "two_nodes", layout={"strategy": "zero2", "gpus_per_node": 1, "nodes": 2})
    assert main(["--config", str(two_nodes), "--num_processes", "3", "--dry-run"]) == 2
    assert "pass a multiple of 2" in capsys.readouterr().err
    assert main(["--config", str(recipe), "--num_processes", "4", "--layout.gpus_per_node", "2", "--dry-run"]) == 2
    assert "disagree" in capsys.readouterr().err
    # A flag is never taken for an abbreviation of another: `--dry` is a (misspelt) recipe override, not --dry-run.
    assert main(["--config", str(recipe), "--dry", "--main_process_port", "29611"]) == 2
    assert "`dry`" in capsys.readouterr().err


def test_fsdp_without_a_gpu_is_refused_before_any_process_starts(tmp_path, capsys):
    from vlsft.cli.train import main
    from vlsft.recipes.launch import has_gpu

    if has_gpu():
        return  # FSDP runs on GPUs; this machine's refusal is about CPUs only
    recipe = recipe_file(tmp_path, layout={"strategy": "fsdp2", "gpus_per_node": 2})
    assert main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "cannot launch: layout `fsdp2` needs GPUs" in err and "--layout.strategy zero3" in err
    assert "launching" not in err and not (tmp_path / "recipe-output").exists()
    # The dry run still shows the GPU launch, and why it cannot run here.
    assert main(["--config", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--config_file" in out and "fsdp2.yaml" in out and "(not on this machine: layout `fsdp2` needs GPUs" in out


def test_multi_node_launch_needs_node_rank_and_main_host(monkeypatch):
    import pytest

    from vlsft.recipes.launch import LaunchError, launch_argv, launch_command
    from vlsft.recipes.loading import recipe_from_dict
    from tests.test_recipe import minimal

    recipe = recipe_from_dict(minimal(layout={"strategy": "zero3", "gpus_per_node": 8, "nodes": 2}), path="r.yaml")
    monkeypatch.delenv("NODE_RANK", raising=False)
    monkeypatch.delenv("MAIN_HOST", raising=False)
    with pytest.raises(LaunchError, match="needs NODE_RANK and MAIN_HOST in the environment"):
        launch_argv(recipe, gpu=True)
    assert '--machine_rank "$NODE_RANK" --main_process_ip "$MAIN_HOST"' in launch_command(recipe, gpu=True)
    monkeypatch.setenv("NODE_RANK", "1")
    with pytest.raises(LaunchError, match="needs MAIN_HOST in"):
        launch_argv(recipe, gpu=True)
    monkeypatch.setenv("MAIN_HOST", "10.0.0.1")
    command = launch_argv(recipe, gpu=True)
    assert command[command.index("--machine_rank") + 1] == "1"
    assert command[command.index("--main_process_ip") + 1] == "10.0.0.1"
    assert launch_command(recipe, gpu=True) == " ".join(command)  # what the dry run prints is what runs


# -- the launcher's exit status and signals ----------------------------------------------------------------------

# A stand-in for `accelerate launch`: records every SIGINT / SIGTERM it gets, and exits 3 half a second after the first
# (long enough for a duplicate to arrive), or 0 after 60 s without one.
LAUNCHER = """
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
first = None
def record(signum, frame):
    global first
    first = first or time.monotonic()
    log.write(signal.Signals(signum).name + "\\n")
signal.signal(signal.SIGINT, record)
signal.signal(signal.SIGTERM, record)
log.write("ready\\n")
end = time.monotonic() + 60
while time.monotonic() < end and (first is None or time.monotonic() < first + 0.5):
    time.sleep(0.01)
sys.exit(3 if first else 0)
"""


def test_signals_reach_the_launcher_once_and_its_exit_status_is_returned(tmp_path):
    """`vlsft.recipes.launch.run_launcher` in a process of its own group, as `vlsft train` runs in a terminal, runs
    LAUNCHER twice. A SIGTERM to `vlsft train` alone (a scheduler or container runtime may signal only it) reaches the
    launcher, so the training processes save their preemption checkpoint. Ctrl-C signals the terminal's foreground
    group, `vlsft train`'s; the launcher (in its own group, like torchrun's processes) gets exactly one SIGINT, from
    `vlsft train`: a second would cut short its shutdown. Each time the launcher's exit status is `vlsft train`'s."""
    import signal
    import time

    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    logs = [tmp_path / "sigterm.log", tmp_path / "sigint.log"]
    parent = (
        "import sys; from vlsft.recipes.launch import run_launcher; "
        f"print([run_launcher([sys.executable, {str(script)!r}, log]) for log in {[str(log) for log in logs]!r}])"
    )
    process = subprocess.Popen([sys.executable, "-c", parent], env=ENV, start_new_session=True, stdout=subprocess.PIPE, text=True)

    def when_ready(log):
        deadline = time.monotonic() + 180
        while not (log.exists() and "ready" in log.read_text()):
            assert time.monotonic() < deadline and process.poll() is None, "the launcher never started"
            time.sleep(0.05)

    try:
        when_ready(logs[0])
        process.send_signal(signal.SIGTERM)
        when_ready(logs[1])
        os.killpg(process.pid, signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert out.strip() == "[3, 3]"
    assert [log.read_text().split()[1:] for log in logs] == [["SIGTERM"], ["SIGINT"]]


def test_the_launchers_exit_status_is_returned():
    from vlsft.recipes.launch import run_launcher

    assert run_launcher([sys.executable, "-c", "raise SystemExit(7)"]) == 7
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert run_launcher([sys.executable, "-c", killed]) == 128 + 9  # as a shell reports a process killed by signal 9


def test_the_layouts_launch_is_named_inside_launched_processes_too(monkeypatch):
    """A run notes its layout's launch when it differs from it (`vlsft.recipes.build`); inside a launched process
    (LOCAL_RANK set) that is still the layout's `accelerate launch`, and an `fsdp2` layout on a CPU names its GPU
    launch instead of failing the run."""
    from tests.test_recipe import minimal
    from vlsft.recipes.launch import launch_command, runs_in_this_process
    from vlsft.recipes.loading import recipe_from_dict

    monkeypatch.setenv("LOCAL_RANK", "0")
    zero2 = recipe_from_dict(minimal(layout={"strategy": "zero2", "gpus_per_node": 2}), path="r.yaml")
    assert runs_in_this_process(zero2)  # this process trains; it never launches again
    assert " launch --multi_gpu --num_processes 2 " in launch_command(zero2, gpu=False)
    fsdp = recipe_from_dict(minimal(layout={"strategy": "fsdp2", "gpus_per_node": 2}), path="r.yaml")
    assert "fsdp2.yaml --num_processes 2 --num_machines 1 -m vlsft.train" in launch_command(fsdp, gpu=False)


def test_accelerate_config_replaces_the_layouts_and_launches_even_one_process(tmp_path, capsys):
    from vlsft.cli.train import main
    from vlsft.recipes.launch import accelerate_launch

    recipe = recipe_file(tmp_path)  # layout `cpu`: one process, trained in `vlsft train` itself ...
    mine = tmp_path / "my_accelerate.yaml"
    assert main(["--config", str(recipe), "--accelerate_config", str(mine), "--dry-run", "--max_steps", "3"]) == 0
    launch_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("launch "))
    # ... unless an accelerate config is given: then it is launched with that config (and no layout DeepSpeed JSON).
    launcher = " ".join(accelerate_launch())
    assert launch_line.split(None, 1)[1] == (
        f"{launcher} --config_file {mine} --num_processes 1 --num_machines 1 -m vlsft.train --config {recipe} --max_steps 3"
    )
