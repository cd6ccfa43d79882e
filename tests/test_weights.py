"""Per-turn selection and loss weights: `weight` / `train` on assistant messages, `train_on_turns`, `train_on_eos`,
`reasoning_weight`. The supervised text of each turn is decoded with its weight and compared with hand-written text;
the loss is `sum(w * nll) / sum(w)` over the whole optimizer step, checked against full logits and across
micro-batch splits; with all weights 1 it is bit-identical to the unweighted path."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from datasets import Dataset

from tests.conftest import IMAGE, TOOLS, assistant, image, tool, user, zoom_call
from tests.test_loss import make_trainer
from tests.test_masks import supervised_runs
from vlsft.collation.rendering import RowError
from vlsft.collation.weighting import message_blocks
from vlsft.collator import VisionChatCollator
from vlsft.tokens import IGNORE_INDEX
from vlsft.templates import training_template

END = "<|im_end|>"
LONG = "Two shapes: a green circle on the left and a yellow triangle on the right, both small."


def weighted_rows():
    """4 conversations with per-turn weights (multi-turn, `train: false`, a weighted tool call with an image in the
    tool response, no keys), and the (text, weight) of each trained turn, written out by hand."""
    call = '<tool_call>\n{"name": "zoom", "arguments": {"region": "left"}}\n</tool_call>'
    rows = [
        (
            [user(IMAGE, "What is it?"), {**assistant("A red square."), "weight": 0.5}, user("Sure?"),
             {**assistant("Yes, a large red square in the middle of the picture."), "weight": 2.0}],
            [image()], None,
            [("A red square." + END, 0.5), ("Yes, a large red square in the middle of the picture." + END, 2.0)],
        ),
        (
            [user(IMAGE, "Colour?"), {**assistant("Blue, no wait."), "train": False}, user("Again?"), assistant("Green.")],
            [image((0, 255, 0), (80, 64))], None,
            [("Green." + END, 1.0)],
        ),
        (
            [user(IMAGE, "Zoom on the left."), {**assistant("", [zoom_call("left")]), "weight": 0.25},
             tool(IMAGE, "zoomed 4x"), {**assistant("A tiny star in the corner of the picture."), "weight": 1.5}],
            [image(), image((0, 0, 255), (64, 96))], TOOLS,
            [(call + END, 0.25), ("A tiny star in the corner of the picture." + END, 1.5)],
        ),
        ([user(IMAGE, "Count?"), assistant(LONG)], [image((255, 255, 0))], None, [(LONG + END, 1.0)]),
    ]
    return [({"messages": m, "images": i, "tools": t}, expected) for m, i, t, expected in rows]


def rows_only():
    return [row for row, _ in weighted_rows()]


@pytest.fixture(scope="module")
def collator(tiny):
    return VisionChatCollator(tiny[1], training_template("qwen3_vl"))


def weighted_runs(tokenizer, batch, index):
    """(decoded text, weight) of each run of supervised tokens of one weight."""
    ids, labels = batch["input_ids"][index].tolist(), batch["labels"][index].tolist()
    # Without `label_weights` every supervised token weighs 1 (and every other token 0).
    weights = batch["label_weights"][index].tolist() if "label_weights" in batch else [
        float(label != IGNORE_INDEX) for label in labels
    ]
    runs = []
    for position, (token, label, weight) in enumerate(zip(ids, labels, weights)):
        if label == IGNORE_INDEX:
            assert weight == 0.0
            continue
        assert label == token and weight > 0
        if runs and runs[-1][2] == position - 1 and runs[-1][1] == weight:
            runs[-1] = (runs[-1][0] + [token], weight, position)
        else:
            runs.append(([token], weight, position))
    return [(tokenizer.decode(tokens), weight) for tokens, weight, _ in runs]


def test_each_turn_supervises_its_text_with_its_weight(collator, processor):
    cases = weighted_rows()
    batch = collator([row for row, _ in cases])
    assert batch["label_weights"].dtype == torch.float32 and batch["label_weights"].shape == batch["labels"].shape
    for index, (row, expected) in enumerate(cases):
        assert weighted_runs(processor.tokenizer, batch, index) == expected
        alone = collator([row])  # the same alone as in a padded batch
        length = alone["input_ids"].shape[1]
        alone_weights = alone.get("label_weights", (alone["labels"] != IGNORE_INDEX).float())  # absent: all 1
        assert torch.equal(batch["label_weights"][index, :length], alone_weights[0])
        assert (batch["label_weights"][index, length:] == 0).all()


def test_weights_of_one_leave_the_batch_as_it_is_without_weights(collator):
    plain = rows_only()
    ones = copy.deepcopy(plain)
    for row in plain:
        for message in row["messages"]:
            message.pop("weight", None)
            message.pop("train", None)
    for row in ones:
        for position, message in enumerate(m for m in row["messages"] if m["role"] == "assistant"):
            message.pop("train", None)
            message.pop("weight", None)
            message.update({"weight": 1.0} if position % 2 else {"train": True})
    expected, got = collator(plain), collator(ones)
    assert "label_weights" not in got and set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def _loss_and_grads(trainer, model, batch, num_items):
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_weights_of_one_give_bit_identical_loss_and_gradients(tiny, tmp_path):
    """The step's divisor is now a summed weight; with weights 1 (so no `label_weights`), the loss and every gradient
    equal, bit for bit, the unweighted formula: summed NLL / supervised-token count of the step. Explicit all-ones
    `label_weights` give the same bits too."""
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path)
    rows = [{**row, "messages": [{k: v for k, v in m.items() if k not in ("weight", "train")} for m in row["messages"]]}
            for row in rows_only()]
    batch = trainer.data_collator(rows)
    assert "label_weights" not in batch
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    loss, grads = _loss_and_grads(trainer, trainer.model, batch, num_items)

    reference_model = copy.deepcopy(trainer.model)
    reference_model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    sums = reference_model(**inputs, supervised_labels=batch["labels"])
    expected = sums.nll_sum / (batch["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)  # the unweighted formula
    expected.backward()
    assert torch.equal(loss, expected.detach())
    for name, param in reference_model.named_parameters():
        if param.grad is not None:
            assert torch.equal(grads[name], param.grad), name

    ones = {**batch, "label_weights": (batch["labels"] != IGNORE_INDEX).float()}
    num_items_ones = trainer._get_num_items_in_batch([ones], torch.device("cpu"))
    assert float(num_items_ones) == float(num_items)
    loss_ones, grads_ones = _loss_and_grads(trainer, trainer.model, ones, num_items_ones)
    assert torch.equal(loss_ones, loss)
    for name in grads:
        assert torch.equal(grads_ones[name], grads[name]), name


def weighted_reference_loss(model, batch):
    """sum(w * ce) / sum(w) over the supervised next-token targets, from the full logits."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "label_weights")}
    logits = model(**inputs).logits.float()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    )
    weights = batch["label_weights"][:, 1:].reshape(-1)
    return (weights * ce).sum() / weights.sum()


