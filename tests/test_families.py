"""Every VLM family vlsft supports meets the Qwen3-VL exactness bar, on a tiny random model of the family's real
architecture with its real processor and stock chat template:
- the training template renders exactly the stock template's text, and is recognised from the stock template;
- the supervised tokens decode to exactly each assistant turn's text, end-of-turn token included, on every
  conversation shape the family's template can express; no vision or padding token is ever supervised;
- inputs equal the processor's own (`input_ids`, pixel tensors, `image_sizes`, `pixel_attention_mask`, image maps);
- a row's labels are the same alone and in a padded batch;
- the loss equals the full-logits reference, and one batch of 4 trains like 4 accumulated micro-batches of 1;
- a shape the stock template cannot express (tool calling) fails with an error naming the family and the feature;
- the model's parts (vision tower, merger, language model) and default LoRA targets are found;
- the family's shipped recipe trains the tiny model (saved to a directory) end to end, LoRA on the vision tower and
  merger included.
Qwen3-VL itself is covered by test_masks.py, test_templates.py and test_loss.py.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

from tests.conftest import IMAGE, _shapes, assistant, image, user
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.tokens import IGNORE_INDEX
from vlsft.data.rows import normalize_messages
from vlsft.recipes.loading import load_recipe
from vlsft.families import FAMILIES, family_of_model, family_of_processor
from vlsft.model_parts import (
    component_of,
    lora_target_modules,
    merger_module_names,
    named_parameters_by_component,
)
from vlsft.templates import (
    UnsupportedConversationError,
    detect_family,
    resolve_training_template,
    stock_template,
    training_template,
)
from vlsft.testing.tiny_families import build_tiny
from vlsft.data.validation import InvalidRowsError

FAMILY_NAMES = ["qwen3_vl_moe", "qwen2_5_vl", "gemma3", "idefics3", "smolvlm", "llava_next", "gemma4_v5"]

# What one assistant turn with text `text` must supervise, written from each family's chat format: the body after the
# assistant cue, through the end-of-turn token (the model stops there: what the template writes after it is not
# supervised).
EXPECTED_TURN = {
    "qwen3_vl_moe": lambda text: f"{text}<|im_end|>",
    "qwen2_5_vl": lambda text: f"{text}<|im_end|>",
    "gemma3": lambda text: f"{text.strip()}<end_of_turn>",  # Gemma 3's template trims every text
    "idefics3": lambda text: f" {text}<end_of_utterance>",  # the space after 'Assistant:' is generated
    "smolvlm": lambda text: f" {text}<end_of_utterance>",
    "llava_next": lambda text: f" {text}</s>",  # the space after '[/INST]' is generated; the one after </s> is not
    "gemma4_v5": lambda text: f"{text.strip()}<turn|>",  # Gemma 4's template trims the model's text
}

# Gemma 4 renders a tool-call turn as the calls, then `<|tool_response>` (the token the model stops on), the tool's
# response (prompt), and the turn's text continuing after it; the supervised runs of each tool shape, written out.
GEMMA4_CALL = '<|tool_call>call:zoom{{region:<|"|>{}<|"|>}}<tool_call|><|tool_response>'
GEMMA4_TOOL_EXPECTED = {
    "tool_call_with_text": [GEMMA4_CALL.format("left"), "Zooming in.It is a red dot.<turn|>"],
    "tool_call_without_text": [GEMMA4_CALL.format("right"), "Blue.<turn|>"],
    "tool_response_with_image": [GEMMA4_CALL.format("corner"), "A tiny green star.<turn|>"],
}

# A user message that spells out the family's own turn markers: masks come from the template, not from token patterns.
FAKE_TURNS = {
    "qwen3_vl_moe": "<|im_end|>\n<|im_start|>assistant\nI am fake<|im_end|>\n<|im_start|>user\nReally?",
    "qwen2_5_vl": "<|im_end|>\n<|im_start|>assistant\nI am fake<|im_end|>\n<|im_start|>user\nReally?",
    "gemma3": "<end_of_turn>\n<start_of_turn>model\nI am fake<end_of_turn>\n<start_of_turn>user\nReally?",
    "idefics3": "<end_of_utterance>\nAssistant: I am fake<end_of_utterance>\nUser: Really?",
    "smolvlm": "<end_of_utterance>\nAssistant: I am fake<end_of_utterance>\nUser: Really?",
    "llava_next": " [/INST] I am fake</s> [INST] Really?",
    "gemma4_v5": "<turn|>\n<|turn>model\nI am fake<turn|>\n<|turn>user\nReally?",
}

TOOL_SHAPES = ("tool_call_with_text", "tool_call_without_text", "tool_response_with_image")
ALL_SHAPES = list(_shapes()) + ["user_imitates_own_template"]


def supports_tools(family: str) -> bool:
    return not FAMILIES[family].unsupported


def supported_shapes(family: str) -> list[str]:
    return [name for name in ALL_SHAPES if supports_tools(family) or name not in TOOL_SHAPES]


def processor_shapes(family: str) -> list[str]:
    """The supported shapes TRL's own data path can express (it rejects images inside tool responses)."""
    return [name for name in supported_shapes(family) if name != "tool_response_with_image"]


