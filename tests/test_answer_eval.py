"""Held-out answer accuracy: the prompt is the conversation before the final answer with the generation prompt, the
score is exact match after normalisation, batches are left-padded correctly, and the callback logs through
`Trainer.log` (trainer state and `report_to` integrations, once per evaluation)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.testing import demo_data
from vlsft.answer_eval import AnswerAccuracyCallback, answer_accuracy
from vlsft.final_answer import normalize_answer, split_final_answer
from vlsft.loss import attach_supervised_head
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl


class ScriptedModel(torch.nn.Module):
    """Stands in for a VLM whose answers we choose: it gives `answers` in order, records each prompt (decoded), and
    checks what a real model relies on: left padding, one image per placeholder, the generation prompt at the end."""

    def __init__(self, processor, answers: list[str]):
        super().__init__()
        self.processor = processor
        self.answers = list(answers)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.prompts: list[str] = []

    def generate(self, input_ids, attention_mask, pixel_values=None, image_grid_thw=None, max_new_tokens=32, **kwargs):
        tokenizer = self.processor.tokenizer
        assert not self.training and kwargs["do_sample"] is False
        assert bool(attention_mask[:, -1].all()), "prompts must be left-padded"
        vision_start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
        assert int((input_ids == vision_start).sum()) == (0 if image_grid_thw is None else len(image_grid_thw))
        outputs = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = tokenizer.decode(ids[mask.bool()]).replace("<|image_pad|>", "")
            assert prompt.endswith("<|im_start|>assistant\n")
            self.prompts.append(prompt)
            answer = self.answers.pop(0) + "<|im_end|>"
            new = tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0][:max_new_tokens]
            outputs.append(torch.cat([ids, new]))
        width = max(len(o) for o in outputs)
        return torch.stack([torch.nn.functional.pad(o, (0, width - len(o)), value=tokenizer.pad_token_id) for o in outputs])


@pytest.fixture(scope="module")
def tiny_demo():
    model, processor = build_tiny_qwen3_vl(seed=0, extra_text="demo-shapes")
    attach_supervised_head(model)
    return model, processor


@pytest.fixture(scope="module")
def rows():
    return [dict(row) for row in demo_data.load_demo_split("eval", rows=24, seed=0)]


def prompt_text(processor, row):
    messages, _, _ = split_final_answer(row)
    text = processor.apply_chat_template(messages, tools=row.get("tools"), add_generation_prompt=True)
    return text.replace("<|image_pad|>", "")


def test_normalize_answer():
    assert normalize_answer("  Top   Left. ") == "top left"
    assert normalize_answer('"Red!"') == "red"
    assert normalize_answer("red circle") != normalize_answer("red")


def test_final_answer_split_of_a_tool_row(rows):
    row = next(r for r in rows if r["kind"] == "tool")
    prompt, images, reference = split_final_answer(row)
    assert [m["role"] for m in prompt] == ["user", "assistant", "tool"]
    assert len(images) == 2 and reference == row["messages"][-1]["content"][0]["text"]
    only_a_call = {"messages": row["messages"][:2], "images": row["images"][:1]}
    assert split_final_answer(only_a_call) is None


def test_scores_exact_matches_after_normalisation(tiny_demo, rows):
    processor = tiny_demo[1]
    answers, expected = [], 0
    for i, row in enumerate(rows):
        reference = row["messages"][-1]["content"][0]["text"]
        # Right (with case and punctuation noise), or wrong, in turn.
        answers.append(f" {reference.upper()}." if i % 3 else "purple triangle")
        expected += bool(i % 3)
    model = ScriptedModel(processor, answers)
    result = answer_accuracy(model, processor, rows, batch_size=5)
    assert model.prompts == [prompt_text(processor, row) for row in rows]
    assert result["total"] == len(rows) and [p["reference"] for p in result["predictions"]] == [
        row["messages"][-1]["content"][0]["text"] for row in rows
    ]
    assert result["correct"] == expected and result["accuracy"] == pytest.approx(expected / len(rows))
    assert set(result["by_kind"]) == {row["kind"] for row in rows}
    assert model.training  # generated in eval mode (checked by the model), then restored


def test_real_model_generates_the_same_answers_batched_and_alone(tiny_demo, rows):
    model, processor = tiny_demo
    model.train()
    alone = answer_accuracy(model, processor, rows[:12], max_new_tokens=6, batch_size=1)
    batched = answer_accuracy(model, processor, rows[:12], max_new_tokens=6, batch_size=12)
    assert [p["prediction"] for p in alone["predictions"]] == [p["prediction"] for p in batched["predictions"]]
    assert model.training and processor.tokenizer.padding_side == "right"


class RecordingIntegration(TrainerCallback):
    """A `report_to` integration in miniature: like TensorBoard's, W&B's and trackio's callbacks, it records what
    `Trainer.log` hands to `on_log`, on the main process only."""

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            self.logged.append((state.global_step, dict(logs)))


def accuracy_entries(entries):
    return [(step, logs["eval_answer_accuracy"]) for step, logs in entries if "eval_answer_accuracy" in logs]


def demo_trainer(tiny_demo, rows, tmp_path, callbacks, **config):
    model, processor = tiny_demo
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", max_steps=1, per_device_train_batch_size=2, logging_steps=1,
        save_strategy="no", learning_rate=1e-3, seed=0,
    )
    args = VLSFTConfig(**{**defaults, **config})
    dataset = Dataset.from_list(rows[:8])
    return VLSFTTrainer(
        copy.deepcopy(model), args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=processor,
        callbacks=callbacks,
    )


def test_callback_logs_through_the_trainer(tiny_demo, rows, tmp_path):
    processor = tiny_demo[1]
    answers = [row["messages"][-1]["content"][0]["text"] for row in rows[:6]] + ["wrong"] * 2
    model = ScriptedModel(processor, answers * 2)
    callback, integration = AnswerAccuracyCallback(rows[:8], processor, every_evaluation=True), RecordingIntegration()
    trainer = demo_trainer(tiny_demo, rows, tmp_path, [callback, integration])
    assert callback.trainer is trainer
    state, args, control = trainer.state, trainer.args, trainer.control
    state.global_step = 10
    metrics = {"eval_loss": 1.0}
    callback.on_evaluate(args, state, control, model=model, metrics=metrics)
    assert metrics["eval_answer_accuracy"] == pytest.approx(6 / 8)  # what `Trainer.evaluate` returns
    [entry] = state.log_history
    assert entry["eval_answer_accuracy"] == pytest.approx(6 / 8) and entry["step"] == 10
    # Only the accuracies (overall and per row kind) and the Trainer's epoch: no training statistic folded in.
    assert {key for key in entry if not key.startswith("eval_answer_accuracy")} == {"epoch", "step"}
    assert integration.logged == [(10, {key: value for key, value in entry.items() if key != "step"})]
    callback.on_train_end(args, state, control, model=model)  # same step: not measured twice
    assert len(state.log_history) == 1 and len(integration.logged) == 1
    state.global_step = 12
    callback.on_train_end(args, state, control, model=model)
    assert [entry["step"] for entry in state.log_history] == [10, 12] and len(integration.logged) == 2
    assert trainer.model.training  # put back in train mode after logging at the end of training
    # The end of training leaves the result with chance by kind, and the curves against steps, in output_dir.
    saved = json.loads((tmp_path / "answer_accuracy.json").read_text())
    assert saved["step"] == 12 and saved["accuracy"] == pytest.approx(6 / 8)
    assert set(saved["chance"]) == set(saved["by_kind"]) and all(0 < value <= 1 for value in saved["chance"].values())
    curves = (tmp_path / "eval_curves.png").read_bytes()
    assert curves.startswith(b"\x89PNG") and len(curves) > 10_000


def test_a_callback_without_a_trainer_says_how_to_give_it_one(tiny_demo, rows):
    processor = tiny_demo[1]
    model = ScriptedModel(processor, ["x"] * 2)
    callback = AnswerAccuracyCallback(rows[:2], processor, every_evaluation=True)
    with pytest.raises(RuntimeError, match="callback.trainer = trainer"):
        callback.on_evaluate(TrainingArguments(output_dir="unused", report_to="none"), TrainerState(), TrainerControl(), model=model, metrics={})


def test_accuracy_reaches_integrations_and_trainer_state_once_per_evaluation(tiny_demo, rows, tmp_path):
    processor = tiny_demo[1]
    callback, integration = AnswerAccuracyCallback(rows[:4], processor, max_new_tokens=4), RecordingIntegration()
    trainer = demo_trainer(tiny_demo, rows, tmp_path, [integration], max_steps=5, eval_strategy="steps", eval_steps=2)
    trainer.add_callback(callback)  # added later: handed the trainer all the same
    callback.every_evaluation = True
    trainer.train()
    trainer.save_state()
    saved = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    # Evaluations at steps 2 and 4, and at the last step (the Trainer evaluates there too): one accuracy entry each,
    # separate from the evaluation's own entry (eval_loss), and none more at the end of training (already measured).
    evaluation_steps = [entry["step"] for entry in saved if "eval_loss" in entry]
    assert evaluation_steps == [2, 4, 5]
    recorded = accuracy_entries(integration.logged)
    assert [step for step, _ in recorded] == evaluation_steps
    assert accuracy_entries((entry["step"], entry) for entry in saved) == recorded


# -- prompts and answers as in training (issue 23, items 10 and 14) -------------------------------------------------


class TrainedTextModel(torch.nn.Module):
    """Stands in for a model that generates exactly what it was trained on: for each prompt, in order, the supervised
    ids of its row's final turn (`outputs`); it records each prompt (unpadded ids) and what it was given besides."""

    def __init__(self, pad_token_id: int, outputs: list[list[int]]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.pad_token_id, self.outputs = pad_token_id, list(outputs)
        self.prompts: list[list[int]] = []
        self.inputs: list[dict] = []

    def generate(self, input_ids, attention_mask, max_new_tokens=32, **kwargs):
        assert bool(attention_mask[:, -1].all()), "prompts must be left-padded"
        self.inputs.append(kwargs)
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            self.prompts.append(ids[mask.bool()].tolist())
            rows.append(torch.cat([ids, torch.tensor(self.outputs.pop(0)[:max_new_tokens], dtype=ids.dtype)]))
        width = max(len(row) for row in rows)
        return torch.stack([torch.nn.functional.pad(row, (0, width - len(row)), value=self.pad_token_id) for row in rows])


def as_trained(collator, row):
    """(the row's ids before its first supervised token, its supervised ids): the training prompt of its final turn
    and what training teaches the model to generate there (rows with one trained turn)."""
    batch = collator([row])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    supervised = (labels != -100).nonzero().flatten()
    return ids[: int(supervised[0])].tolist(), ids[supervised].tolist(), batch


def thinking_rows():
    from tests.conftest import IMAGE, image, user

    def answer(text, **fields):
        return {"role": "assistant", "content": [{"type": "text", "text": text}], **fields}

    question = user(IMAGE, "What colour is it?")
    return [
        {"messages": [question, answer("Red.", reasoning_content="The picture is red all over.")], "images": [image()]},
        {"messages": [question, answer("<think>\nAll red.\n</think>\n\nRed.")], "images": [image()]},  # inline
        {"messages": [question, answer("Red.")], "images": [image()]},  # an empty reasoning block, then the answer
        {"messages": [question, answer("Red.")], "images": [image()], "chat_template_kwargs": {"enable_thinking": False}},
    ]


@pytest.mark.parametrize("recipe_kwargs", [None, {"enable_thinking": False}])
def test_a_thinking_model_that_generates_its_training_text_scores_every_answer(recipe_kwargs):
    """Qwen3.5: the prompt is the training text before the final turn (with the recipe's and the row's
    `enable_thinking`), and the final answer is what follows the reasoning block."""
    from tests.test_families import tiny
    from vlsft.collator import VisionChatCollator
    from vlsft.templates import training_template

    processor = tiny("qwen3_5_think")[1]
    collator = VisionChatCollator(processor, training_template("qwen3_5_think"), template_kwargs=recipe_kwargs)
    rows = thinking_rows()
    if recipe_kwargs:
        rows = [rows[2], rows[3]]  # thinking off: no reasoning to train
    trained = [as_trained(collator, row) for row in rows]
    model = TrainedTextModel(processor.tokenizer.pad_token_id, [generated for _, generated, _ in trained])
    result = answer_accuracy(model, processor, rows, batch_size=3, collator=collator)
    assert model.prompts == [prompt for prompt, _, _ in trained]
    assert [p["prediction"].strip() for p in result["predictions"]] == ["Red."] * len(rows)
    assert [p["reference"].strip() for p in result["predictions"]] == ["Red."] * len(rows)
    assert result["accuracy"] == 1.0
    if not recipe_kwargs:
        assert "The picture is red all over.\n</think>" in result["predictions"][0]["generated"]
        off = processor.tokenizer.decode(model.prompts[3])
        assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # the row's enable_thinking: false


def test_reasoning_that_never_closes_has_no_final_answer():
    from vlsft.final_answer import final_answer_ids

    opening, closing, stop = 5, 6, {9}
    assert final_answer_ids([1, opening], [7, 8], stop, (opening, closing)) == []  # cut off mid-thought
    assert final_answer_ids([1, opening], [7, closing, 3, 9, 4], stop, (opening, closing)) == [3]
    assert final_answer_ids([1, opening, closing], [3, 9], stop, (opening, closing)) == [3]  # thinking off
    assert final_answer_ids([opening, 2, closing, 1], [opening, 7, closing, 3], stop, (opening, closing)) == [3]
    assert final_answer_ids([1], [3, 9, 4], stop, None) == [3]


def test_the_callback_prompts_with_the_trainers_template_variables(tiny_demo, rows, tmp_path):
    """The trainer's `chat_template_kwargs` reach the prompts: Qwen3.5 with `enable_thinking: false`."""
    from vlsft.testing.tiny_qwen import build_tiny_qwen3_5

    model, processor = build_tiny_qwen3_5(seed=0)
    train = thinking_rows()[2:3]
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", chat_template_kwargs={"enable_thinking": False})
    callback = AnswerAccuracyCallback(train, processor)
    trainer = VLSFTTrainer(model, args=args, train_dataset=Dataset.from_list(train), processing_class=processor,
                           callbacks=[callback])
    prompt, generated, _ = as_trained(trainer.rendering_collator, train[0])
    scripted = TrainedTextModel(processor.tokenizer.pad_token_id, [generated])
    assert callback.measure(scripted, trainer.state) == {"eval_answer_accuracy": 1.0}
    assert scripted.prompts == [prompt]
    assert processor.tokenizer.decode(prompt).endswith("<think>\n\n</think>\n\n")


def test_video_rows_are_prompted_with_their_videos_as_in_training(tmp_path):
    """The tiny Qwen3-VL on the video demo's clips (one row with an image too): the prompt ids and the video and
    image tensors are the training collator's, and the real model generates for every row."""
    from PIL import Image

    from vlsft.collator import VisionChatCollator
    from vlsft.templates import resolve_training_template
    from vlsft.testing import demo_video

    demo_video.write_split(tmp_path, "eval", rows=3)
    video_rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    video_rows[0]["messages"][0]["content"].insert(0, {"type": "image"})
    video_rows[0]["images"] = [Image.new("RGB", (96, 64), (255, 0, 0))]
    model, processor = build_tiny_qwen3_vl(seed=0)
    collator = VisionChatCollator(processor, resolve_training_template(processor.chat_template),
                                  video_root=str(tmp_path), video_max_pixels=2000)
    for row in video_rows:
        prompt, generated, batch = as_trained(collator, row)
        recorder = TrainedTextModel(processor.tokenizer.pad_token_id, [generated])
        assert answer_accuracy(recorder, processor, [row], collator=collator)["accuracy"] == 1.0
        assert recorder.prompts == [prompt]
        given = recorder.inputs[0]
        for key in ("pixel_values_videos", "video_grid_thw") + (("pixel_values", "image_grid_thw") if "images" in row else ()):
            assert torch.equal(given[key], batch[key]), key
    result = answer_accuracy(model, processor, video_rows, max_new_tokens=3, batch_size=2, collator=collator)
    assert result["total"] == 3