@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_weighted_loss_and_gradients_equal_the_full_logits_reference(tiny, tmp_path, chunk_size):
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path, loss_chunk_size=chunk_size)
    batch = trainer.data_collator(rows_only())
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    assert float(num_items) == pytest.approx(float(batch["label_weights"][:, 1:].sum()))
    loss, grads = _loss_and_grads(trainer, trainer.model, batch, num_items)
    reference_model = copy.deepcopy(model)
    expected = weighted_reference_loss(reference_model, batch)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    for name, param in reference_model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Without `num_items_in_batch` (evaluation), the micro-batch is its own step: the same quotient.
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(trainer.model, dict(batch)), expected.detach(), rtol=1e-5, atol=1e-6)


def test_weighted_step_equals_the_hand_computed_step_for_1x4_and_4x1(tiny, tmp_path):
    """One SGD step (lr 1) over 4 weighted rows: one batch of 4 and 4 accumulated micro-batches of 1 both equal
    start - grad(sum(w * ce) / sum(w)) computed from full logits, within 1e-4 of the update."""
    model, processor = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference_model = copy.deepcopy(model)
    batch = make_trainer(model, processor, tmp_path / "c").data_collator(rows_only())
    weighted_reference_loss(reference_model, batch).backward()
    expected = {n: start[n] - (p.grad if p.grad is not None else 0) for n, p in reference_model.named_parameters()}

    results = {}
    for name, (batch_size, accumulation) in {"1x4": (4, 1), "4x1": (1, 4)}.items():
        trainer = make_trainer(model, processor, tmp_path / name, rows=rows_only(), per_device_train_batch_size=batch_size,
                               gradient_accumulation_steps=accumulation)
        trainer.train()
        results[name] = ({n: p.detach() for n, p in trainer.model.named_parameters()}, trainer.state.log_history[0])
    update = max((expected[n] - start[n]).abs().max() for n in start)
    assert update > 1e-3
    for weights, log in results.values():
        difference = max((weights[n] - expected[n]).abs().max() for n in start)
        assert difference <= 1e-4 * update, float(difference / update)
        # Logged: the weighted step loss, tokens with w > 0, and their summed weight.
        assert log["loss"] == pytest.approx(float(weighted_reference_loss(copy.deepcopy(model), batch)), rel=1e-4)
        assert log["num_supervised_tokens"] == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        assert log["supervised_weight"] == pytest.approx(float(batch["label_weights"].sum()))