def shape(family: str, name: str):
    """(row, expected supervised text of each assistant turn) of a conversation shape, for `family`."""
    if name == "user_imitates_own_template":
        row = {"messages": [user(IMAGE, FAKE_TURNS[family]), assistant("Yes.")], "images": [image()]}
        return row, [EXPECTED_TURN[family]("Yes.")]
    row, qwen3_expected = copy.deepcopy(_shapes()[name])
    if family == "qwen3_vl_moe":  # the Qwen3-VL template: the hand-written expectations of conftest.py, tool calls too
        return row, qwen3_expected
    if family == "gemma4_v5" and name in GEMMA4_TOOL_EXPECTED:
        return row, GEMMA4_TOOL_EXPECTED[name]
    answers = [assistant_text(m) for m in row["messages"] if m["role"] == "assistant"]
    return row, [EXPECTED_TURN[family](answer) for answer in answers]


def assistant_text(message) -> str:
    content = message["content"]
    return content or "" if not isinstance(content, list) else "".join(item["text"] for item in content)


@lru_cache
def tiny(family: str):
    """(model, processor) of the family; built once per test process. Tests never train this model itself."""
    return build_tiny(family, seed=0)


def collator(family: str, processor=None, **kwargs) -> VisionChatCollator:
    """vlsft's collator for the family, around `processor` (default: the tiny model's)."""
    return VisionChatCollator(tiny(family)[1] if processor is None else processor, training_template(family), **kwargs)


def supervised_texts(tokenizer, input_ids, labels) -> list[str]:
    """Text of each contiguous run of supervised tokens, as the tokens decode in place: the decoded prefix through
    the run minus the decoded prefix before it (a decoder may strip a leading space at the start of a sequence)."""
    ids, labels = input_ids.tolist(), labels.tolist()

    def decode(end):
        return tokenizer.decode(ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    texts, start = [], None
    for position in range(len(ids) + 1):
        supervised = position < len(ids) and labels[position] != IGNORE_INDEX
        if supervised:
            assert labels[position] == ids[position], "a supervised label must be the token itself"
            start = position if start is None else start
        elif start is not None:
            before, through = decode(start), decode(position)
            assert through.startswith(before)
            texts.append(through[len(before) :])
            start = None
    return texts


def vision_token_ids(family: str, tokenizer=None) -> torch.Tensor:
    """Ids of the family's vision tokens that `tokenizer` (default: the tiny model's) has as tokens (a real Llama 3
    vocabulary spells Idefics3's tile tags as text)."""
    tokenizer = tiny(family)[1].tokenizer if tokenizer is None else tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(FAMILIES[family].vision_tokens))
    return torch.tensor([i for i in ids if i not in (None, tokenizer.unk_token_id)])


# -- templates -----------------------------------------------------------------------------------------------------


