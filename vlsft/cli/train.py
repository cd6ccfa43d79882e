"""`vlsft train --config RECIPE [--dry-run] [--key value ...]`: validate a recipe, then train it on its layout.

A layout of one process trains here. A layout that wants several processes, DeepSpeed or FSDP is started with
`accelerate launch` (`vlsft.recipes.launch`), which runs `vlsft.train` in every process; without a GPU that is the
layout's CPU equivalent over gloo. `--dry-run` prints the plan and the exact command, and loads nothing.

Launcher flags: `--num_processes N` (processes in all; it becomes the override `--layout.gpus_per_node N/nodes`, so
the dry run, the launcher and every process agree on it), `--accelerate_config FILE` (instead of the layout's) and
`--main_process_port PORT`. Every other `--key value` overrides the recipe and is passed on to every process.
The launcher's exit status is `vlsft train`'s, and SIGINT / SIGTERM reach the training processes
(`vlsft.recipes.launch.run_launcher`). A run stopped by SIGTERM saves its checkpoint and exits 143 (128 + 15), on one
process or several, so that a scheduler does not take the partial run for a finished one.
"""

from __future__ import annotations

import argparse
import sys

from vlsft.cli.console_logs import show_vlsft_logs
from vlsft.recipes.launch import (
    LaunchError,
    check_launchable,
    check_port,
    launch_argv,
    launch_command,
    run_launcher,
    runs_in_this_process,
)
from vlsft.recipes.loading import load_recipe, parse_overrides
from vlsft.recipes.schema import Recipe, RecipeError


def parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a vision-language model from a recipe. Extra `--key value` pairs override the "
        "recipe: a `training` field (`--max_steps 10`) or a dotted path (`--model.dtype float32`, "
        "`--layout.gpus_per_node 4`).",
        allow_abbrev=False,  # an override such as `--dry 1` or `--config_x` is the recipe's, never one of these flags
    )
    parser.add_argument("--config", required=True, help="the recipe YAML file")
    parser.add_argument("--dry-run", "--dry_run", action="store_true", help="validate and print the plan; load nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`vlsft train`: train here, or start `accelerate launch` for the recipe's layout."""
    cli = parser("vlsft train")
    cli.add_argument(
        "--num_processes", type=int,
        help="processes in all (`layout.gpus_per_node` x `layout.nodes`); sets `layout.gpus_per_node`, which every "
        "process sees",
    )
    cli.add_argument("--accelerate_config", help="launch with this accelerate config instead of the layout's")
    cli.add_argument("--main_process_port", type=int, help="the launcher's rendezvous port (default 29500)")
    args, overrides = cli.parse_known_args(argv)
    show_vlsft_logs()
    launch = {"accelerate_config": args.accelerate_config, "port": args.main_process_port}
    try:
        check_port(args.main_process_port)
        recipe = load_recipe(args.config, overrides)
        if args.num_processes is not None:
            per_node = gpus_per_node(recipe, args.num_processes, overrides)
            if per_node != recipe.layout.gpus_per_node:
                overrides = overrides + ["--layout.gpus_per_node", str(per_node)]
                recipe = load_recipe(args.config, overrides)
        return plan_or_train(recipe, overrides, args.dry_run, launch)
    except (RecipeError, LaunchError) as error:  # RecipeError also while loading data: a column or file is missing
        return _refused(error)


def plan_or_train(recipe: Recipe, overrides: list[str], dry_run: bool, launch: dict | None = None) -> int:
    """The dry run's plan, or the run: through `accelerate launch` when `launch` (the launcher's options, which only
    `vlsft train` passes) is given and the layout wants several processes or sharding, else in this process."""
    if dry_run:
        from vlsft.recipes.plan import describe_plan

        print(describe_plan(recipe, overrides, **(launch or {})))
        return 0
    if launch is not None and (launch["accelerate_config"] or not runs_in_this_process(recipe)):
        check_launchable(recipe)
        command = launch_argv(recipe, overrides, **launch)
        print(f"vlsft: launching {launch_command(recipe, overrides, **launch)}", file=sys.stderr, flush=True)
        return run_launcher(command)
    return run_reporting_bad_rows(recipe)


def _refused(error: RecipeError | LaunchError) -> int:
    reason = "invalid recipe" if isinstance(error, RecipeError) else "cannot launch"
    print(f"vlsft: {reason}: {error}", file=sys.stderr)
    return 2


def gpus_per_node(recipe: Recipe, num_processes: int, overrides: list[str]) -> int:
    """`layout.gpus_per_node` for `--num_processes` processes in all over the layout's nodes (the override that
    the dry run shows and every launched process applies)."""
    nodes = recipe.layout.nodes
    if num_processes < 1:
        raise RecipeError(f"`--num_processes {num_processes}` must be at least 1 (the processes of the run, in all).")
    if num_processes % nodes:
        raise RecipeError(
            f"`--num_processes {num_processes}`: the layout has {nodes} node(s); pass a multiple of {nodes} "
            "(processes in all), or set `--layout.gpus_per_node` and `--layout.nodes`."
        )
    per_node = num_processes // nodes
    if any(key == "layout.gpus_per_node" for key, _ in parse_overrides(overrides)) and recipe.layout.gpus_per_node != per_node:
        raise RecipeError(
            f"`--num_processes {num_processes}` and `--layout.gpus_per_node {recipe.layout.gpus_per_node}` disagree "
            f"({nodes} node(s)); pass one of them."
        )
    return per_node


def run_in_process(argv: list[str] | None = None) -> int:
    """The per-process entry point (`vlsft/train.py`, `python -m vlsft.train`): train the recipe in this process,
    whatever its layout (the launcher has already started the processes)."""
    args, overrides = parser("vlsft.train").parse_known_args(argv)
    show_vlsft_logs()
    try:
        return plan_or_train(load_recipe(args.config, overrides), overrides, args.dry_run)
    except (RecipeError, LaunchError) as error:
        return _refused(error)


def run_reporting_bad_rows(recipe: Recipe) -> int:
    from vlsft.checkpoints import CheckpointError
    from vlsft.data.training_rows import TrainingRowError
    from vlsft.data.validation import InvalidRowsError  # imports torch and datasets: only once a run really starts
    from vlsft.distributed import leave_distributed_run
    from vlsft.recipes.build import run

    try:
        trainer = run(recipe)
    except InvalidRowsError as error:  # every bad row is named in the message; a traceback adds nothing
        print(f"vlsft: {error}\nFix these rows, or drop them with `--invalid_rows skip`.", file=sys.stderr)
        return 1
    except (CheckpointError, TrainingRowError) as error:  # the message says what to do; a traceback adds nothing
        print(f"vlsft: {error}", file=sys.stderr)
        return 1
    # Every rank leaves together, with its process group shut down (and, on several processes, without the
    # interpreter teardown that can abort a finished run: `leave_distributed_run`). A run SIGTERM stopped exits 143
    # on every rank and every entry path, its checkpoint saved: a scheduler must not take it for a finished one.
    status = trainer.preemption.exit_status
    leave_distributed_run(trainer.accelerator, status)
    return status
