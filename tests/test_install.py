"""`pip install .` into a fresh virtual environment outside the repository, as a user does: the wheel holds every
module, chat template and layout config; `import vlsft` there imports that copy and no test fixture; `vlsft train
--config <a copied recipe> --dry-run`, run from a directory outside the repository, finds the shipped layouts inside
the installed package; and the installed `vlsft train` launches a 2-process DeepSpeed run from them.

Nothing is downloaded: vlsft is built into a wheel with the build tools of this test's environment and installed
from it (not editable) without its dependencies, which the fresh environment reads from this test's environment
through a `.pth` file (the one thing a networked `pip install .` would add)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.test_distributed import LAUNCH_TIMEOUT, free_port
from tests.test_recipe import tiny_recipe

REPO = Path(__file__).resolve().parents[1]


def run(command: list, cwd: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """A command of the fresh environment, as a user runs it: no PYTHONPATH (which would import the repository's
    vlsft), from `cwd` outside the repository, the Hub offline."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **env)
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(directory outside the repository, fresh venv, site-packages of the venv, built wheel, source copy)."""
    root = tmp_path_factory.mktemp("install")
    # The files a clone of this worktree has (links kept), so the in-tree build leaves nothing in the repository.
    source = root / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        origin, copy = REPO / name, source / name
        if not os.path.lexists(origin):  # deleted in the worktree, not yet committed
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            copy.symlink_to(os.readlink(origin))
        else:
            shutil.copy2(origin, copy)
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    # The dependencies (and pip, setuptools), from this test's environment, after the venv's own site-packages.
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_dependencies.pth").write_text("\n".join(sorted(shared)) + "\n")
    dist = root / "dist"
    run([python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source], cwd=root)
    (wheel,) = dist.glob("vlsft-*.whl")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=root)
    return root, venv, site, wheel, source


def test_the_wheel_holds_every_module_template_and_layout(installed):
    from vlsft.recipes.layouts import DEEPSPEED_LAYOUTS, LAYOUTS

    _, _, _, wheel, source = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(source).as_posix() for path in (source / "vlsft").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    for package in ("vlsft/data", "vlsft/recipes", "vlsft/cli", "vlsft/testing"):
        assert f"{package}/__init__.py" in names
    assert {f"vlsft/configs/{name}" for name in [*LAYOUTS.values(), *DEEPSPEED_LAYOUTS.values()]} <= names
    templates = {f"vlsft/templates/{path.name}" for path in (source / "vlsft" / "templates").glob("*.jinja")}
    assert templates and templates <= names
    assert not any(name.startswith(("tests/", "recipes/", "configs/", "benchmarks/")) for name in names)


def test_installed_vlsft_dry_runs_a_copied_recipe_with_the_shipped_layouts(installed):
    root, venv, site, _, _ = installed
    package = site / "vlsft"
    # `import vlsft` outside the repository imports the installed copy, and no test fixture.
    probe = "import sys, vlsft; print(vlsft.__file__); print(sorted(m for m in sys.modules if m.startswith('vlsft.testing')))"
    imported, fixtures = run([venv / "bin" / "python", "-c", probe], cwd=root).stdout.splitlines()
    assert Path(imported) == package / "__init__.py" and fixtures == "[]"

    shutil.copy(REPO / "recipes" / "qwen3_vl_2b_mixture_full_zero2.yaml", root / "my_recipe.yaml")
    plan = run([venv / "bin" / "vlsft", "train", "--config", "my_recipe.yaml", "--dry-run"], cwd=root).stdout
    assert "recipe     my_recipe.yaml: valid" in plan
    layout = next(line for line in plan.splitlines() if line.startswith("layout "))
    assert layout == (
        f"layout     zero2: 4 GPU(s) per node x 1 node(s) ({package}/configs/zero2.yaml, DeepSpeed "
        f"{package}/configs/ds_zero2.json)"
    )
    assert (package / "configs" / "zero2.yaml").is_file() and (package / "configs" / "ds_zero2.json").is_file()
    launch = next(line for line in plan.splitlines() if line.startswith("launch ")).split()[1:]
    # The fresh environment's own launcher (never an `accelerate` from elsewhere on PATH), 4 processes, this recipe.
    assert Path(launch[0]).parent == venv / "bin", launch
    assert launch[launch.index("--num_processes") + 1] == "4"
    assert launch[-4:] == ["-m", "vlsft.train", "--config", "my_recipe.yaml"]


@pytest.mark.slow
def test_installed_vlsft_trains_on_two_processes_with_a_shipped_deepspeed_layout(installed):
    """The installed `vlsft train` starts `accelerate launch` with the fresh environment's Python, whose processes
    import the installed vlsft, find the shipped ZeRO-2 JSON in it and train 2 steps over gloo."""
    root, venv, _, _, _ = installed
    raw = tiny_recipe(root, root / "out", layout={"strategy": "zero2", "gpus_per_node": 2})
    raw["data"] = {"train": [{"path": "demo-shapes", "split": "train", "rows": 8}]}
    (root / "tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    command = [venv / "bin" / "vlsft", "train", "--config", "tiny.yaml", "--main_process_port", free_port()]
    result = run(command, cwd=root, timeout=LAUNCH_TIMEOUT)
    assert "differs from layout" not in result.stderr, result.stderr[-3000:]
    state = json.loads((root / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == 1.0  # 2 steps x 2 ranks x 2 rows: all 8 rows