def test_evaluation_uses_the_same_weighting(tiny, tmp_path):
    """Over eval batches of 3 + 1 rows, eval_loss is sum(w * ce) / sum(w) over all rows."""
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path, per_device_eval_batch_size=3)
    metrics = trainer.evaluate(Dataset.from_list(rows_only()))
    with torch.no_grad():
        expected = weighted_reference_loss(trainer.model, trainer.data_collator(rows_only()))
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)


LAST_TURN_SHAPES = ["multi_turn_later_images", "tool_call_with_text", "tool_call_without_text", "tool_response_with_image",
                    "one_image_one_turn"]


@pytest.mark.parametrize("name", LAST_TURN_SHAPES)
def test_train_on_last_turn_supervises_exactly_the_final_turn(tiny, processor, shapes, name):
    collator = VisionChatCollator(tiny[1], training_template("qwen3_vl"), train_on_turns="last")
    row, expected = shapes[name]
    batch = collator([row, shapes["multi_turn_later_images"][0]])
    assert "label_weights" not in batch  # every trained token still weighs 1
    assert supervised_runs(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == expected[-1:]
    assert supervised_runs(processor.tokenizer, batch["input_ids"][1], batch["labels"][1]) == ["A circle on the left." + END]


def test_train_on_last_turn_keeps_the_last_turns_weight_and_refuses_a_zero_one(tiny, processor, shapes):
    collator = VisionChatCollator(tiny[1], training_template("qwen3_vl"), train_on_turns="last")
    row, expected = shapes["tool_response_with_image"]
    row["messages"][-1]["weight"] = 3.0
    assert weighted_runs(processor.tokenizer, collator([row]), 0) == [(expected[-1], 3.0)]
    row["messages"][-1]["weight"] = 0.0
    with pytest.raises(RowError, match="batch row 0: no trained assistant turn"):
        collator([row])


SHAPE_NAMES = ["one_image_one_turn", "multi_turn_later_images", "tool_call_with_text", "tool_call_without_text",
               "tool_response_with_image", "empty_answer", "text_only"]


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_train_on_eos_false_leaves_exactly_the_end_of_turn_tokens_out(tiny, processor, shapes, name):
    row, expected = shapes[name]
    with_eos = VisionChatCollator(tiny[1], training_template("qwen3_vl"))([row])
    without = VisionChatCollator(tiny[1], training_template("qwen3_vl"), train_on_eos=False)([row])
    assert "label_weights" not in without
    dropped = (with_eos["labels"] != IGNORE_INDEX) & (without["labels"] == IGNORE_INDEX)
    assert not ((without["labels"] != IGNORE_INDEX) & (with_eos["labels"] == IGNORE_INDEX)).any()
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (with_eos["input_ids"][dropped] == end_of_turn).all() and int(dropped.sum()) == len(expected)
    text = processor.tokenizer.decode(without["input_ids"][0][without["labels"][0] != IGNORE_INDEX])
    assert text == "".join(turn.replace("<|im_end|>", "") for turn in expected)


def test_weight_zero_turns_change_only_the_context(tiny, tmp_path):
    """A weight-0 turn is not supervised: the loss equals the full-logits loss over the other turn alone. Its text
    is still context: changing it or dropping the turn changes the loss."""
    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path)

    def row(first_answer, weight):
        messages = [user(IMAGE, "What is it?"), {**assistant(first_answer), "weight": weight}, user("Sure?"),
                    assistant("Yes, a red square.")]
        return {"messages": messages, "images": [image()]}

    context_only = trainer.data_collator([row("A red square.", 0.0)])
    assert supervised_runs(processor.tokenizer, context_only["input_ids"][0], context_only["labels"][0]) == [
        "Yes, a red square." + END
    ]
    trained = trainer.data_collator([row("A red square.", 1.0)])
    assert torch.equal(trained["input_ids"], context_only["input_ids"])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(context_only))
        # The reference: every turn supervised, then the first turn's labels removed by hand.
        labels = trained["labels"].clone()
        first_turn = (labels[0] != IGNORE_INDEX).nonzero().flatten()
        first_turn = first_turn[: len(processor.tokenizer("A red square." + END)["input_ids"])]
        labels[0, first_turn] = IGNORE_INDEX
        inputs = {k: v for k, v in trained.items() if k != "labels"}
        logits = trainer.model(**inputs).logits.float()
        expected = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        other_context = trainer.compute_loss(trainer.model, dict(trainer.data_collator([row("A blue circle, tiny.", 0.0)])))
        assert abs(float(other_context) - float(loss)) > 1e-4
        dropped = row("", 0.0)
        del dropped["messages"][1]  # the weight-0 turn dropped altogether
        dropped_batch = trainer.data_collator([dropped])
        assert supervised_runs(processor.tokenizer, dropped_batch["input_ids"][0], dropped_batch["labels"][0]) == [
            "Yes, a red square." + END
        ]
        assert abs(float(trainer.compute_loss(trainer.model, dict(dropped_batch))) - float(loss)) > 1e-4


