"""A recipe's rows are checked before its model loads (docs/validation.md, "Bad rows are found before training"), with the
trainer's own check, and only once: the trainer takes the checked datasets as they are."""

from __future__ import annotations

import json
import logging

import pytest

from tests.test_recipe import tiny_recipe, write_colour_dataset
from vlsft.data.validation import InvalidRowsError
from vlsft.recipes import build
from vlsft.recipes.loading import recipe_from_dict

BAD_ROW = 8  # after 8 good rows


def recipe_with_a_missing_image(tmp_path, **training):
    data = write_colour_dataset(tmp_path / "data", rows=BAD_ROW)
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ],
        "images": ["images/missing.png"],
    }
    with open(data, "a") as file:
        file.write(json.dumps(row) + "\n")
    raw = tiny_recipe(data, tmp_path / "out", data={"train": [{"path": str(data)}], "eval_fraction": None})
    raw["training"].update(training)
    return recipe_from_dict(raw)


def test_a_bad_row_fails_by_its_index_before_the_model_is_built(tmp_path, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was built before the rows were checked")

    monkeypatch.setattr(build, "build_model", must_not_load)
    with pytest.raises(InvalidRowsError) as error:
        build.build_trainer(recipe_with_a_missing_image(tmp_path))
    assert f"row {BAD_ROW}: image 0 not found" in str(error.value)


def test_skipped_rows_are_checked_once_and_keep_their_indices(tmp_path, monkeypatch, caplog):
    built = []
    real_build_model = build.build_model
    monkeypatch.setattr(build, "build_model", lambda recipe: built.append(recipe) or real_build_model(recipe))
    with caplog.at_level(logging.WARNING):
        trainer = build.build_trainer(recipe_with_a_missing_image(tmp_path, invalid_rows="skip"))
    assert len(built) == 1
    skips = [record for record in caplog.records if "invalid_rows='skip': dropped 1 of 9 train rows" in record.getMessage()]
    assert len(skips) == 1  # one check: the trainer did not validate the rows again
    assert len(trainer.train_dataset) == BAD_ROW
    assert trainer._original_row_indices[None] == list(range(BAD_ROW))
