"""Models and datasets that recipes name instead of a path (`vlsft.recipes.registry`): every registered tiny model
builds, on the meta device too (its processor alone, without weights), as the family its name says; a user's own
registration is used by recipes through the same code path."""

from __future__ import annotations

import pytest
import torch

from vlsft.families import family_of_model, family_of_processor
from vlsft.recipes.build import build_processor
from vlsft.recipes.datasets import build_datasets
from vlsft.recipes.loading import recipe_from_dict
from vlsft.recipes.model_source import check_model_source
from vlsft.recipes.registry import LOCAL_DATASETS, LOCAL_MODELS, build_local_model, register_dataset, register_model

EXPECTED_FAMILY = {
    "tiny-qwen3-vl": "qwen3_vl",
    "tiny-qwen3-vl-moe": "qwen3_vl_moe",
    "tiny-qwen2.5-vl": "qwen2_5_vl",
    "tiny-qwen3.5": "qwen3_5_think",
    "tiny-gemma3": "gemma3",
    "tiny-gemma4": "gemma4_v5",
    "tiny-idefics3": "idefics3",
    "tiny-smolvlm": "smolvlm",
    "tiny-llava-next": "llava_next",
}


def test_every_registered_model_is_expected():
    assert set(LOCAL_MODELS) == set(EXPECTED_FAMILY)


@pytest.mark.parametrize("name", sorted(EXPECTED_FAMILY))
def test_registered_tiny_models_build_as_their_family(name):
    model, processor = build_local_model(name)
    # A model's type names its family up to the template (Gemma 4 and Qwen3.5 have several): the processor's
    # template names it exactly.
    from vlsft.families import FAMILIES
    from vlsft.templates import detect_family

    expected = FAMILIES[EXPECTED_FAMILY[name]]
    assert FAMILIES[detect_family(processor.chat_template)].stock_template == expected.stock_template
    assert model.config.model_type in expected.model_types and family_of_model(model) is not None
    meta_model, meta_processor = build_local_model(name, meta=True)
    assert all(p.device.type == "meta" for p in meta_model.parameters())
    # The processor built without weights is the one the model was built with.
    assert meta_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert meta_processor.chat_template == processor.chat_template
    assert sum(p.numel() for p in meta_model.parameters()) == sum(p.numel() for p in model.parameters())


def test_recipes_reach_a_registered_model_and_dataset_through_the_same_path(monkeypatch):
    import datasets

    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

    built = []

    def my_model(**kwargs):
        built.append(kwargs)
        return build_tiny_qwen3_vl(**kwargs)

    def my_rows(split, rows, seed, cache_dir):
        return datasets.Dataset.from_list(
            [{"messages": [{"role": "user", "content": f"{split} {i}"}, {"role": "assistant", "content": "ok"}]}
             for i in range(rows)]
        )

    monkeypatch.setitem(LOCAL_MODELS, "my-model", None)
    monkeypatch.setitem(LOCAL_DATASETS, "my-rows", None)
    register_model("my-model", my_model)
    register_dataset("my-rows", my_rows)
    recipe = recipe_from_dict({
        "model": {"name_or_path": "my-model", "tiny": {"hidden_size": 32}},
        "data": {"train": [{"path": "my-rows", "rows": 5}], "eval": [{"path": "my-rows", "split": "eval", "rows": 2}]},
    })
    assert check_model_source("my-model") == "built locally"
    processor = build_processor(recipe)
    assert built == [{"hidden_size": 32}] and family_of_processor(processor) == "qwen3_vl"
    train, evaluation = build_datasets(recipe)
    assert [row["messages"][0]["content"] for row in evaluation] == ["eval 0", "eval 1"] and len(train) == 5


def test_a_local_dataset_must_say_how_many_rows():
    from vlsft.recipes.schema import RecipeError

    with pytest.raises(RecipeError, match="generated; say how many with `rows`"):
        recipe_from_dict({"model": {"name_or_path": "tiny-qwen3-vl"}, "data": {"train": [{"path": "demo-shapes"}]}})


def test_tiny_arguments_on_a_loaded_model_are_refused():
    from vlsft.recipes.schema import RecipeError

    with pytest.raises(RecipeError, match="remove `model.tiny`"):
        recipe_from_dict({"model": {"name_or_path": "Qwen/Qwen3-VL-2B-Instruct", "tiny": {"seed": 1}},
                          "data": {"train": [{"path": "x.jsonl"}]}})


def test_meta_builds_keep_no_weights_in_memory():
    model, _ = build_local_model("tiny-qwen3-vl", meta=True)
    assert not any(isinstance(p, torch.Tensor) and p.device.type != "meta" for p in model.parameters())