def test_reasoning_weight_scales_the_think_block_of_trained_turns(tiny, processor):
    """`<think>...</think>` written in the assistant content (the stock Qwen3-VL template renders it verbatim): the
    markers and everything between weigh turn weight x reasoning_weight, the answer the turn weight."""
    thought = "<think>\nThe picture is red.\n</think>"
    row = {"messages": [user(IMAGE, "Colour?"), {**assistant(thought + "\n\nRed."), "weight": 2.0}, user("Sure?"),
                        assistant("Yes.")], "images": [image()]}
    plain = VisionChatCollator(tiny[1], training_template("qwen3_vl"))([row])
    for reasoning_weight, expected in [
        (0.25, [(thought, 0.5), ("\n\nRed." + END, 2.0), ("Yes." + END, 1.0)]),
        (0.0, [("\n\nRed." + END, 2.0), ("Yes." + END, 1.0)]),
    ]:
        collator = VisionChatCollator(tiny[1], training_template("qwen3_vl"), reasoning_weight=reasoning_weight)
        batch = collator([row])
        assert torch.equal(batch["input_ids"], plain["input_ids"])  # the tokens themselves are unchanged
        assert weighted_runs(processor.tokenizer, batch, 0) == expected


def test_reasoning_weight_needs_a_family_with_reasoning_markers(tmp_path):
    from vlsft.testing.tiny_families import build_tiny

    _, processor = build_tiny("qwen2_5_vl")
    with pytest.raises(ValueError, match="Qwen2.5-VL has no reasoning format.*reasoning_weight"):
        VisionChatCollator(processor, training_template("qwen2_5_vl"), reasoning_weight=0.5)


BAD_ROWS = [
    ({**assistant("Red."), "weight": -1.0}, "message 1 has weight -1.0; a weight is 0 (context only) or a number from 1e-06 to 1e+06"),
    ({**assistant("Red."), "weight": "heavy"}, "message 1 has weight 'heavy'"),
    ({**assistant("Red."), "weight": float("nan")}, "message 1 has weight nan"),
    ({**assistant("Red."), "train": "no"}, "message 1 has train 'no'; train is true or false"),
    ({**assistant("Red."), "train": False, "weight": 2.0}, "train false and weight 2.0"),
    ({**assistant("Red."), "train": False}, "no trained assistant turn"),
    ({**assistant("Red."), "weight": 0}, "no trained assistant turn"),
]


