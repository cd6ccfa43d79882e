"""Data parallelism over 2 CPU processes (gloo, real `accelerate launch`) gives the same step as 1 process with the
same global batch: the loss divides by the supervised tokens of every rank, not each rank's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parent / "scripts" / "one_step.py"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def run(tmp_path, name, processes, per_device_batch, accumulation=1, extra=()):
    out = tmp_path / f"{name}.pt"
    # `--multi_gpu` is accelerate's multi-process launcher; without GPUs VLSFTConfig runs it on CPU over gloo.
    # (`--cpu` would start a single process whatever --num_processes says.)
    command = [ACCELERATE, "launch", "--multi_gpu" if processes > 1 else "--cpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(29500 + os.getpid() % 1000)] if processes > 1 else []
    command += [str(SCRIPT), "--out", str(out), "--per_device_batch", str(per_device_batch), "--accumulation", str(accumulation)]
    command += list(extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"world_size {processes} " in result.stdout
    return torch.load(out)


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    from vlsft.tiny_model import build_tiny_qwen3_vl

    start = {n: p.detach() for n, p in build_tiny_qwen3_vl(seed=0)[0].named_parameters()}
    single = run(tmp_path, "single", processes=1, per_device_batch=4)
    data_parallel = run(tmp_path, "dp", processes=2, per_device_batch=2)
    data_parallel_accumulated = run(tmp_path, "dp_ga", processes=2, per_device_batch=1, accumulation=2)
    update = max((single[n] - start[n]).abs().max() for n in start)
    assert update > 1e-3
    for other in (data_parallel, data_parallel_accumulated):
        difference = max((single[n] - other[n]).abs().max() for n in start)
        assert difference <= 1e-4 * update, float(difference / update)


def test_weighted_rows_two_processes_equal_the_hand_computed_step(tmp_path):
    """Per-turn weights: the divisor is the summed weight of every rank's micro-batches. 2 processes x 2 rows (each as
    2 accumulated micro-batches of 1) give the step computed by hand in this process: start - grad(sum(w * ce) /
    sum(w)) from full logits over the 4 weighted rows (the in-process 1x4 and 4x1 runs are in test_weights.py)."""
    from tests.test_weights import rows_only, weighted_reference_loss
    from vlsft.collator import training_collator
    from vlsft.config import VLSFTConfig
    from vlsft.tiny_model import build_tiny_qwen3_vl

    model, processor = build_tiny_qwen3_vl(seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = training_collator(processor, VLSFTConfig(output_dir=str(tmp_path), report_to="none"))(rows_only())
    weighted_reference_loss(model, batch).backward()
    expected = {n: start[n] - (p.grad if p.grad is not None else 0) for n, p in model.named_parameters()}
    data_parallel = run(tmp_path, "dp_weighted", processes=2, per_device_batch=1, accumulation=2, extra=["--weighted"])
    update = max((expected[n] - start[n]).abs().max() for n in start)
    assert update > 1e-3
    difference = max((expected[n] - data_parallel[n]).abs().max() for n in start)
    assert difference <= 1e-4 * update, float(difference / update)