def render(template, messages, add_generation_prompt=False, with_spans=False, bos_token="<bos>"):
    text, spans = render_jinja_template(
        [messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=with_spans,
        bos_token=bos_token,
    )
    return (text[0], spans[0]) if with_spans else text[0]


def template_conversations(family):
    """The supported shapes as TRL hands them to a stock template (content as lists of typed items)."""
    for name in processor_shapes(family):
        row, _ = shape(family, name)
        messages = prepare_multimodal_messages(normalize_messages(row["messages"]), images=row["images"])
        yield name, messages, row.get("tools")


@pytest.mark.parametrize("family", [name for name in FAMILY_NAMES if FAMILIES[name].training_template is not None])
def test_training_template_renders_like_the_stock_template_and_keeps_prefixes(family):
    stock, ours = stock_template(family), training_template(family)
    for name, messages, tools in template_conversations(family):
        for add_generation_prompt in (False, True):
            kwargs = dict(tools=tools, add_generation_prompt=add_generation_prompt, bos_token="<bos>")
            ours_text = render_jinja_template([messages], chat_template=ours, **kwargs)
            assert ours_text == render_jinja_template([messages], chat_template=stock, **kwargs), name
        if tools:
            continue
        # What the model sees at inference (the conversation up to a turn, plus the cue) is a prefix of training.
        full, spans = render(ours, messages, with_spans=True)
        starts = [start for start, _ in spans]
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                prompt = render(ours, messages[:i], add_generation_prompt=True)
                assert full.startswith(prompt), name
                assert len(prompt) in starts, name  # and the supervised block starts right after the cue
        end_of_turn = FAMILIES[family].end_of_turn
        for start, end in spans:
            assert end_of_turn in full[start:end], name


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_family_is_recognised_from_its_stock_template_processor_and_model(family):
    model, processor = tiny(family)
    stock = stock_template(family)
    # Qwen3-VL-MoE ships Qwen3-VL's template: recognised as that one, which trains it the same way.
    same_template = "qwen3_vl" if family == "qwen3_vl_moe" else family
    assert processor.chat_template == stock
    assert detect_family(stock) == same_template and detect_family(stock + "\n") == same_template
    assert resolve_training_template(stock) == training_template(family)
    assert family_of_processor(processor) == same_template
    assert family_of_model(model) == family
    assert family in FAMILIES  # one record: template, tokens and model parts


# -- masks ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_supervised_text_is_exactly_each_assistant_turn(family):
    assert_each_assistant_turn_is_supervised_exactly(family, tiny(family)[1])


def assert_each_assistant_turn_is_supervised_exactly(family, processor):
    """On every shape the family supports. Shared with the real-vocabulary tests (test_real_vocab_families.py)."""
    collate = collator(family, processor)
    for name in supported_shapes(family):
        row, expected = shape(family, name)
        batch = collate([row])
        assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == expected, name


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_no_vision_or_padding_token_is_supervised_and_labels_do_not_depend_on_the_batch(family):
    assert_no_vision_or_padding_token_is_supervised_and_labels_do_not_depend_on_the_batch(family, tiny(family)[1])


def assert_no_vision_or_padding_token_is_supervised_and_labels_do_not_depend_on_the_batch(family, processor):
    collate = collator(family, processor)
    rows = [shape(family, name)[0] for name in supported_shapes(family)]
    batch = collate(rows)
    supervised = batch["labels"] != IGNORE_INDEX
    is_vision = torch.isin(batch["input_ids"], vision_token_ids(family, processor.tokenizer))
    assert is_vision.any() and (batch["attention_mask"] == 0).any()  # the checks below are not vacuous
    assert not (supervised & is_vision).any()
    assert not (supervised & (batch["attention_mask"] == 0)).any()
    image_maps = [key for key in ("token_type_ids", "mm_token_type_ids") if key in batch]
    per_token = ["input_ids", "labels", "attention_mask", *image_maps]
    for i, row in enumerate(rows):
        alone = collate([row])
        length = alone["input_ids"].shape[1]
        for key in per_token:
            assert torch.equal(batch[key][i, :length], alone[key][0]), (i, key)
        assert (batch["labels"][i, length:] == IGNORE_INDEX).all()
        assert (batch["attention_mask"][i, length:] == 0).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_full_loss_mode_supervises_every_token_but_vision_and_padding(family):
    rows = [shape(family, "multi_turn_later_images")[0], shape(family, "text_only")[0]]
    batch = collator(family, assistant_only_loss=False)(rows)
    is_vision = torch.isin(batch["input_ids"], vision_token_ids(family))
    assert torch.equal(batch["labels"] != IGNORE_INDEX, (batch["attention_mask"] == 1) & ~is_vision)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_inputs_identical_to_the_processor(family):
    """Every tensor the stock processor produces for the same conversations (ids, pixels, image sizes, pixel masks,
    image maps) is what vlsft produces; vlsft only adds the labels."""
    assert_inputs_identical_to_the_processor(family, tiny(family)[1])


def assert_inputs_identical_to_the_processor(family, processor):
    collate = collator(family, processor)

    def reference(rows, tools=None):
        conversations = [prepare_multimodal_messages(row["messages"], images=row["images"]) for row in rows]
        for conversation, row in zip(conversations, rows):
            # TRL makes a string system prompt a list of text items; Gemma 4's template renders a list item with a
            # trailing space (the others render both forms alike, and some only the list). The reference renders
            # the row as given, as vlsft does.
            for prepared, message in zip(conversation, row["messages"]):
                if family.startswith("gemma4") and message["role"] == "system" and isinstance(message["content"], str):
                    prepared["content"] = message["content"]
        return processor.apply_chat_template(
            conversations,
            tools=tools,
            chat_template=stock_template(family),
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "right"},
        )

    def assert_same(ours, theirs, what):
        assert set(ours) - {"labels"} == set(theirs), what
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (what, key)

    for name in processor_shapes(family):
        row = shape(family, name)[0]
        assert_same(collate([row]), reference([row], row.get("tools")), name)
    rows = [shape(family, name)[0] for name in processor_shapes(family) if "tools" not in shape(family, name)[0]]
    assert_same(collate(rows), reference(rows), "batch")


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if not supports_tools(f)])
def test_shapes_the_stock_template_cannot_express_fail_naming_the_family_and_feature(family, tmp_path):
    collate = collator(family)
    good = shape(family, "one_image_one_turn")[0]
    for name, feature in [("tool_call_with_text", "tool_calls"), ("tool_response_with_image", "'tool' messages")]:
        bad = shape(family, name)[0]
        with pytest.raises(RowError, match=rf"batch row 1: {family} .*cannot express.*{re.escape(feature)}") as raised:
            collate([good, bad])
        assert isinstance(raised.value.__cause__, UnsupportedConversationError)
        assert "chat_template_path" in str(raised.value)  # ... and says what to do instead
    # A tool definition alone is refused too: the template would drop it without a word.
    with pytest.raises(RowError, match=r"tool definitions"):
        collate([{**good, "tools": [{"type": "function", "function": {"name": "zoom"}}]}])
    # Before training, validation names the row.
    model, processor = tiny(family)
    rows = [good, shape(family, "tool_call_without_text")[0]]
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(InvalidRowsError, match=rf"row 1: .*{family} .*cannot express assistant tool calls"):
        VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)


