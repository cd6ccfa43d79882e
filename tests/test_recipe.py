"""Recipes: schema validation (typos, types, impossible combinations), command-line overrides, `--dry-run`, and the
dataset loader (local JSONL / Parquet / image folder / Hub name through `datasets.load_dataset`, row limits,
held-out eval, weighted mixture)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
import yaml
from PIL import Image

from vlsft.recipes import plan
from vlsft.recipes.mixture import mixture_counts
from vlsft.recipes.loading import load_recipe, recipe_from_dict
from vlsft.recipes.schema import RecipeError
from vlsft.cli.train import main
from vlsft.recipes.datasets import build_datasets

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220)}


def write_colour_dataset(directory: Path, rows: int = 12, name: str = "train.jsonl") -> Path:
    """A JSONL of `rows` one-image conversations ("What colour?" -> colour) with PNGs under `directory/images`,
    referenced by paths relative to the JSONL file."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    path = directory / name
    with open(path, "w") as file:
        for i in range(rows):
            colour = list(COLOURS)[i % len(COLOURS)]
            image = f"images/{name.split('.')[0]}_{i}.png"
            Image.new("RGB", (64, 64), COLOURS[colour]).save(directory / image)
            row = {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"{path.stem} row {i}: what colour?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": colour}]},
                ],
                "images": [image],
            }
            file.write(json.dumps(row) + "\n")
    return path


def tiny_recipe(data_path: Path, output_dir: Path, **sections) -> dict:
    """A recipe dict for the tiny model on a local dataset; `sections` update the defaults section by section."""
    recipe = {
        "model": {"name_or_path": "tiny-qwen3-vl"},
        "data": {"train": [{"path": str(data_path)}], "eval_fraction": 0.25},
        "training": {
            "output_dir": str(output_dir),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "activation_checkpointing": False,
            "report_to": "none",
            "logging_steps": 1,
            "save_strategy": "no",
            "dataloader_num_workers": 0,
        },
        "layout": {"strategy": "cpu"},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values} if values is not None else None
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def colour_data(tmp_path):
    return write_colour_dataset(tmp_path / "data")


def check_error(raw: dict, *fragments: str):
    with pytest.raises(RecipeError) as error:
        recipe_from_dict(raw)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    return str(error.value)


# -- shipped recipes ---------------------------------------------------------------------------------------------