def test_bad_weights_are_bad_rows_named_before_training(tiny, processor, tmp_path):
    from vlsft.data.validation import InvalidRowsError, validate_datasets, validate_rows

    good = {"messages": [user(IMAGE, "Colour?"), assistant("Red.")], "images": [image()]}
    rows = [good] + [{"messages": [user(IMAGE, "Colour?"), answer], "images": [image()]} for answer, _ in BAD_ROWS]
    rows.append({"messages": [{**user(IMAGE, "Colour?"), "weight": 1.0}, assistant("Red.")], "images": [image()]})
    rows.append({"messages": [user(IMAGE, "Zoom."), assistant("", [zoom_call()]), {**tool("ok"), "train": True},
                              assistant("Red.")], "images": [image()], "tools": TOOLS})
    collator = VisionChatCollator(processor, training_template("qwen3_vl"))
    result = validate_rows(rows, collator)
    reasons = {problem.index: problem.reason for problem in result.problems}
    assert sorted(reasons) == list(range(1, len(rows)))
    for index, (_, fragment) in enumerate(BAD_ROWS, start=1):
        assert fragment in reasons[index]
        with pytest.raises(RowError, match="batch row 0: "):  # the collator refuses them too (validation off)
            collator([rows[index]])
    assert reasons[len(BAD_ROWS) + 1] == "message 0 is a 'user' message with 'weight'; only assistant turns are trained"
    assert reasons[len(BAD_ROWS) + 2] == "message 2 is a 'tool' message with 'train'; only assistant turns are trained"

    # `train_on_turns="last"` with a weight-0 final turn: named by row, before training.
    last = VisionChatCollator(processor, training_template("qwen3_vl"), train_on_turns="last")
    row = {"messages": [user("a"), assistant("b"), user("c"), {**assistant("d"), "train": False}], "images": []}
    args = make_trainer(tiny[0], processor, tmp_path).args
    with pytest.raises(InvalidRowsError, match="row 1: no trained assistant turn"):
        validate_datasets(Dataset.from_list([good, row]), None, last, args)


def test_inspect_shows_weights_and_context_only_turns(processor, tmp_path):
    from vlsft.inspection import inspect

    out = io.StringIO()
    views = inspect(rows_only(), processor, rows="0:4", file=out, color=False, html=tmp_path / "rows.html")
    text = out.getvalue()
    assert "[[A red square.<|im_end|>]]{w=0.5}" in text
    assert "[[Yes, a large red square in the middle of the picture.<|im_end|>]]{w=2}" in text
    assert "((Blue, no wait.<|im_end|>))" in text and "[[Green.<|im_end|>]]{w=1}" in text
    assert "summed weight" in text
    assert not views[3].weighted and "[[" + LONG + END + "]]{" not in text  # unweighted rows print as before
    page = (tmp_path / "rows.html").read_text()
    assert '<span class="ctx" title="context only: weight 0">Blue, no wait.&lt;|im_end|&gt;</span>' in page
    assert '<span class="sup" data-weight="0.25">' in page and '<span class="w">w=0.25</span>' in page
    coloured = io.StringIO()
    inspect(rows_only(), processor, rows="1", file=coloured, color=True)
    assert "\x1b[2;3;9mBlue, no wait.<|im_end|>\x1b[0m" in coloured.getvalue()


def test_recipe_checks_the_values(tmp_path, capsys):
    from tests.test_recipe import minimal, write_recipe
    from vlsft.recipes.loading import recipe_from_dict
    from vlsft.recipes.schema import RecipeError
    from vlsft.cli.train import main

    with pytest.raises(RecipeError, match="`training.train_on_turns` must be one of 'all', 'last'"):
        recipe_from_dict(minimal(training={"train_on_turns": "first"}))
    recipe = recipe_from_dict(minimal(training={"train_on_turns": "last", "train_on_eos": False, "reasoning_weight": 0}))
    assert recipe.training["reasoning_weight"] == 0.0
    path = write_recipe(tmp_path / "r.yaml", minimal(training={"reasoning_weight": -1}))
    assert main(["--config", str(path), "--dry-run"]) == 2
    assert "`reasoning_weight` must be a finite number >= 0, got -1.0" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "qwen2_5_vl", "gemma3", "idefics3", "smolvlm", "llava_next"])