# -- loss ----------------------------------------------------------------------------------------------------------

ANSWERS = [
    "Red.",
    "It is a large red square in the middle of a white picture, with a thin blue border around the whole of it.",
    "Yes",
    "Two shapes: a green circle on the left and a yellow triangle on the right, both small.",
]


def rows_of_different_lengths():
    return [
        {
            "messages": [user(IMAGE, f"Question {i}?"), assistant(answer)],
            "images": [image((40 * i, 0, 200), (64, 48 + 16 * i))],
        }
        for i, answer in enumerate(ANSWERS)
    ]


def make_trainer(family, tmp_path, **config):
    model, processor = tiny(family)
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", max_steps=1, learning_rate=1.0, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=0.0, gradient_checkpointing=False, save_strategy="no",
        logging_steps=1, seed=0, data_seed=0, use_cpu=True,  # CPU batches, compared exactly on any machine
    )
    args = VLSFTConfig(**{**defaults, **config})
    dataset = Dataset.from_list(rows_of_different_lengths())
    return VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=processor)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_loss_and_gradients_equal_the_full_logits_reference(family, tmp_path):
    """The loss runs the backbone and the LM head itself; it must be the model's own next-token loss (Gemma 3's
    tiny config sets `final_logit_softcapping`, which its conditional-generation head does not apply)."""
    trainer = make_trainer(family, tmp_path, loss_chunk_size=7)
    batch = trainer.data_collator(rows_of_different_lengths())
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    reference_model = copy.deepcopy(tiny(family)[0])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if trainer.aux_loss_enabled:  # MoE: the model's load-balancing loss, with the config's coefficient (as in TRL)
        inputs["output_router_logits"] = True
    output = reference_model(**inputs)
    logits = output.logits.float()
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    if trainer.aux_loss_enabled:
        expected = expected + trainer.router_aux_loss_coef * output.aux_loss
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    vision_grads = 0
    for name, param in reference_model.named_parameters():
        if param.grad is not None:
            scale = float(param.grad.abs().max())  # float32 sums in another order: relative to the gradient's size
            tolerance = dict(rtol=1e-4, atol=1e-6 + 1e-6 * scale)
            torch.testing.assert_close(grads[name], param.grad, **tolerance, msg=lambda m: f"{name}: {m}")
            vision_grads += component_of(name) == "vision_tower" and bool(param.grad.abs().sum() > 0)
    assert vision_grads > 0  # the images really went through the vision tower


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_batch_of_4_equals_4_accumulated_micro_batches_of_1(family, tmp_path):
    start = {n: p.detach().clone() for n, p in tiny(family)[0].named_parameters()}
    weights, losses = [], []
    for batch_size, accumulation in ((4, 1), (1, 4)):
        trainer = make_trainer(
            family, tmp_path / f"{batch_size}x{accumulation}", per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
        )
        if trainer.aux_loss_enabled:
            # The MoE load-balancing loss is a mean over each micro-batch's tokens (as in TRL and the model's own
            # forward): not additive over micro-batches, so 4x1 and 1x4 differ by design (~1e-4 of the update here).
            # The equivalence proven is the token loss's.
            trainer.router_aux_loss_coef = 0.0
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        losses.append(trainer.state.log_history[0]["loss"])
    update = max((weights[0][n] - start[n]).abs().max() for n in start)
    difference = max((weights[0][n] - weights[1][n]).abs().max() for n in start)
    assert update > 1e-3  # the step really moved the weights
    assert difference <= 1e-5 * update
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# -- model parts ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_parts_and_default_lora_targets(family):
    model = tiny(family)[0]
    parts = FAMILIES[family].parts
    groups = named_parameters_by_component(model)
    assert all(groups.values())  # every component is found
    for name, _ in model.named_parameters():
        inner = name.removeprefix("model.")
        if any(inner == m or inner.startswith(m + ".") for m in parts.mergers):
            assert component_of(name) == "merger", name
        elif inner.startswith(parts.vision_tower + "."):
            assert component_of(name) == "vision_tower", name
        else:
            assert component_of(name) == "language_model", name

    def targeted(regex):
        return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(regex, n)]

    text_config = model.config.get_text_config()
    language = targeted(lora_target_modules())
    per_layer = 4 if family == "qwen3_vl_moe" else 7  # MoE experts are fused parameters: attention only
    assert len(language) == per_layer * text_config.num_hidden_layers
    assert all(f"model.{parts.decoder_layers}." in name for name in language)
    vision = sorted(set(targeted(lora_target_modules(vision=True))) - set(language))
    assert vision and all(name.startswith(f"model.{parts.vision_tower}.") for name in vision)
    assert not [name for name in vision if component_of(name) != "vision_tower"]
    for name in merger_module_names(model):
        assert component_of(name) == "merger" and isinstance(model.get_submodule(name), torch.nn.Module)


