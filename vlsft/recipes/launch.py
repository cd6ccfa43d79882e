"""How `vlsft train` runs a recipe on its layout: in this process, or through `accelerate launch`.

A layout that wants several processes, DeepSpeed or FSDP is started with `accelerate launch`, as `trl sft
--accelerate_config` and `tune run --nproc_per_node` do: the layout's accelerate config (shipped in `vlsft/configs/`),
its DeepSpeed JSON given by absolute path (so it is found wherever vlsft is installed), the layout's process and
machine counts, and `-m vlsft.train`, the per-process entry point. `--num_processes` and `--accelerate_config` on the
command line override the layout.

Without a GPU the same layout runs as its CPU equivalent: data-parallel processes over gloo (`--multi_gpu` on the
CPU), where the run picks up the layout's DeepSpeed JSON itself and DeepSpeed uses its CPU accelerator
(`vlsft.recipes.build.training_values`). FSDP has no CPU equivalent and is refused by the run.
"""

from __future__ import annotations

import os
import shlex
import sys

from vlsft.recipes.schema import Recipe

# Set by the launcher in every process it starts (and by torchrun): such a process trains, it never launches again.
_LAUNCHED_ENV = ("LOCAL_RANK", "WORLD_SIZE")


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def runs_in_this_process(recipe: Recipe, num_processes: int | None = None, gpu: bool | None = None) -> bool:
    """Whether `vlsft train` trains in its own process (one process and nothing to shard, or already started by a
    launcher) rather than through `accelerate launch`."""
    if any(name in os.environ for name in _LAUNCHED_ENV):
        return True
    processes = num_processes or recipe.layout.num_processes
    gpu = has_gpu() if gpu is None else gpu
    if not gpu:
        return processes == 1  # a single CPU process has no process group to shard over
    return processes == 1 and recipe.layout.deepspeed_config is None and recipe.layout.strategy != "fsdp2"


def launch_argv(
    recipe: Recipe,
    overrides: list[str] = (),
    num_processes: int | None = None,
    accelerate_config: str | None = None,
    gpu: bool | None = None,
    port: int | None = None,
) -> list[str]:
    """The command that runs `recipe` on its layout: `python -m vlsft.train ...` when it runs in one process, else
    `accelerate launch ... -m vlsft.train ...`. Multi-node layouts take the machine rank and the main host from the
    `NODE_RANK` and `MAIN_HOST` environment variables of each node."""
    layout = recipe.layout
    processes = num_processes or layout.num_processes
    gpu = has_gpu() if gpu is None else gpu
    tail = ["-m", "vlsft.train", "--config", recipe.path or "RECIPE.yaml", *overrides]
    if runs_in_this_process(recipe, num_processes, gpu) and not accelerate_config:
        return [sys.executable, *tail]
    command = [_accelerate_executable(), "launch"]
    if gpu or accelerate_config:
        command += ["--config_file", accelerate_config or str(layout.accelerate_config)]
        if layout.deepspeed_config is not None and not accelerate_config:
            command += ["--deepspeed_config_file", str(layout.deepspeed_config)]
        command += ["--num_processes", str(processes), "--num_machines", str(layout.nodes)]
        if layout.nodes > 1:
            command += ["--machine_rank", os.environ.get("NODE_RANK", "$NODE_RANK")]
            command += ["--main_process_ip", os.environ.get("MAIN_HOST", "$MAIN_HOST")]
        if layout.nodes > 1 or port:
            command += ["--main_process_port", str(port or 29500)]
    else:
        # The CPU equivalent: data parallel over gloo; the run adds the layout's DeepSpeed JSON itself.
        command += ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
        command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port or 29500)]
    return command + tail


def _accelerate_executable() -> str:
    """The `accelerate` of this interpreter's environment (found even when that environment is not activated)."""
    beside = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return beside if os.path.isfile(beside) else "accelerate"


def launch_command(recipe: Recipe, overrides: list[str] = (), **kwargs) -> str:
    """`launch_argv` as one shell line (what `--dry-run` prints)."""
    return shlex.join(launch_argv(recipe, overrides, **kwargs))