def test_every_family_weighs_its_turns_and_leaves_out_exactly_its_end_of_turn_token(family):
    """On each family's own chat format (text expanded images included): per-turn weights, `train_on_turns="last"`
    and `train_on_eos=False` select the hand-written text of each turn."""
    from tests.test_families import collator, shape, supervised_texts, tiny
    from vlsft.families import FAMILIES

    tokenizer = tiny(family)[1].tokenizer
    row, expected = shape(family, "multi_turn_later_images")  # three assistant turns
    row["messages"][1]["weight"] = 0.5
    row["messages"][3]["train"] = False
    batch = collator(family)([row])
    assert supervised_texts(tokenizer, batch["input_ids"][0], batch["labels"][0]) == [expected[0], expected[2]]
    supervised = (batch["labels"][0] != IGNORE_INDEX).nonzero().flatten()
    first = supervised[: int((supervised.diff() > 1).nonzero()[0]) + 1]  # the first run of supervised tokens
    assert set(batch["label_weights"][0, first].tolist()) == {0.5}
    assert set(batch["label_weights"][0, supervised[len(first) :]].tolist()) == {1.0}

    last = collator(family, train_on_turns="last")([row])
    assert supervised_texts(tokenizer, last["input_ids"][0], last["labels"][0]) == expected[2:]

    del row["messages"][1]["weight"], row["messages"][3]["train"]
    with_eos, without = collator(family)([row]), collator(family, train_on_eos=False)([row])
    dropped = (with_eos["labels"] != IGNORE_INDEX) & (without["labels"] == IGNORE_INDEX)
    end_of_turn = tokenizer.convert_tokens_to_ids(FAMILIES[family].end_of_turn)
    assert int(dropped.sum()) == 3 and (with_eos["input_ids"][dropped] == end_of_turn).all()
    texts = supervised_texts(tokenizer, without["input_ids"][0], without["labels"][0])
    assert "".join(texts) == "".join(turn.replace(FAMILIES[family].end_of_turn, "") for turn in expected)


def test_generation_blocks_group_by_assistant_message_or_the_row_fails_clearly(processor):
    """One block per assistant message, empty where the turn is context; an empty block right at the start of the
    next block continues the previous message (Gemma 4's text after an inlined tool response). A template that
    renders blocks any other way cannot be weighed per message: the row fails with the reason."""
    assert message_blocks([(5, 5), (10, 20), (30, 40), (45, 45), (45, 50), (60, 60)]) == [
        [(5, 5)], [(10, 20)], [(30, 40), (45, 50)], [(60, 60)]]
    assert message_blocks([(5, 5), (5, 9)]) == [[(5, 5)], [(5, 9)]]  # nothing before it to continue
    text = "{{ m.content if m.content is string else m.content[0].text }}"
    two_blocks_per_turn = (
        "{%- for m in messages %}{%- if m.role == 'assistant' %}<|im_start|>assistant\n"
        "{% generation %}" + text + "{% endgeneration %} ({% generation %}again{% endgeneration %})<|im_end|>\n"
        "{%- else %}<|im_start|>{{ m.role }}\n" + text + "<|im_end|>\n{%- endif %}{%- endfor %}"
    )
    row = {"messages": [user("a"), assistant("b"), user("c"), {**assistant("d"), "weight": 2.0}], "images": []}
    collator = VisionChatCollator(processor, two_blocks_per_turn)
    with pytest.raises(RowError, match=r"batch row 0: .*generation blocks for 4 assistant turn\(s\) but the row has "
                                       r"2 assistant message\(s\)"):
        collator([row])
    assert "label_weights" not in collator([{**row, "messages": row["messages"][:2]}])  # all 1: nothing to map
