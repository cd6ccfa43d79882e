"""How `vlsft train` runs a recipe on its layout: in this process, or through `accelerate launch`.

A layout that wants several processes, DeepSpeed or FSDP is started with `accelerate launch`, as `trl sft
--accelerate_config` and `tune run --nproc_per_node` do: the layout's accelerate config (shipped in `vlsft/configs/`),
its DeepSpeed JSON given by absolute path (so it is found wherever vlsft is installed), the layout's process and
machine counts, and `-m vlsft.train`, the per-process entry point. The process count is the recipe's
(`layout.gpus_per_node x layout.nodes`), so an override (`--layout.gpus_per_node 4`, or `vlsft train --num_processes 4`)
reaches the launcher and every process alike. `--accelerate_config` replaces the layout's accelerate config.

Without a GPU the same layout runs as its CPU equivalent: data-parallel processes over gloo (`--multi_gpu` on the
CPU), where the run picks up the layout's DeepSpeed JSON itself and DeepSpeed uses its CPU accelerator
(`vlsft.recipes.build.training_values`). FSDP has no CPU equivalent: refused before any process starts.

`run_launcher` runs the launcher as a child whose exit status becomes `vlsft train`'s, and passes on the signals that
stop a run, so a SIGTERM (preemption) reaches the training processes and they save their checkpoint
(`vlsft.checkpoints.PreemptionCallback`).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading

from vlsft.recipes.schema import Recipe

# Set by the launcher in every process it starts (and by torchrun): such a process trains, it never launches again.
_LAUNCHED_ENV = ("LOCAL_RANK", "WORLD_SIZE")
# What each node of a multi-node layout must say about itself before `vlsft train` can launch there.
NODE_ENV = {"NODE_RANK": "--machine_rank", "MAIN_HOST": "--main_process_ip"}
DEFAULT_PORT = 29500  # accelerate's and torchrun's default rendezvous port


class LaunchError(Exception):
    """The recipe is valid but cannot be launched here (the message says what to change)."""


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def runs_in_this_process(recipe: Recipe, gpu: bool | None = None) -> bool:
    """Whether `vlsft train` trains in its own process (the layout runs one process with nothing to shard, or a
    launcher already started this one) rather than through `accelerate launch`."""
    return any(name in os.environ for name in _LAUNCHED_ENV) or _layout_runs_one_process(recipe, gpu)


def _layout_runs_one_process(recipe: Recipe, gpu: bool | None = None) -> bool:
    layout = recipe.layout
    gpu = has_gpu() if gpu is None else gpu
    if not gpu:
        return layout.num_processes == 1  # a single CPU process has no process group to shard over
    return layout.num_processes == 1 and layout.deepspeed_config is None and layout.strategy != "fsdp2"


def check_launchable(recipe: Recipe, gpu: bool | None = None) -> None:
    """Raise `LaunchError` when the recipe's layout cannot run on this machine: FSDP over several processes without a
    GPU, or more processes than this machine has GPUs (or, for the CPU equivalent, cores) for. The dry run shows the
    launch, and this reason."""
    layout = recipe.layout
    gpu = has_gpu() if gpu is None else gpu
    if layout.strategy == "fsdp2" and not gpu and not _layout_runs_one_process(recipe, gpu):
        raise LaunchError(
            f"layout `fsdp2` needs GPUs: accelerate 1.15 shards with FSDP only on GPU-type devices, so on this CPU "
            f"the {layout.num_processes} processes would train unsharded DDP. Run it on GPUs, or pick a layout "
            "with a CPU equivalent: `--layout.strategy zero3` (DeepSpeed over gloo), `zero2` or `ddp`."
        )
    if not _layout_runs_one_process(recipe, gpu):
        _check_processes_fit(recipe, gpu)


def check_port(port: int | None) -> None:
    """`--main_process_port`: a TCP port (1 to 65535), or None for the default."""
    if port is not None and not 1 <= port <= 65535:
        raise LaunchError(
            f"`--main_process_port {port}` is not a TCP port: pass one from 1 to 65535 (default {DEFAULT_PORT})."
        )


# On the CPU equivalent, processes share the cores (gloo tests run 4 processes on 2 cores): a few per core is a test
# setup, more is a mistyped count that would start a model replica per process on this machine.
PROCESSES_PER_CORE = 4


def _check_processes_fit(recipe: Recipe, gpu: bool) -> None:
    """The processes this node would start must have a device each: a GPU (two ranks cannot share one), or on the
    CPU equivalent, which starts every process of the layout here, a share of a core (`PROCESSES_PER_CORE`)."""
    layout = recipe.layout
    if gpu:
        import torch

        here, what, wanted = torch.cuda.device_count(), "GPU(s)", layout.gpus_per_node
        most = here
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        here, what, wanted = cores, "CPU core(s)", layout.num_processes
        most = cores * PROCESSES_PER_CORE
    if wanted > most:
        raise LaunchError(
            f"the layout starts {wanted} process(es) on this machine, which has {here} {what}: pass "
            f"`--num_processes` (or `--layout.gpus_per_node`) of at most {most}" + (" per node" if gpu else "") + "."
        )


def launch_argv(
    recipe: Recipe,
    overrides: list[str] = (),
    accelerate_config: str | None = None,
    gpu: bool | None = None,
    port: int | None = None,
    placeholders: bool = False,
) -> list[str]:
    """The command that runs `recipe` on its layout: `python -m vlsft.train ...` when the layout runs one process,
    else `accelerate launch ... -m vlsft.train ...`, with `overrides` passed on to every process. Without a GPU that is
    the layout's CPU equivalent; `fsdp2` has none, so its command is the GPU one (`check_launchable` refuses it here).

    Multi-node layouts take the machine rank and the main host from the `NODE_RANK` and `MAIN_HOST` environment
    variables of each node; without them this raises `LaunchError`, or with `placeholders` (a dry run, which shows the
    command to run on every node) writes `$NODE_RANK` / `$MAIN_HOST` in their place."""
    layout = recipe.layout
    gpu = has_gpu() if gpu is None else gpu
    tail = ["-m", "vlsft.train", "--config", recipe.path or "RECIPE.yaml", *overrides]
    if _layout_runs_one_process(recipe, gpu) and not accelerate_config:
        return [sys.executable, *tail]
    command = accelerate_launch()
    if gpu or accelerate_config or layout.strategy == "fsdp2":
        command += ["--config_file", accelerate_config or str(layout.accelerate_config)]
        if layout.deepspeed_config is not None and not accelerate_config:
            command += ["--deepspeed_config_file", str(layout.deepspeed_config)]
        command += ["--num_processes", str(layout.num_processes), "--num_machines", str(layout.nodes)]
        if layout.nodes > 1:
            for variable, flag in NODE_ENV.items():
                command += [flag, _node_value(variable, placeholders, layout.nodes)]
        if layout.nodes > 1 or port:
            command += ["--main_process_port", str(port or DEFAULT_PORT)]
    else:
        # The CPU equivalent: data parallel over gloo on this machine; the run adds the layout's DeepSpeed JSON itself.
        command += ["--multi_gpu", "--num_processes", str(layout.num_processes), "--num_machines", "1"]
        command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port or DEFAULT_PORT)]
    return command + tail


def _node_value(variable: str, placeholders: bool, nodes: int) -> str:
    value = os.environ.get(variable)
    if value and variable == "NODE_RANK" and not (value.strip().isdigit() and int(value) < nodes):
        raise LaunchError(
            f"NODE_RANK={value!r}: this node's rank must be a whole number from 0 (the main node) to {nodes - 1} "
            f"(the layout has {nodes} nodes)."
        )
    if value:
        return value
    if placeholders:
        return f"${variable}"
    missing = " and ".join(name for name in NODE_ENV if not os.environ.get(name))
    raise LaunchError(
        f"a multi-node layout needs {missing} in the environment of every node: NODE_RANK is this node's rank "
        "(0 on the main node, then 1, 2, ...) and MAIN_HOST the address of the main node, e.g. "
        "`NODE_RANK=0 MAIN_HOST=10.0.0.1 vlsft train --config ...` (`--dry-run` prints the command for every node)."
    )


def accelerate_launch() -> list[str]:
    """`accelerate launch` of this interpreter's environment: its `accelerate` script (found even when that
    environment is not activated), else the same command as a module of this interpreter. Never an `accelerate` from
    elsewhere on PATH: its Python would start the training processes, with another environment's vlsft."""
    beside = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return [beside, "launch"] if os.path.isfile(beside) else [sys.executable, "-m", "accelerate.commands.launch"]