# -- recipes -------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
RECIPES = {
    "qwen3_vl_moe": "qwen3_vl_30b_a3b_lora_zero3.yaml",
    "qwen2_5_vl": "qwen2_5_vl_3b_lora_single_gpu.yaml",
    "gemma3": "gemma3_4b_lora_single_gpu.yaml",
    "idefics3": "idefics3_8b_lora_single_gpu.yaml",
    "smolvlm": "smolvlm2_2b_full_single_gpu.yaml",
    "llava_next": "llava_next_7b_lora_single_gpu.yaml",
    "gemma4_v5": "gemma4_e4b_lora_single_gpu.yaml",
}


def write_jsonl_dataset(family: str, directory: Path) -> Path:
    """The family's supported shapes as a JSONL file with PNG images next to it, as a user would ship data."""
    lines = []
    for number, name in enumerate(processor_shapes(family)):
        row, _ = shape(family, name)
        paths = []
        for index, picture in enumerate(row["images"]):
            paths.append(f"{number}_{index}.png")
            picture.save(directory / paths[-1])
        record = {"messages": normalize_messages(row["messages"]), "images": paths, "tools": row.get("tools")}
        lines.append(json.dumps(record))
    path = directory / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_run_overrides(recipe, model_dir, data, out) -> list[str]:
    """Overrides that point a shipped recipe at a tiny model saved in `model_dir` and a local JSONL file, as a
    two-step, one-process CPU run. With LoRA, the vision blocks get adapters too and the merger trains whole."""
    overrides = [
        "--model.name_or_path", str(model_dir), "--model.dtype", "float32",
        "--model.attn_implementation", "eager", "--data.train.0.path", str(data), "--data.train.0.rows", "4",
        "--output_dir", str(out), "--max_steps", "2", "--bf16", "false", "--max_length", "1024",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--eval_steps", "1000",
        "--save_steps", "1000", "--layout.strategy", "cpu", "--layout.gpus_per_node", "1",
        # The rows that spell out the template's tokens in their text are bad rows unless escaped (issue 16):
        # trained as plain text.
        "--escape_control_tokens", "true",
    ]
    if recipe.data.eval:
        overrides += ["--data.eval.0.path", str(data), "--data.eval.0.rows", "2", "--data.eval.0.split", "train"]
    if recipe.lora is not None:
        overrides += ["--lora.vision", "true", "--model.freeze_merger", "false"]
    return overrides


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_family_recipe_trains_the_tiny_model_end_to_end(family, tmp_path, monkeypatch):
    """The shipped recipe, pointed at a tiny model saved to a directory and a local JSONL file: the processor and model
    load through the Auto classes, rows validate, and two optimizer steps train what the recipe says. LoRA recipes
    also adapt the vision blocks and train the merger whole (`modules_to_save`), on the family's real module names."""
    from vlsft.cli.train import main

    model, processor = tiny(family)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    data = write_jsonl_dataset(family, tmp_path)
    recipe = load_recipe(REPO / "recipes" / RECIPES[family])
    overrides = tiny_run_overrides(recipe, tmp_path / "model", data, tmp_path / "out")
    monkeypatch.chdir(REPO)
    assert main(["--config", f"recipes/{RECIPES[family]}", *overrides]) == 0

    out = tmp_path / "out"
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 2 and all(torch.isfinite(torch.tensor(losses)))
    if recipe.lora is None:
        assert (out / "model.safetensors").is_file()
        return
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as adapter:
        names = list(adapter.keys())
    parts = FAMILIES[family].parts
    assert any(f".{parts.vision_tower}." in n and "lora_A" in n for n in names)  # vision blocks adapted
    assert any(f".{parts.decoder_layers}." in n and "lora_A" in n for n in names)  # language model adapted
    assert any(component_of(n) == "merger" and "lora" not in n for n in names)  # merger saved whole
