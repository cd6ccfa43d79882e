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
