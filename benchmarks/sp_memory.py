#!/usr/bin/env python
"""Activation memory per rank against sequence length under Ulysses sequence parallelism (`sequence_parallel_size`),
on the CPU: SP=1 (1 process), SP=2 (2 processes) and SP=4 (4 processes), DeepSpeed ZeRO-2, float32, gloo.

    python benchmarks/sp_memory.py [--lengths 512,1024,2048] [--sizes 1,2,4] [--output benchmarks/results_cpu.md]

For each length and SP size it launches (`accelerate launch`) one training step of a tiny-but-wider Qwen3-VL (hidden
128, 8 heads, 2 layers) on one row: one image and a long question with a long answer, `length` tokens in all. Every
rank measures, during that step:
- saved activations: the bytes of the tensors autograd saves for backward during the forward
  (`torch.autograd.graph.saved_tensors_hooks`), each storage counted once, parameters excluded. Deterministic;
- peak RSS growth: the resident set's high-water mark (`VmHWM`) during forward + backward over the resident set
  before it. Noisy on a shared machine, and it includes DeepSpeed's gradient buffers and the all-to-all's copies.
The table gives the largest rank of each run. The goal (issue 22) is memory per rank at SP=N <= 0.6 / N of SP=1 plus
a constant: the constant is what does not grow with the length (the vision tower, which every rank runs unsplit, and
fixed buffers), so each SP size's saved bytes are fitted as `slope * length + intercept` (least squares over the
lengths) and the goal is met when the slope at SP=N is <= 0.6 / N of the slope at SP=1. Benchmarks report; they
assert nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HIDDEN, LAYERS = 128, 2
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "
MIB = 2**20


# -- one rank's step (run under accelerate launch) -----------------------------------------------------------------


class SavedActivations:
    """Bytes of the tensors saved for backward while active, each storage once, the model's parameters excluded."""

    def __init__(self, model):
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters and storage.device.type != "meta":
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def row_of_length(processor, length: int) -> dict:
    """One image and a question + answer of `SENTENCE`s (answer a quarter of the text), about `length` tokens."""
    from tests.conftest import IMAGE, assistant, image, user

    def row(repeats: int) -> dict:
        answer = max(1, repeats // 4)
        return {"messages": [user(IMAGE, SENTENCE * (repeats - answer)), assistant(SENTENCE * answer)],
                "images": [image((0, 90, 200), (64, 64))]}

    def tokens(repeats: int) -> int:
        sample = row(repeats)
        text = processor.apply_chat_template(sample["messages"], tokenize=False)
        return processor(text=[text], images=sample["images"], return_tensors="pt")["input_ids"].shape[1]

    base, per_repeat = tokens(4), (tokens(12) - tokens(4)) / 8
    return row(max(4, 4 + round((length - base) / per_repeat)))


def measure_step(cli) -> None:
    from datasets import Dataset

    from benchmarks.sidebyside import CpuStepMemory
    from vlsft import VLSFTConfig, VLSFTTrainer
    from vlsft.distributed import leave_distributed_run
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

    class MeasuredTrainer(VLSFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.saved = SavedActivations(model)
            memory = CpuStepMemory()
            memory.start()
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.steps.append({"tokens": int(inputs["input_ids"].shape[1]), "saved": self.saved.bytes, "rss": memory.stop()})
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with self.saved.hooks():
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    model, processor = build_tiny_qwen3_vl(seed=0, hidden_size=HIDDEN, num_hidden_layers=LAYERS)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    lengths = [int(x) for x in cli.lengths.split(",")]
    # One step per length (the whole group trains the same row), and the shortest once more: the first step also
    # allocates DeepSpeed's buffers, so each length's RSS figure is the smallest of its steps.
    rows = [row_of_length(processor, length) for length in [*lengths, min(lengths)]]
    args = VLSFTConfig(
        output_dir=tempfile.mkdtemp(prefix="vlsft-sp-memory-"), report_to="none", per_device_train_batch_size=1,
        max_steps=len(rows), learning_rate=1e-4, optim="sgd", save_strategy="no", logging_steps=1, disable_tqdm=True,
        max_length=None, seed=0, deepspeed=str(REPO / "configs/ds_zero2.json"), sequence_parallel_size=world_size,
        gradient_checkpointing=False,  # checkpointed layers save through their own hooks, hidden from ours
    )
    trainer = MeasuredTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    trainer.steps = []
    trainer.train()
    mine = trainer.steps
    ranks = [None] * world_size
    if torch.distributed.is_initialized():
        torch.distributed.all_gather_object(ranks, mine)
    else:
        ranks = [mine]
    if trainer.accelerator.is_main_process:
        Path(cli.out).write_text(json.dumps(ranks))
    leave_distributed_run(trainer.accelerator)


# -- the sweep -----------------------------------------------------------------------------------------------------


def launch(lengths: str, processes: int, out: Path, timeout: int) -> list[list[dict]]:
    accelerate = Path(sys.executable).with_name("accelerate")
    port = str(29500 + os.getpid() % 1000 + processes)
    command = [str(accelerate), "launch", *(["--multi_gpu"] if processes > 1 else []), "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
               str(Path(__file__).resolve()), "--worker", "--lengths", lengths, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if processes == 1:  # a plain process: DeepSpeed would otherwise look for MPI to find its (single-rank) group
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"SP={processes} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(out.read_text())


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares slope and intercept of (length, bytes)."""
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return slope, mean_y - slope * mean_x


def per_length(ranks: list[list[dict]]) -> dict[int, dict]:
    """{tokens: saved bytes and peak RSS growth of the largest rank}; a length trained twice keeps its smaller RSS."""
    table = {}
    for steps in zip(*ranks):  # the ranks of a group train the same row at each step
        tokens = steps[0]["tokens"]
        saved, rss = max(step["saved"] for step in steps), max(step["rss"] for step in steps)
        if tokens in table:
            saved, rss = max(saved, table[tokens]["saved"]), min(rss, table[tokens]["rss"])
        table[tokens] = {"saved": saved, "rss": rss}
    return table


def report(results: dict, lengths: list[int], sizes: list[int], seconds: float, load: str) -> str:
    tables = {size: per_length(results[size]) for size in sizes}
    tokens = sorted(tables[sizes[0]])
    fits = {size: fit([(n, tables[size][n]["saved"]) for n in tokens]) for size in sizes}
    lines = [
        "| target length | tokens | SP | saved activations / rank (MiB) | ratio to SP=1 | 0.6 / N | peak RSS growth / rank (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for length, n in zip(sorted(lengths), tokens):
        base = tables[sizes[0]][n]["saved"]
        for size in sizes:
            cell = tables[size][n]
            lines.append(f"| {length} | {n} | {size} | {cell['saved'] / MIB:.2f} | {cell['saved'] / base:.3f} | "
                         f"{0.6 / size:.2f} | {cell['rss'] / MIB:.1f} |")
    lines += ["", "| SP | slope (KiB / token) | intercept (MiB) | slope ratio to SP=1 | goal: slope ratio <= 0.6 / N |",
              "|---|---|---|---|---|"]
    for size in sizes:
        slope, intercept = fits[size]
        ratio = slope / fits[sizes[0]][0]
        goal = "(base)" if size == sizes[0] else f"{0.6 / size:.2f}: {'met' if ratio <= 0.6 / size else 'not met'}"
        lines.append(f"| {size} | {slope / 1024:.2f} | {intercept / MIB:.2f} | {ratio:.3f} | {goal} |")
    lines += ["", f"Tiny Qwen3-VL (hidden {HIDDEN}, {LAYERS} layers, 8 heads, 1 image), no gradient checkpointing; ZeRO-2, "
              f"float32, gloo, 1 thread per rank; {seconds:.0f} s in all; load average before the runs: {load} (2 cores)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="512,1024,2048")
    parser.add_argument("--sizes", default="1,2,4", help="SP sizes; each runs on that many processes; the first is the base")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per launch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    cli = parser.parse_args(argv)
    if cli.worker:
        measure_step(cli)
        return 0
    sizes = [int(x) for x in cli.sizes.split(",")]
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    start, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            results[size] = launch(cli.lengths, size, Path(scratch) / f"sp{size}.json", cli.timeout)
    table = report(results, [int(x) for x in cli.lengths.split(",")], sizes, time.perf_counter() - start, load)
    print(table)
    if cli.output:
        Path(cli.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
