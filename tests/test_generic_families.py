"""Families vlsft has no record for, trained on the generic exact path, each on a tiny random model of its real
architecture with its real processor class (`vlsft.testing.tiny_generic_families`):
- the supervised tokens decode to exactly what the incremental-rendering rule gives, computed here independently with
  `processor.apply_chat_template` on each prefix of the conversation;
- `input_ids` and pixel tensors equal `processor.apply_chat_template(tokenize=True)`'s (plus the stop token appended
  after a final turn, for a template that writes no end-of-turn marker);
- one training step and a LoRA step run, and the model's parts are found by transformers 5's names;
- a row whose template rewrites history (LFM2.5-VL drops earlier reasoning) is refused by validation naming it.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from torch import nn
from trl.data_utils import prepare_multimodal_messages

from tests.conftest import _shapes
from tests.test_families import rows_of_different_lengths, supervised_texts
from tests.test_families_qwen3_5 import split_empty_reasoning
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.generic_masks import as_content_items, strings_where_the_template_reads_strings
from vlsft.collator import VisionChatCollator
from vlsft.data.validation import InvalidRowsError
from vlsft.model_parts import check_model_parts, lora_target_modules, named_parameters_by_component
from vlsft.testing.tiny_generic_families import GENERIC_BUILDERS

FAMILIES = list(GENERIC_BUILDERS)
# Shapes TRL's data path cannot hand to a processor (an image inside a tool response).
NOT_FOR_PROCESSOR = {"tool_response_with_image"}
# Shapes a family's template refuses to render (raise_exception): the row fails by name.
TEMPLATE_REFUSES = {"mistral3": {"tool_call_with_text", "tool_call_without_text"}}
# How a family's template refuses them, where not by raise_exception: Llama 4's, given tools, writes the first user
# message with `|trim`, so a list of content items becomes its Python text (and the image placeholder is lost).
REFUSALS = {"llama4": r"batch row 0: message 0: the chat template writes its content as Python text"}
# Gemma 3n's template raises unless roles alternate user/assistant: a tool message breaks that.
REFUSALS["gemma3n"] = "batch row 0: Conversation roles must alternate"
TEMPLATE_REFUSES["gemma3n"] = {"tool_call_with_text", "tool_call_without_text"}
# Idefics2's template reads `content[0]` of every message: a tool-call turn without text has none.
REFUSALS["idefics2"] = "batch row 0: str object has no element 0"
TEMPLATE_REFUSES["idefics2"] = {"tool_call_without_text"}
# DeepSeek-VL's and Janus's templates read `content[0]` of an assistant message that ends the rendering: a tool-call
# turn without text has none.
for _family in ("deepseek_vl", "deepseek_vl_hybrid", "janus"):
    REFUSALS[_family] = "batch row 0: str object has no element 0"
    TEMPLATE_REFUSES[_family] = {"tool_call_without_text"}
TEMPLATE_REFUSES["llama4"] = {"tool_call_with_text", "tool_call_without_text"}
# Template variables a family's rows need: Muse Glimmer's default system prompt writes today's date unless
# `current_date` pins it (vlsft refuses a row holding the clock's date: `vlsft.collation.template_clock`).
TEMPLATE_KWARGS = {"muse_glimmer": {"current_date": "2026-01-04"}}
TEMPLATE_KWARGS["muse_spark"] = TEMPLATE_KWARGS["muse_glimmer"]  # the same Muse template
# Llama 3.2 Vision's system block (written when the conversation has no image) writes today's date unless
# `date_string` pins it.
TEMPLATE_KWARGS["mllama"] = {"date_string": "26 Jul 2024"}
# Molmo2's template makes user and assistant alternate, from the user (no system or tool message).
REFUSALS["molmo2"] = "batch row 0: Conversation roles must alternate"
TEMPLATE_REFUSES["molmo2"] = {"system_string", "system_list", "tool_call_with_text", "tool_call_without_text"}
# Video-LLaVA's Vicuna format has only USER and ASSISTANT turns (and a system prompt): no tool message.
TEMPLATE_REFUSES["video_llava"] = {"tool_call_with_text", "tool_call_without_text"}
# HunyuanOCR's template knows no tools: a tool message raises.
TEMPLATE_REFUSES["hunyuan_vl"] = {"tool_call_with_text", "tool_call_without_text"}
# Shapes the rule refuses by name, the template rewriting history: Molmo2's writes every image of the conversation
# before its first message, so an image after an assistant turn changes that turn's prompt.
RULE_REFUSES = {"molmo2": {"multi_turn_later_images"}}
# How many shapes a family must render exactly: 6, and Molmo2 and Llama 3.2 Vision the 5 their templates render (the
# others fail by name).
MIN_CHECKED = {"molmo2": 5, "mllama": 5}
# Llama 3.2 Vision's template writes its system block (the date) only for a conversation without an image: an image
# after an assistant turn removes it from that turn's prompt. Its template refuses a system message with images, and,
# as Llama 4's, writes the first user message with `|trim` when given tools.
RULE_REFUSES["mllama"] = {"multi_turn_later_images"}
TEMPLATE_REFUSES["mllama"] = {"system_string", "system_list", "tool_call_with_text", "tool_call_without_text"}
REFUSALS["mllama"] = (
    "batch row 0: (Prompting with images is incompatible with system messages|message 0: the chat template writes its"
    " content as Python text)"
)

# Templates that do not write `tool_calls` at all (most chat formats written for these tests, and the checkpoint
# templates of Ovis2, LLaVA-1.5, ViP-LLaVA, LLaVA-OneVision, Idefics2, DeepSeek-VL, Janus, Aria, FastVLM and
# Qwen2.5-Omni): a row with tool calls is refused naming the message (`vlsft.generic_masks.refuse_dropped_tool_calls`),
# never trained without them.
TOOL_CALLS_REFUSAL = r"batch row 0: message \d+ \(assistant\): the chat template does not write its `tool_calls`"
TOOL_CALLS_NOT_WRITTEN = {
    "glm4v", "internvl", "aya_vision", "cohere2_vision", "perception_lm", "ovis2", "minicpmv4_6", "llava_next_video",
    "llava", "vipllava", "llava_onevision", "idefics2", "deepseek_vl", "deepseek_vl_hybrid", "janus", "aria",
    "minicpmv4_7", "lighton_ocr", "fast_vlm", "exaone4_5", "kimi_k25", "step3p7",
    "granite_docling",  # Granite-Docling's checkpoint template writes content only
    "video_llama_3", "qianfan_ocr", "minicpm_ocr", "deepseek_ocr2", "unlimited_ocr", "qwen2_5_omni_thinker",
    "hyperclovax_vision_v2", "inkling2", "minimax_m3_vl", "nemotron_h_omni", "cohere_compass",
    "phi4_multimodal",
}
for _family in TOOL_CALLS_NOT_WRITTEN:
    TEMPLATE_REFUSES.setdefault(_family, set()).update({"tool_call_with_text", "tool_call_without_text"})
    REFUSALS[_family] = f"{REFUSALS[_family]}|{TOOL_CALLS_REFUSAL}" if _family in REFUSALS else TOOL_CALLS_REFUSAL

# Families vlsft has no record for whose processor and template it has one for: Qwen4-Exp ships Qwen3.5's
# processor (`Qwen3VLProcessor`) and a Qwen3.5-generation template, so its rows are collated by that record (the
# trainer's hand-written path), which tokenizes an empty reasoning block as inference sees it, split where the
# generation prompt ends (`tests.test_families_qwen3_5.split_empty_reasoning`); its model's parts, LoRA targets and
# packing are found as for any model without a record.
COLLATED_BY_RECORD = {"qwen4_exp": "qwen3_8"}
# Cosmos3's reasoner is Qwen3-VL's architecture under its own model type, with Qwen3-VL's processor and template.
COLLATED_BY_RECORD["cosmos3_omni"] = "qwen3_vl"


def as_the_template_reads(processor, row, **kwargs) -> list[dict]:
    """The row's conversation as TRL's data path hands it to a stock template (a list of items per message), except
    text-only content the template would write as Python text: given as its string, as at inference."""
    conversation = as_content_items(prepare_multimodal_messages(row["messages"], images=row["images"]))
    rendered = processor.apply_chat_template(conversation, tools=row.get("tools"), tokenize=False, **kwargs)
    return strings_where_the_template_reads_strings(rendered, conversation)


@lru_cache
def tiny(family):
    return GENERIC_BUILDERS[family](seed=0)


def rule_texts(processor, messages, tools=None, **kwargs) -> list[str]:
    """What the rule supervises, independently of vlsft: for each assistant message k, the rendering of
    `messages[:k+1]` beyond that of `messages[:k]` with the generation prompt, through the last control token in it,
    or, where the turn has none, through the control token the template writes next; where it writes none there
    either, the turn's text, and after a final turn its whole rendering and the tokenizer's eos token. A template whose
    plain turn ends with no control token (no end-of-turn marker: GLM) has every turn end with the control token it
    writes next, even one whose text ends with a tag (GLM-4.5V's `</tool_call>`, then `<|observation|>`). A template
    that ends a rendering without the generation prompt with a control token written in the prompt's place (Phi-4's
    eos) writes it at the end of the conversation only: an earlier turn ends before it."""
    control = sorted({t.content for t in processor.tokenizer.added_tokens_decoder.values()}, key=len, reverse=True)

    def render(prefix, prompt=False):
        return processor.apply_chat_template(prefix, tools=tools, tokenize=False, add_generation_prompt=prompt, **kwargs)

    plain = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]
    no_marker = not render(plain).rstrip().endswith(tuple(control))
    closed, prompted = render(plain[:1]), render(plain[:1], True)
    closer = next((t for t in control if closed.endswith(t) and not prompted.startswith(closed)
                   and prompted.startswith(closed[: -len(t)])), "")
    texts = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:k], True), render(messages[: k + 1])
        if closer and k + 1 < len(messages) and through.endswith(closer):
            through = through[: -len(closer)]
        if not through.startswith(before):  # a prompt whose trailing whitespace differs from the history's
            stem = before.rstrip()
            assert through.startswith(stem)
            before = stem + through[len(stem) :][: -len(through[len(stem) :].lstrip()) or None]
        turn = through[len(before) :].rstrip()
        if no_marker or not turn.endswith(tuple(control)):  # what follows: the next message, or a new user one
            after = messages[k + 1 :] or [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
            following = render([*messages[: k + 1], *after])
            stop = next((t for t in control if following[len(through) :].startswith(t)), None)
            if stop is not None:
                turn += stop
            elif k + 1 == len(messages):  # no control token between turns: the eos stops generation
                turn = through[len(before) :] + processor.tokenizer.eos_token
        if turn:  # an earlier turn the template renders as nothing but whitespace has nothing to supervise
            texts.append(turn)
    return texts


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_are_the_rule_and_inputs_are_the_processors(family):
    model, processor = tiny(family)
    kwargs = TEMPLATE_KWARGS.get(family, {})
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=kwargs)
    if family in COLLATED_BY_RECORD:  # the record's image expansion; masks by the rule all the same
        assert collate.family.name == COLLATED_BY_RECORD[family] and not collate.generic_family
        assert collate.generic_masks
    else:
        assert collate.generic_family and collate.generic_masks
    checked = 0
    for name, (row, _) in _shapes().items():
        if name in NOT_FOR_PROCESSOR:
            continue
        if name in TEMPLATE_REFUSES.get(family, ()):
            with pytest.raises(RowError, match=REFUSALS.get(family, "batch row 0: Only system, user and assistant")):
                collate([row])
            continue
        if name in RULE_REFUSES.get(family, ()):
            with pytest.raises(RowError, match=r"batch row 0: message \d+ \(assistant\): its rendering changes"):
                collate([row])
            continue
        conversation = as_the_template_reads(processor, row, **kwargs)
        batch = collate([row])
        texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
        assert texts == rule_texts(processor, conversation, row.get("tools"), **kwargs), name
        reference = processor.apply_chat_template(
            [conversation], tools=row.get("tools"), tokenize=True, return_dict=True, return_tensors="pt", **kwargs
        )
        if family in COLLATED_BY_RECORD:  # the record's one deliberate difference: `<think>\n` `\n</think>` split
            ids = split_empty_reasoning(reference["input_ids"][0], processor.tokenizer)[None]
            image = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
            reference = {**reference, "input_ids": ids, "attention_mask": torch.ones_like(ids),
                         "mm_token_type_ids": (ids == image).long()}
        appended = batch["input_ids"].shape[1] - reference["input_ids"].shape[1]
        assert appended in (0, 1) and (appended == 0 or texts[-1].endswith(processor.tokenizer.decode(batch["input_ids"][0, -1:])))
        for key, value in reference.items():
            ours = batch[key][:, : value.shape[1]] if key in ("input_ids", "attention_mask", "mm_token_type_ids") else batch[key]
            # (Some processors return lists the model reads as they are: Unlimited-OCR's `patches_grid`.)
            assert torch.equal(ours, value) if isinstance(value, torch.Tensor) else ours == value, (name, key)
        checked += 1
    assert checked >= MIN_CHECKED.get(family, 6)


def make_trainer(family, tmp_path, **config):
    model, processor = tiny(family)
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", max_steps=1, learning_rate=1e-2, optim="sgd",
        per_device_train_batch_size=2, save_strategy="no", logging_steps=1, seed=0, use_cpu=True,
        chat_template_kwargs=TEMPLATE_KWARGS.get(family),
    )
    dataset = Dataset.from_list(rows_of_different_lengths()[:2])
    return VLSFTTrainer(
        copy.deepcopy(model), args=VLSFTConfig(**{**defaults, **config}), train_dataset=dataset,
        processing_class=processor, peft_config=config.pop("peft_config", None),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_one_training_step_moves_every_part(family, tmp_path):
    trainer = make_trainer(family, tmp_path)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))
    for component, parameters in named_parameters_by_component(trainer.model).items():
        assert parameters, component  # the vision tower, projector and language model are found by name
        assert any(not torch.equal(p, start[n]) for n, p in parameters), component


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_step_trains_only_the_adapters(family, tmp_path):
    model, _ = tiny(family)
    targets = lora_target_modules(model=model)
    assert targets  # the language model's attention projections
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets)
    trainer = VLSFTTrainer(
        copy.deepcopy(model),
        args=VLSFTConfig(output_dir=str(tmp_path), report_to="none", max_steps=1, learning_rate=1e-2, optim="sgd",
                         per_device_train_batch_size=2, save_strategy="no", use_cpu=True,
                         chat_template_kwargs=TEMPLATE_KWARGS.get(family)),
        train_dataset=Dataset.from_list(rows_of_different_lengths()[:2]),
        processing_class=tiny(family)[1],
        peft_config=config,
    )
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert start and all("lora_" in n for n in start)
    trainer.train()
    assert any(not torch.equal(p, start[n]) for n, p in trainer.model.named_parameters() if n in start)


def test_lfm2_5_vl_rows_whose_earlier_reasoning_the_template_drops_are_refused_naming_the_message(tmp_path):
    """LFM2.5-VL's template renders an assistant turn's reasoning only after the last user message: a row with
    reasoning in an earlier turn has no exact mask on the generic path, and says so; the same row without it trains."""
    _, processor = tiny("lfm2_vl")
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi."}], "reasoning_content": "A greeting."},
        {"role": "user", "content": [{"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}], "reasoning_content": "It is red."},
    ]
    rows = [{"messages": copy.deepcopy(messages[2:]), "images": []}, {"messages": messages, "images": []}]
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(InvalidRowsError, match=r"(?s)row 1.*message 1 \(assistant\): its rendering changes"):
        VLSFTTrainer(copy.deepcopy(tiny("lfm2_vl")[0]), args=args, train_dataset=Dataset.from_list(rows),
                     processing_class=processor)
    kept = copy.deepcopy(messages)
    kept[1].pop("reasoning_content")
    batch = VisionChatCollator(processor, processor.chat_template)([{"messages": kept, "images": []}])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == ["Hi.<|im_end|>", "<think>It is red.</think>Red.<|im_end|>"]


def test_a_model_without_the_conventional_parts_is_refused_naming_what_is_missing():
    class Unknown(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(2, 2)
            self.language_model = nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"no a vision tower .*`visual` / `vision_tower` / `vision_model`.*no a projector"):
        check_model_parts(Unknown())
    check_model_parts(tiny(FAMILIES[0])[0])  # a generic family's model has them all


@pytest.mark.parametrize("family", FAMILIES)
def test_one_batch_of_2_equals_2_accumulated_micro_batches_of_1(family, tmp_path):
    """Exact gradient accumulation on the generic path: one SGD step on a batch of 2 rows of different lengths moves
    the weights as 2 accumulated micro-batches of 1 do."""
    weights = []
    for batch_size, accumulation in ((2, 1), (1, 2)):
        trainer = make_trainer(
            family, tmp_path / f"{batch_size}x{accumulation}", per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, learning_rate=1.0, max_grad_norm=0.0, data_seed=0,
            lr_scheduler_type="constant",
        )
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    start = dict(tiny(family)[0].named_parameters())
    update = max(float((weights[0][n] - start[n]).abs().max()) for n in start)
    difference = max(float((weights[0][n] - weights[1][n]).abs().max()) for n in start)
    assert update > 1e-3
    assert difference <= 1e-4 * update


def test_trls_generation_marked_lfm2_5_vl_template_supervises_what_the_rule_gives():
    """TRL ships LFM2.5-VL's template with generation markers: on every test conversation it supervises what the rule
    gives on the unmarked template (the newline after `<|im_end|>` aside, which the markers also enclose)."""
    from importlib import resources

    _, processor = tiny("lfm2_vl")
    marked_template = resources.files("trl").joinpath("chat_templates", "lfm2_2_5_vl.jinja").read_text()
    marked = VisionChatCollator(processor, marked_template)
    rule = VisionChatCollator(processor, processor.chat_template)
    assert not marked.generic_masks and rule.generic_masks
    for name, (row, _) in _shapes().items():
        ours, reference = marked([row]), rule([row])
        assert torch.equal(ours["input_ids"], reference["input_ids"]), name
        by_markers = supervised_texts(processor.tokenizer, ours["input_ids"][0], ours["labels"][0])
        by_rule = supervised_texts(processor.tokenizer, reference["input_ids"][0], reference["labels"][0])
        assert [text.rstrip("\n") for text in by_markers] == by_rule, name



def test_videos_are_refused_by_row_on_the_generic_path():
    """The generic path collates images only: a video item (or a `videos` column) fails by name, never trains on a
    placeholder with no features behind it."""
    _, processor = tiny("glm4v")  # its processor and template take videos
    collate = VisionChatCollator(processor, processor.chat_template)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]}]
    with pytest.raises(RowError, match=r"message 0 has a 'video' item: vlsft trains Glm4vProcessor \(generic path\)"):
        collate([{"messages": messages, "images": []}])
    with pytest.raises(RowError, match="not trained on videos"):
        collate([{"messages": [{"role": "user", "content": "What?"}, messages[1]], "images": [], "videos": ["clip.mp4"]}])
