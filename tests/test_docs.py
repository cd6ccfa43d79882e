"""The code blocks of the documentation (README.md and docs/*.md) are run, so the examples cannot rot:

- python blocks are executed, in a fresh namespace inside a temporary folder; a block that needs a Hub model is
  preceded by `<!-- docs-test: compile-only ... -->` and only compiled;
- yaml blocks are recipe sections: laid over `recipes/demo.yaml`, validated by the recipe loader and planned as
  `vlsft train --dry-run` plans;
- json blocks are rows: parsed, and their image and video placeholders match the media they list;
- bash blocks name only commands vlsft knows, make targets the Makefile has, and files and recipes that exist.

Paths written in the text (`tests/test_x.py::test_name`, `recipes/x.yaml`, `benchmarks/x.py`) must exist too.
Each checker is also shown a broken block, which it must refuse (`test_the_checkers_refuse_broken_blocks`)."""

from __future__ import annotations

import copy
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from vlsft.data.rows import (
    count_image_placeholders,
    count_video_placeholders,
    normalize_messages,
    placeholder_mismatch,
    row_images,
    row_videos,
)
from vlsft.recipes.loading import recipe_from_dict
from vlsft.recipes.plan import describe_plan

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
COMPILE_ONLY = "<!-- docs-test: compile-only"
# What a shell block may start a command with.
COMMANDS = {"make", "vlsft", "accelerate", "python", ".venv/bin/tensorboard", "tensorboard"}
# Folders of the repository whose files the docs name; a path under one of them must exist.
REPO_FOLDERS = ("recipes/", "configs/", "vlsft/", "benchmarks/", "tests/", "docs/", ".ci/")


@dataclass
class Block:
    page: Path
    line: int
    language: str
    text: str
    compile_only: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        compile_only = bool(before) and before[-1].startswith(COMPILE_ONLY)
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(page, line, match.group(1), match.group(2), compile_only))
    return blocks


BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def blocks_of(*languages: str) -> list[Block]:
    return [block for block in BLOCKS if block.language in languages]


# --- python -------------------------------------------------------------------------------------------------------


def run_python_block(block: Block, workdir: Path) -> None:
    code = compile(block.text, str(block), "exec")
    if not block.compile_only:
        exec(code, {"__name__": "__docs__"})


@pytest.mark.parametrize("block", blocks_of("python"), ids=str)
def test_python_blocks_run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_python_block(block, tmp_path)


# --- yaml ---------------------------------------------------------------------------------------------------------

DEMO_RECIPE = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())


def overlay(base: dict, section: dict) -> dict:
    """`section` laid over `base`: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in section.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def check_yaml_block(block: Block) -> str:
    """The block's sections over the demo recipe, validated and planned; returns the plan."""
    section = yaml.safe_load(block.text)
    assert isinstance(section, dict), f"{block}: a recipe block is a mapping of recipe sections"
    recipe = recipe_from_dict(overlay(DEMO_RECIPE, section), path=str(block))
    return describe_plan(recipe)


@pytest.mark.parametrize("block", blocks_of("yaml", "yml"), ids=str)
def test_yaml_blocks_are_valid_recipe_sections(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "valid" in check_yaml_block(block)


# --- json ---------------------------------------------------------------------------------------------------------


def check_json_block(block: Block) -> None:
    row = json.loads(block.text)
    messages = normalize_messages(row["messages"])
    roles = {message["role"] for message in messages}
    assert roles <= {"system", "user", "assistant", "tool"}, f"{block}: roles {roles}"
    assert "assistant" in roles, f"{block}: no assistant turn"
    problems = [
        placeholder_mismatch("image", count_image_placeholders(messages), len(row_images(row))),
        placeholder_mismatch("video", count_video_placeholders(messages), len(row_videos(row))),
    ]
    assert not any(problems), f"{block}: {problems}"


@pytest.mark.parametrize("block", blocks_of("json"), ids=str)
def test_json_blocks_are_rows_whose_placeholders_match(block):
    check_json_block(block)


# --- shell --------------------------------------------------------------------------------------------------------


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def check_shell_block(block: Block) -> None:
    targets = make_targets()
    for words in shell_commands(block.text):
        assert words[0] in COMMANDS, f"{block}: unknown command {words[0]!r}"
        if words[0] == "make":
            assert set(words[1:]) <= targets, f"{block}: no make target {sorted(set(words[1:]) - targets)}"
        if words[0] == "vlsft":
            assert words[1] in ("train", "inspect"), f"{block}: no command `vlsft {words[1]}`"
        for word in words:
            if word.startswith(REPO_FOLDERS) and Path(word).suffix:
                assert (REPO / word).exists(), f"{block}: {word} does not exist"


@pytest.mark.parametrize("block", blocks_of("bash", "sh", "shell"), ids=str)
def test_shell_blocks_name_existing_targets_and_files(block):
    check_shell_block(block)


def test_every_code_block_is_checked():
    """A block in another language would go unchecked: only text blocks (outputs) may be left out."""
    checked = {"python", "yaml", "yml", "json", "bash", "sh", "shell"}
    unchecked = [str(block) for block in BLOCKS if block.language not in checked | {"text"}]
    assert unchecked == [], "give these blocks a language the docs test checks, or `text` for output"
    assert len(BLOCKS) > 20


# --- paths in the text ------------------------------------------------------------------------------------------

PATH_IN_TEXT = re.compile(r"`((?:tests|recipes|benchmarks|configs)/[\w./-]+\.\w+)(?:::(\w+))?`")


def missing_paths(text: str) -> list[str]:
    missing = []
    for path, test_name in PATH_IN_TEXT.findall(text):
        # The architecture page names modules inside the package by their path there (`recipes/loading.py`).
        file = REPO / path if (REPO / path).exists() else REPO / "vlsft" / path
        if "*" in path:
            continue
        if not file.exists():
            missing.append(path)
        elif test_name and not re.search(rf"^def {test_name}\(", file.read_text(), re.MULTILINE):
            missing.append(f"{path}::{test_name}")
    return missing


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_the_files_and_tests_the_text_names_exist(page):
    assert missing_paths(page.read_text()) == []


# --- the checkers can fail ----------------------------------------------------------------------------------------


def test_the_checkers_refuse_broken_blocks(tmp_path):
    page = REPO / "docs" / "index.md"
    with pytest.raises(NameError):
        run_python_block(Block(page, 1, "python", "VLSFTConfig(output_dir='x')\n", False), tmp_path)
    with pytest.raises(SyntaxError):
        run_python_block(Block(page, 1, "python", "def broken(:\n", True), tmp_path)
    with pytest.raises(Exception, match="learning_rat"):
        check_yaml_block(Block(page, 1, "yaml", "training:\n  learning_rat: 1.0e-5\n", False))
    with pytest.raises(AssertionError, match="placeholder"):
        check_json_block(Block(page, 1, "json", json.dumps({
            "messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "x"}],
            "images": [],
        }), False))
    with pytest.raises(AssertionError, match="no make target"):
        check_shell_block(Block(page, 1, "bash", "make demo-that-does-not-exist\n", False))
    with pytest.raises(AssertionError, match="does not exist"):
        check_shell_block(Block(page, 1, "bash", "vlsft train --config recipes/no_such_recipe.yaml --dry-run\n", False))
    assert missing_paths("`tests/test_docs.py::no_such_test` and `recipes/nothing.yaml`") == [
        "tests/test_docs.py::no_such_test", "recipes/nothing.yaml",
    ]
