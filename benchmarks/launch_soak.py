#!/usr/bin/env python
"""Many short 2-process launches in a row, counting the ones that abort at exit.

    python benchmarks/launch_soak.py [--launches 100] [--strategies ddp,zero2] [--timeout 300] [--until 21:30]

Each launch is `vlsft train` of the tiny Qwen3-VL on 8 demo rows, 1 step, on a 2-process layout (over gloo without a
GPU), cycling through `--strategies`, each on a fresh rendezvous port. A launch is counted as:
- `ok`: exit status 0 and the final model saved;
- `abort`: "terminate called without an active exception" in its output, or a process killed by SIGABRT (134);
- `timeout`: still running after `--timeout` seconds (killed with its process group);
- `failed`: any other non-zero status.
`--until HH:MM` starts no launch after that wall-clock time. One line per launch, then the counts; `--log FILE`
also writes one JSON line per launch (with the tail of the output of any that was not `ok`). Reports; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ABORT = "terminate called without an active exception"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_recipe(folder: Path, strategy: str) -> Path:
    recipe = {
        "model": {"name_or_path": "tiny-qwen3-vl"},
        "data": {"train": [{"path": "demo-shapes", "split": "train", "rows": 8}]},
        "training": {
            "max_steps": 1,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "activation_checkpointing": False,
            "report_to": "none",
            "logging_steps": 1,
            "save_strategy": "no",
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
        },
        "layout": {"strategy": strategy, "gpus_per_node": 2},
    }
    path = folder / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def launch(recipe: Path, output_dir: Path, timeout: float) -> tuple[str, int | None, str, float]:
    vlsft = Path(sys.executable).parent / "vlsft"
    command = [str(vlsft), "train", "--config", str(recipe), "--output_dir", str(output_dir),
               "--main_process_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return "timeout", None, output, time.monotonic() - start
    seconds = time.monotonic() - start
    status = process.returncode
    if ABORT in output or status in (134, -signal.SIGABRT):
        return "abort", status, output, seconds
    if status == 0 and (output_dir / "model.safetensors").is_file():
        return "ok", status, output, seconds
    return "failed", status, output, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=100)
    parser.add_argument("--strategies", default="ddp,zero2", help="comma-separated layouts, used in turn")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per launch")
    parser.add_argument("--until", help="HH:MM (local time): start no launch after it")
    parser.add_argument("--log", help="also write one JSON line per launch here")
    options = parser.parse_args()
    if options.launches < 1 or options.timeout <= 0:
        parser.error("--launches must be >= 1 and --timeout > 0")
    strategies = [s.strip() for s in options.strategies.split(",") if s.strip()]
    stop_at = None
    if options.until:
        hour, minute = map(int, options.until.split(":"))
        stop_at = datetime.datetime.now().replace(hour=hour, minute=minute, second=0, microsecond=0)

    counts: Counter = Counter()
    work = Path(tempfile.mkdtemp(prefix="vlsft-launch-soak-"))
    recipes = {strategy: write_recipe(work, strategy) for strategy in strategies}
    log = open(options.log, "a") if options.log else None
    try:
        for number in range(options.launches):
            if stop_at is not None and datetime.datetime.now() >= stop_at:
                print(f"--until {options.until} reached", flush=True)
                break
            strategy = strategies[number % len(strategies)]
            output_dir = work / f"launch-{number}"
            verdict, status, output, seconds = launch(recipes[strategy], output_dir, options.timeout)
            counts[verdict] += 1
            print(f"launch {number + 1:3d} {strategy:<6} {verdict:<8} status {status} {seconds:6.1f} s", flush=True)
            if log is not None:
                entry = {"launch": number + 1, "strategy": strategy, "verdict": verdict, "status": status,
                         "seconds": round(seconds, 1), "time": datetime.datetime.now().isoformat(timespec="seconds")}
                if verdict != "ok":
                    entry["output_tail"] = output[-4000:]
                log.write(json.dumps(entry) + "\n")
                log.flush()
            shutil.rmtree(output_dir, ignore_errors=True)
    finally:
        if log is not None:
            log.close()
        shutil.rmtree(work, ignore_errors=True)
    total = sum(counts.values())
    print(f"{total} launches: " + ", ".join(f"{counts[v]} {v}" for v in ("ok", "abort", "timeout", "failed")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