def test_at_least_three_recipes_ship():
    names = {path.name for path in RECIPES}
    assert {"qwen3vl.yaml", "qwen3_vl_4b_lora_single_gpu.yaml", "qwen3_vl_8b_qlora_single_gpu.yaml", "qwen3_vl_2b_mixture_full_zero2.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_every_shipped_recipe_passes_dry_run(recipe, capsys, monkeypatch):
    from vlsft.recipes.launch import launch_argv, launch_command
    from vlsft.recipes.layouts import CONFIGS_DIR

    monkeypatch.chdir(REPO)
    assert main(["--config", f"recipes/{recipe.name}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    loaded = load_recipe(f"recipes/{recipe.name}")
    layout = loaded.layout
    # The plan shows the exact command `vlsft train` runs on this machine ...
    assert f"launch     {launch_command(loaded)}\n" in out
    # ... and on GPUs that is the layout's shipped accelerate config (and DeepSpeed JSON), found by absolute path.
    command = launch_argv(loaded, gpu=True)
    assert command[-4:] == ["-m", "vlsft.train", "--config", f"recipes/{recipe.name}"]
    if layout.num_processes > 1 or layout.deepspeed_config or layout.strategy == "fsdp2":
        config = command[command.index("--config_file") + 1]
        assert config == str(CONFIGS_DIR / f"{layout.strategy}.yaml") and os.path.isfile(config)
        assert command[command.index("--num_processes") + 1] == str(layout.num_processes)
        if layout.deepspeed_config:
            assert os.path.isfile(command[command.index("--deepspeed_config_file") + 1])
    else:
        assert "accelerate" not in " ".join(command)  # one process: trained in the `vlsft train` process itself
    assert (REPO / "configs" / f"{layout.strategy}.yaml").is_file()  # the top-level link to the shipped configs


def test_dry_run_prints_the_plan_of_the_main_recipe(capsys, monkeypatch):
    from vlsft.recipes.launch import accelerate_launch, has_gpu, launch_command
    from vlsft.recipes.layouts import CONFIGS_DIR

    monkeypatch.chdir(REPO)
    assert main(["--config", "recipes/qwen3vl.yaml", "--dry-run", "--max_steps", "100"]) == 0
    out = capsys.readouterr().out
    launch = next(line for line in out.splitlines() if line.startswith("launch"))
    gpu_command = (
        f"{' '.join(accelerate_launch())} --config_file {CONFIGS_DIR}/zero3.yaml --deepspeed_config_file "
        f"{CONFIGS_DIR}/ds_zero3.json --num_processes 8 --num_machines 1 -m vlsft.train --config recipes/qwen3vl.yaml "
        "--max_steps 100"
    )
    cpu_command = (
        f"{' '.join(accelerate_launch())} --multi_gpu --num_processes 8 --num_machines 1 --mixed_precision no "
        "--dynamo_backend no --main_process_port 29500 -m vlsft.train --config recipes/qwen3vl.yaml --max_steps 100"
    )
    assert launch.split(None, 1)[1] == (gpu_command if has_gpu() else cpu_command)
    recipe = load_recipe("recipes/qwen3vl.yaml")
    assert launch_command(recipe, ["--max_steps", "100"], gpu=True) == gpu_command
    assert "2 per device x 4 accumulation x 8 process(es) = 64 rows per optimizer step" in out
    assert "max_steps 100" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "frozen" in lines["vision_tower"]
    assert "lr 2e-05" in lines["merger"] and "lr 1e-05" in lines["language_model"]
    assert "Qwen/Qwen3-VL-2B-Instruct" in out and "zero3" in out and "ds_zero3.json" in out


def test_dry_run_counts_parameters_and_rows_without_loading(tmp_path, colour_data, capsys):
    """A local model directory is counted on the meta device; local JSONL rows are counted from the file."""
    from vlsft.model_parts import parameter_counts
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl, save_tiny_qwen3_vl

    model_dir = save_tiny_qwen3_vl(tmp_path / "model")
    raw = tiny_recipe(colour_data, tmp_path / "out", model={"name_or_path": str(model_dir), "freeze_vision_tower": True})
    path = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    counts = parameter_counts(build_tiny_qwen3_vl()[0])
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert f"0 / {plan._human(counts['vision_tower'][1])}" in lines["vision_tower"]
    assert "frozen" in lines["vision_tower"]
    total = plan._human(counts["language_model"][1])
    assert f"{total} / {total}" in lines["language_model"]
    assert "12 rows) -> 9 rows" in out  # 12 rows, a quarter held out for evaluation


# -- validation --------------------------------------------------------------------------------------------------


def minimal(**sections) -> dict:
    raw = {"model": {"name_or_path": "tiny-qwen3-vl"}, "data": {"train": [{"path": "demo-shapes", "rows": 8}]}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


@pytest.mark.parametrize(
    "raw, key, suggestion",
    [
        ({**minimal(), "trainig": {}}, "trainig", "training"),
        (minimal(model={"freeze_vison_tower": True}), "freeze_vison_tower", "freeze_vision_tower"),
        (minimal(training={"learning_rat": 1e-5}), "learning_rat", "learning_rate"),
        (minimal(training={"per_device_train_batchsize": 2}), "per_device_train_batchsize", "per_device_train_batch_size"),
        (minimal(lora={"rank": 8, "alpah": 16}), "rank", None),
        (minimal(layout={"strategy": "zero_3"}), "zero_3", "zero3"),
        (minimal(model={"dtype": "bfloat61"}), "bfloat61", "bfloat16"),
        ({"model": {"name_or_path": "x"}, "data": {"train": [{"path": "d", "splt": "train"}]}}, "splt", "split"),
    ],
)
def test_unknown_key_names_the_key_and_the_closest_valid_one(raw, key, suggestion):
    message = check_error(raw, f"`{key}`")
    if suggestion:
        assert f"Did you mean `{suggestion}`?" in message


@pytest.mark.parametrize(
    "raw, key, expected",
    [
        (minimal(training={"max_steps": "ten"}), "training.max_steps", "an integer"),
        (minimal(training={"learning_rate": "fast"}), "training.learning_rate", "a number"),
        (minimal(training={"bf16": "yes"}), "training.bf16", "true or false"),
        (minimal(lora={"r": 1.5}), "lora.r", "an integer"),
        (minimal(model={"freeze_merger": 1}), "model.freeze_merger", "true or false"),
        (minimal(lora={"target_modules": 3.5}), "lora.target_modules", "a string or a list of strings"),
        ({"model": {"name_or_path": "x"}, "data": {"train": "d.jsonl"}}, "data.train", "list"),
    ],
)
def test_wrong_type_names_the_key_and_the_expected_type(raw, key, expected):
    check_error(raw, f"`{key}`", expected)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (minimal(data={"train": [{"path": "a.jsonl", "rows": 5, "fraction": 0.5}]}), "`rows` or `fraction`"),
        (minimal(data={"train": [{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl"}]}), "data.train.1"),
        (minimal(training={"eval_strategy": "steps"}), "needs `data.eval` or `data.eval_fraction`"),
        (minimal(layout={"strategy": "single_gpu", "gpus_per_node": 2}), "runs one process"),
        (minimal(lora={"load_in_4bit": True}, layout={"strategy": "zero3", "gpus_per_node": 8}), "QLoRA"),
        (minimal(model={"freeze_vision_tower": True, "vision_tower_lr": 1e-6}), "vision tower is frozen"),
        (minimal(lora={}, model={"freeze_vision_tower": False}), "lora.vision: true"),
        (minimal(data={"eval_answer_accuracy": 8}), "needs an evaluation set"),
        (minimal(data={"train": [{"path": "demo-shapes"}]}), "say how many with `rows`"),
        (minimal(data={"eval_fraction": 1.5}), "must be in (0, 1)"),
        (minimal(model={"tiny": {"hidden_size": 32}, "name_or_path": "Qwen/Qwen3-VL-2B-Instruct"}), "model.tiny"),
    ],
)
def test_impossible_combinations_say_what_to_change(raw, fragment):
    check_error(raw, fragment)


def test_yaml_numbers_and_aliases(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: {name_or_path: tiny-qwen3-vl, dtype: bf16, merger_lr: 2e-5, freeze_merger: false}\n"
        "data: {train: {path: demo-shapes, rows: 8}}\n"  # a single source without a list
        "training: {learning_rate: 1e-5, max_grad_norm: 1}\n"
        "lora: {alpha: 16}\n"
    )
    recipe = load_recipe(path)
    assert recipe.training["learning_rate"] == 1e-5 and isinstance(recipe.training["learning_rate"], float)
    assert recipe.model.merger_lr == 2e-5
    assert recipe.model.dtype == "bfloat16"
    assert recipe.lora.alpha == 16
    assert len(recipe.data.train) == 1 and recipe.data.train[0].rows == 8
    # With LoRA the base weights are frozen unless asked otherwise; a full fine-tune trains everything by default.
    assert recipe.freeze_vision_tower and not recipe.freeze_merger
    assert recipe_from_dict(minimal(lora={})).freeze_merger
    full = recipe_from_dict(minimal())
    assert not full.freeze_vision_tower and not full.freeze_merger


def test_overrides_reach_training_fields_and_dotted_paths(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", minimal(training={"max_steps": 100}))
    recipe = load_recipe(
        path,
        [
            "--max_steps", "3",
            "--output_dir", "123",  # a string field keeps a numeric-looking value as a string
            "--learning_rate=2e-4",
            "--model.dtype", "float32",
            "--data.train.0.rows", "5",
            "--lora.r", "4",
            "--bf16",  # a bare flag is true
        ],
    )
    assert recipe.training["max_steps"] == 3
    assert recipe.training["output_dir"] == "123"
    assert recipe.training["learning_rate"] == 2e-4
    assert recipe.training["bf16"] is True
    assert recipe.model.dtype == "float32"
    assert recipe.data.train[0].rows == 5
    assert recipe.lora.r == 4


@pytest.mark.parametrize(
    "override, fragment",
    [
        (["--max_step", "3"], "Did you mean `max_steps`?"),
        (["--model.dtyp", "float32"], "Did you mean `dtype`?"),
        (["--modle.dtype", "float32"], "Did you mean `model`?"),
        (["--data.train.3.rows", "5"], "not an index"),
        (["--max_steps", "many"], "`training.max_steps` must be an integer"),
        (["stray"], "Unexpected argument"),
        (["--model.name_or_path.bits", "16"], "is a value, not a section"),
    ],
)
def test_bad_overrides_are_named(tmp_path, override, fragment):
    path = write_recipe(tmp_path / "r.yaml", minimal())
    with pytest.raises(RecipeError, match=None) as error:
        load_recipe(path, override)
    assert fragment in str(error.value)


def test_invalid_recipe_exits_2_with_the_message(tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", minimal(training={"num_train_epoch": 3}))
    assert main(["--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "num_train_epoch" in err and "num_train_epochs" in err and str(path) in err


def test_invalid_training_value_is_caught_by_dry_run(tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", minimal(training={"eval_strategy": "stpes"}, data={"eval_fraction": 0.2}))
    assert main(["--config", str(path), "--dry-run"]) == 2
    assert "stpes" in capsys.readouterr().err


# -- datasets ----------------------------------------------------------------------------------------------------


@pytest.fixture
def load_calls(monkeypatch):
    """Every `datasets.load_dataset` call the loader makes (the real function still runs)."""
    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    return calls


def answers(dataset) -> list[str]:
    return [row["messages"][-1]["content"][0]["text"] for row in dataset]


def prompts(dataset) -> list[str]:
    return [row["messages"][0]["content"][-1]["text"] for row in dataset]


def test_local_jsonl_parquet_and_image_folder_all_load_through_load_dataset(tmp_path, load_calls):
    jsonl = write_colour_dataset(tmp_path / "j", rows=6)
    parquet = tmp_path / "p" / "rows.parquet"
    parquet.parent.mkdir()
    datasets.load_dataset("json", data_files=str(jsonl), split="train").to_parquet(str(parquet))
    folder = tmp_path / "folder"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as file:
        for i, colour in enumerate(["red", "blue", "green", "red"]):
            Image.new("RGB", (64, 64), COLOURS[colour]).save(folder / f"{i}.png")
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": colour}]},
            ]
            file.write(json.dumps({"file_name": f"{i}.png", "messages": messages}) + "\n")
    load_calls.clear()
    raw = minimal(data={"train": [{"path": str(jsonl)}, {"path": str(parquet), "image_root": str(jsonl.parent)}, {"path": str(folder)}]})
    train, evaluation = build_datasets(recipe_from_dict(raw))
    assert evaluation is None
    assert len(load_calls) == 3  # one `datasets.load_dataset` per source, whatever its kind
    assert len(train) == 6 + 6 + 4
    assert answers(train)[-4:] == ["red", "blue", "green", "red"]
    from vlsft.data.rows import load_image, row_images

    for row in train:  # every image resolves and decodes: relative paths against the JSONL's directory
        images = row_images(row)
        assert len(images) == 1
        assert load_image(images[0]).size == (64, 64)


def test_hub_names_go_through_load_dataset_with_name_and_split(monkeypatch, tmp_path):
    local = datasets.load_dataset("json", data_files=str(write_colour_dataset(tmp_path, rows=5)), split="train")
    calls = []

    def fake_hub(path, **kwargs):
        calls.append((path, kwargs))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    raw = minimal(data={"train": [{"path": "someone/vqa", "name": "en", "split": "train[:5]", "image_root": str(tmp_path)}]})
    train, _ = build_datasets(recipe_from_dict(raw))
    assert calls[0][0] == "someone/vqa"
    assert calls[0][1]["name"] == "en" and calls[0][1]["split"] == "train[:5]"
    assert len(train) == 5


def test_column_mapping_renames_to_messages_and_images(tmp_path):
    path = tmp_path / "renamed.jsonl"
    source = write_colour_dataset(tmp_path, rows=4)
    with open(source) as src, open(path, "w") as dst:
        for line in src:
            row = json.loads(line)
            dst.write(json.dumps({"conversation": row["messages"], "pictures": row["images"], "id": 1}) + "\n")
    raw = minimal(data={"train": [{"path": str(path), "columns": {"messages": "conversation", "images": "pictures"}}]})
    train, _ = build_datasets(recipe_from_dict(raw))
    assert {"messages", "images"} <= set(train.column_names)
    assert answers(train) == ["red", "green", "blue", "red"]
    bad = minimal(data={"train": [{"path": str(path), "columns": {"messages": "conversations"}}]})
    with pytest.raises(RecipeError, match="no column `conversations`"):
        build_datasets(recipe_from_dict(bad))
    unmapped = minimal(data={"train": [{"path": str(path)}]})
    with pytest.raises(RecipeError, match="has no `messages` column"):
        build_datasets(recipe_from_dict(unmapped))


def test_row_limits_and_eval_fraction_are_seeded_and_disjoint(tmp_path):
    path = write_colour_dataset(tmp_path, rows=20)
    raw = minimal(data={"train": [{"path": str(path), "rows": 12}], "eval_fraction": 0.25})
    train, evaluation = build_datasets(recipe_from_dict(raw))
    assert (len(train), len(evaluation)) == (9, 3)
    assert not set(prompts(train)) & set(prompts(evaluation))
    again, _ = build_datasets(recipe_from_dict(raw))
    assert prompts(again) == prompts(train)
    raw["data"]["seed"] = 1
    other, _ = build_datasets(recipe_from_dict(raw))
    assert prompts(other) != prompts(train)
    fraction = minimal(data={"train": [{"path": str(path), "fraction": 0.5}]})
    assert len(build_datasets(recipe_from_dict(fraction))[0]) == 10


def test_weighted_mixture_has_the_documented_counts(tmp_path):
    small = write_colour_dataset(tmp_path, rows=4, name="small.jsonl")
    large = write_colour_dataset(tmp_path, rows=30, name="large.jsonl")
    raw = minimal(
        data={"train": [{"path": str(small), "weight": 3}, {"path": str(large), "weight": 1}], "mixture_rows": 20}
    )
    train, _ = build_datasets(recipe_from_dict(raw))
    from_small = [p for p in prompts(train) if p in set(prompts(datasets.load_dataset("json", data_files=str(small), split="train")))]
    # 3:1 of 20 rows: 15 from the 4-row source (every row 3 or 4 times: whole passes first), 5 from the 30-row one.
    assert len(train) == 20 and len(from_small) == 15
    assert sorted(from_small.count(p) for p in set(from_small)) == [3, 4, 4, 4]
    assert build_datasets(recipe_from_dict(raw))[0]["messages"] == train["messages"]


def test_mixture_counts_add_up_and_follow_weights():
    assert mixture_counts([10, 10], [1, 1]) == [10, 10]
    assert mixture_counts([4, 30], [3, 1], total=20) == [15, 5]
    counts = mixture_counts([5, 5, 5], [1, 1, 1], total=10)
    assert sum(counts) == 10 and sorted(counts) == [3, 3, 4]


def test_sources_with_different_message_schemas_concatenate(tmp_path):
    """A JSONL (content stored as JSON values) and the demo set (content as structs, with `tools`) mix."""
    path = write_colour_dataset(tmp_path, rows=4)
    raw = minimal(data={"train": [{"path": str(path)}, {"path": "demo-shapes", "rows": 6}]})
    train, _ = build_datasets(recipe_from_dict(raw))
    assert len(train) == 10 and "tools" in train.column_names
    assert answers(train)[:4] == ["red", "green", "blue", "red"]
    assert train[0]["tools"] is None
    for row in train:  # every message still a dict with content items as dicts, whichever storage it came from
        assert all(isinstance(item, dict) for message in row["messages"] for item in message["content"] or [])
    from vlsft.collator import VisionChatCollator
    from vlsft.templates import training_template
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl_processor

    batch = VisionChatCollator(build_tiny_qwen3_vl_processor(), training_template("qwen3_vl"))([train[i] for i in range(len(train))])
    assert batch["input_ids"].shape[0] == 10 and (batch["labels"] != -100).any()


def test_text_only_rows_and_the_training_image_root(tmp_path):
    """A source without images gets an empty `images` column; with `training.image_root` set, relative paths stay
    relative for the collator to resolve."""
    text_only = tmp_path / "text.jsonl"
    text_only.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}) + "\n"
    )
    images = write_colour_dataset(tmp_path / "with_images", rows=2)
    raw = minimal(
        data={"train": [{"path": str(text_only)}, {"path": str(images)}]},
        training={"image_root": str(images.parent)},
    )
    train, _ = build_datasets(recipe_from_dict(raw))
    assert train[0]["images"] == []
    assert train[1]["images"][0]["path"] == "images/train_0.png"
    from vlsft.collator import VisionChatCollator
    from vlsft.templates import training_template
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl_processor

    collator = VisionChatCollator(build_tiny_qwen3_vl_processor(), training_template("qwen3_vl"), image_root=str(images.parent))
    batch = collator([train[0], train[1]])
    assert batch["image_grid_thw"].shape[0] == 1


def test_multi_node_launch_command():
    from vlsft.recipes.launch import launch_command

    recipe = recipe_from_dict(minimal(layout={"strategy": "zero3", "gpus_per_node": 8, "nodes": 2}), path="recipes/x.yaml")
    command = launch_command(recipe, gpu=True)
    # Double-quoted, so the shell of each node fills them in when the printed command is pasted there.
    assert '--num_processes 16 --num_machines 2 --machine_rank "$NODE_RANK" --main_process_ip "$MAIN_HOST"' in command
    assert command.endswith("-m vlsft.train --config recipes/x.yaml")


def test_eval_answer_accuracy_wires_the_callback(tmp_path):
    from vlsft.answer_eval import AnswerAccuracyCallback
    from vlsft.recipes.build import build_trainer

    raw = tiny_recipe(tmp_path, tmp_path / "out")
    raw["data"] = {
        "train": [{"path": "demo-shapes", "rows": 8}],
        "eval": [{"path": "demo-shapes", "split": "eval", "rows": 6}],
        "eval_answer_accuracy": 3,
    }
    trainer = build_trainer(recipe_from_dict(raw))
    callbacks = [c for c in trainer.callback_handler.callbacks if isinstance(c, AnswerAccuracyCallback)]
    assert len(callbacks) == 1 and len(callbacks[0].rows) == 3
    assert len(trainer.eval_dataset) == 6
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and 0.0 <= metrics["eval_answer_accuracy"] <= 1.0