def launch_command(recipe: Recipe, overrides: list[str] = (), **kwargs) -> str:
    """`launch_argv` as one shell line (what `--dry-run` prints), with a multi-node layout's `$NODE_RANK` and
    `$MAIN_HOST` left for the shell of each node to fill in where they are not set here."""
    argv = launch_argv(recipe, overrides, placeholders=True, **kwargs)
    placeholders = {f"${variable}" for variable in NODE_ENV}
    return " ".join(f'"{word}"' if word in placeholders else shlex.quote(word) for word in argv)


# Signals that stop a run. The launcher runs in its own session (as torchrun runs its training processes), so a
# Ctrl-C at the terminal (sent to the foreground group: `vlsft train`) or a SIGTERM from a scheduler or container
# runtime (often sent to one process only) reaches it exactly once, from here: a second one would cut short the
# launcher's shutdown of the training processes (torchrun stops waiting for them and leaves them running).
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_launcher(argv: list[str]) -> int:
    """Run the launcher until it ends, passing on SIGINT, SIGTERM and SIGHUP, and return its exit status (128 + N
    when signal N ended it, as shells report it). The launcher (torchrun inside `accelerate launch`) hands the signal to
    every training process and waits for them: on SIGTERM they save a checkpoint at the end of the step and stop
    (torchrun kills them after `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds, default 30)."""
    process: subprocess.Popen | None = None
    early: list[int] = []  # signals that came before the launcher existed: passed on as soon as it does

    def forward(signum, frame):
        if process is None:
            early.append(signum)
        elif process.poll() is None:
            process.send_signal(signum)

    # Handlers can only be set on the main thread; elsewhere the signals stay with whoever handles them there.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = {number: signal.signal(number, forward) for number in _FORWARDED_SIGNALS} if on_main_thread else {}
    try:
        process = subprocess.Popen(argv, start_new_session=True)
        for signum in early:
            process.send_signal(signum)
        # `wait` retries after a signal handler ran (PEP 475), so it returns only once the launcher has ended.
        status = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 128 - status if status < 0 else status
