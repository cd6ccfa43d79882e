"""`activation_checkpointing_kwargs` (`every_n_layers`, `offload`): refused when malformed before anything loads,
and, on a tiny Qwen3-VL on the CPU, the same gradients as plain checkpointing with the offload really engaged."""

from __future__ import annotations

import pytest
import torch
import transformers.modeling_utils as modeling_utils

from vlsft.config import VLSFTConfig
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every_n_layers": 0}, "every_n_layers` must be an integer >= 1"),
        ({"every_n_layers": -2}, "every_n_layers` must be an integer >= 1"),
        ({"every_n_layers": 1.5}, "every_n_layers` must be an integer >= 1"),
        ({"every_n_layers": True}, "every_n_layers` must be an integer >= 1"),
        ({"every_n_layers": "2"}, "every_n_layers` must be an integer >= 1"),
        ({"offload": "yes"}, "offload` must be true or false"),
        ({"offload": float("nan")}, "offload` must be true or false"),
        ({"ofload": True}, "did you mean `offload`"),
        ({"determinism_check": "strict"}, "determinism_check` must be one of"),
    ],
)
def test_bad_checkpointing_kwargs_are_refused(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        VLSFTConfig(output_dir=str(tmp_path), use_cpu=True, activation_checkpointing=True, activation_checkpointing_kwargs=kwargs)


def test_deprecated_alias_and_json_string_are_checked_too(tmp_path):
    with pytest.raises(ValueError, match="every_n_layers` must be an integer >= 1"):
        VLSFTConfig(output_dir=str(tmp_path), use_cpu=True, gradient_checkpointing_kwargs={"every_n_layers": 0})
    with pytest.raises(ValueError, match="offload` must be true or false"):
        VLSFTConfig(output_dir=str(tmp_path), use_cpu=True, activation_checkpointing_kwargs='{"offload": 1}')
    good = VLSFTConfig(
        output_dir=str(tmp_path), use_cpu=True, activation_checkpointing=True,
        activation_checkpointing_kwargs={"offload": True, "every_n_layers": 2, "use_reentrant": False},
    )  # fmt: skip
    assert good.activation_checkpointing_kwargs == {"offload": True, "every_n_layers": 2, "use_reentrant": False}


def test_recipe_refuses_bad_kwargs_on_dry_run(tmp_path):
    from vlsft.recipes.loading import load_recipe
    from vlsft.recipes.plan import describe_plan
    from vlsft.recipes.schema import RecipeError

    path = tmp_path / "r.yaml"
    path.write_text(
        "model: {name_or_path: tiny-qwen3-vl}\ndata: {train: [{path: demo-shapes, rows: 4}]}\n"
        "training: {activation_checkpointing: true, activation_checkpointing_kwargs: {every_n_layers: 0}}\n"
        "layout: {strategy: cpu}\n"
    )
    with pytest.raises(RecipeError, match="every_n_layers` must be an integer >= 1"):
        describe_plan(load_recipe(str(path)))


def _gradients(model, batch, **checkpointing) -> dict[str, torch.Tensor]:
    model.zero_grad()
    if checkpointing:
        model.activation_checkpointing_enable(**checkpointing)
    else:
        model.activation_checkpointing_disable()
    model.train()
    torch.manual_seed(0)
    model(**batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_offload_and_every_n_layers_give_plain_checkpointing_gradients(monkeypatch):
    model, _ = build_tiny_qwen3_vl(seed=0, num_hidden_layers=4)
    model.config.text_config.attention_dropout = 0.0
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(10, 200, (2, 24), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}

    # The offload wraps each checkpoint in transformers' `save_on_cpu`: count its entries to prove it is engaged.
    entered = []

    class CountingSaveOnCpu(modeling_utils.save_on_cpu):
        def __enter__(self):
            entered.append(1)
            return super().__enter__()

    monkeypatch.setattr(modeling_utils, "save_on_cpu", CountingSaveOnCpu)

    reference = _gradients(model, batch)
    plain = _gradients(model, batch, activation_checkpointing_kwargs={"use_reentrant": False})
    assert not entered
    offloaded = _gradients(model, batch, offload=True)
    assert len(entered) == 4  # one per decoder layer (the vision tower is not run on a text-only batch)
    entered.clear()
    every_second = _gradients(model, batch, every_n_layers=2, offload=True)
    assert len(entered) == 2  # layers 0 and 2 only
    assert reference.keys() == plain.keys() == offloaded.keys() == every_second.keys()
    for name, expected in reference.items():
        for got in (plain[name], offloaded[name], every_second[name]):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=name)
