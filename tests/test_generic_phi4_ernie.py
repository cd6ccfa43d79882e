"""Phi-4-multimodal and ERNIE 4.5-VL-MoE on the generic exact path (`vlsft.testing.tiny_generic_phi4_ernie`).

Phi-4-multimodal takes the parametrized family tests (`tests/test_generic_families.py`); here: its audio refused by
row, its earlier turns ending before the eos its template writes at the end of a rendering, its parts found by name.
ERNIE 4.5-VL trains only rows whose answers carry reasoning, with `enable_thinking=True` (its generation prompt
otherwise opens an empty think block its history never writes): here the family tests on such rows (masks, inputs,
a step, LoRA; exact gradient accumulation is not proven yet, see docs_incoming/phi4-ernie.md), and the refusal of
every other row by name.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from tests.conftest import _shapes, image
from tests.test_families import rows_of_different_lengths, supervised_texts
from tests.test_generic_families import as_the_template_reads, rule_texts
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.generic_masks import PrefixRuleError
from vlsft.model_parts import (
    LANGUAGE_MODEL,
    MERGER,
    VISION_TOWER,
    check_model_parts,
    component_of,
    lora_target_modules,
    named_parameters_by_component,
)
from vlsft.testing.tiny_generic_phi4_ernie import build_tiny_ernie4_5_vl_moe, build_tiny_phi4_multimodal

THINKING = {"enable_thinking": True}


@lru_cache
def phi4():
    return build_tiny_phi4_multimodal(seed=0)


@lru_cache
def ernie():
    return build_tiny_ernie4_5_vl_moe(seed=0)


# -- Phi-4-multimodal ---------------------------------------------------------------------------------------------


def test_phi4_multimodal_audio_is_refused_by_row():
    """Phi-4-multimodal's processor takes audio, which vlsft does not collate: an audio item fails naming its message,
    an `audio` column names the column; never a placeholder trained with no features behind it."""
    _, processor = phi4()
    collate = VisionChatCollator(processor, processor.chat_template)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is said?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]
    with pytest.raises(RowError, match=r"message 0 has a 'audio' item: vlsft trains Phi4MultimodalProcessor \(generic"
                                       r" path\) on text and images only"):
        collate([{"messages": messages, "images": []}])
    text_only = [{"role": "user", "content": "What is said?"}, messages[1]]
    with pytest.raises(RowError, match="the row has a `audio` column: vlsft trains Phi4MultimodalProcessor"):
        collate([{"messages": text_only, "images": [], "audio": ["speech.wav"]}])


def test_phi4_multimodal_earlier_turns_end_before_the_eos_its_template_writes_at_the_end():
    """Phi-4's template ends every rendering without the generation prompt with the eos, in the prompt's place: an
    earlier turn is supervised through its `<|end|>` (the conversation goes on after it, with no eos), the last one
    through the eos the whole rendering ends with, and the tokens are the processor's."""
    _, processor = phi4()
    collate = VisionChatCollator(processor, processor.chat_template)
    row = {"messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "text", "text": "Shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
    ], "images": [image()]}
    batch = collate([row])
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == [
        "Red.<|end|>", "A square.<|end|><|endoftext|>"
    ]
    reference = processor.apply_chat_template(
        [as_the_template_reads(processor, row)], tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(batch["input_ids"], reference["input_ids"])


def test_phi4_multimodal_parts_are_found_by_name():
    """Phi-4-multimodal is a causal LM whose own `model` is the language model, the SigLIP tower and its projector
    inside its token embedding: the tower (`img_processor`), the projector (`img_projection_*`, the learned
    separators) and the decoder (`model.layers`, fused `qkv_proj` a LoRA target) are found, and nothing of the tower
    or the audio encoder is a language-model LoRA target."""
    model, _ = phi4()
    check_model_parts(model)
    image_embed = "model.embed_tokens_extend.image_embed"
    assert component_of(f"{image_embed}.img_processor.encoder.layers.0.mlp.fc1.weight") == VISION_TOWER
    assert component_of(f"{image_embed}.img_projection_up.weight") == MERGER
    assert component_of(f"{image_embed}.sub_img_feature_extensor") == MERGER
    assert component_of("model.layers.0.self_attn.qkv_proj.weight") == LANGUAGE_MODEL
    targets = lora_target_modules(model=model)
    assert "model.layers.0.self_attn.qkv_proj" in targets and "model.layers.1.mlp.gate_up_proj" in targets
    assert all(name.startswith("model.layers.") for name in targets)


# -- ERNIE 4.5-VL-MoE ---------------------------------------------------------------------------------------------


def with_reasoning(row: dict) -> dict:
    row = copy.deepcopy(row)
    for message in row["messages"]:
        if message["role"] == "assistant":
            message["reasoning_content"] = "Look at it."
    return row


def test_ernie_rows_with_reasoning_train_exactly_with_thinking_on():
    """With `enable_thinking=True` ERNIE's prompt opens `<think>` and an answer with reasoning renders after it: on
    every test conversation (its answers given reasoning) the supervised text is the rule's, computed independently,
    and input_ids, pixels and both token-type maps (`moe_mm_token_type_ids` routes image tokens to their experts)
    are the processor's. Its template writes no tool calls: such rows fail by name."""
    _, processor = ernie()
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=THINKING)
    checked = 0
    for name, (row, _) in _shapes().items():
        row = with_reasoning(row)
        if any(message.get("tool_calls") for message in row["messages"]):
            with pytest.raises(RowError, match=r"message 1 \(assistant\): the chat template does not write its"):
                collate([row])
            continue
        conversation = as_the_template_reads(processor, row, **THINKING)
        batch = collate([row])
        texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
        assert texts == rule_texts(processor, conversation, row.get("tools"), **THINKING), name
        assert all(text.startswith("\n") and "</think>\n" in text for text in texts), name
        reference = processor.apply_chat_template(
            [conversation], tokenize=True, return_dict=True, return_tensors="pt", **THINKING
        )
        assert set(reference) <= set(batch), name
        for key, value in reference.items():
            assert torch.equal(batch[key], value), (name, key)
        checked += 1
    assert checked == 8


def test_ernie_plain_answers_are_refused_by_name():
    """ERNIE's history writes a plain answer as `\\nAssistant: ` + text, while its prompt adds a think block (opened
    with thinking on, empty with it off) that the history never writes: no exact mask exists, so the row fails naming
    the message; with thinking off no answer renders after the prompt, and the collator says so before any row."""
    _, processor = ernie()
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=THINKING)
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "images": []}
    with pytest.raises(RowError, match=r"batch row 0: message 1 \(assistant\): the template renders the turn without"
                                       " the generation prompt it gives at inference"):
        collate([plain])
    mixed = with_reasoning(plain)
    mixed["messages"] += [{"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Yes."}]
    with pytest.raises(RowError, match=r"batch row 0: message 3 \(assistant\)"):
        collate([mixed])
    for kwargs in ({}, {"enable_thinking": False}):
        with pytest.raises(PrefixRuleError, match="renders no answer, with or without reasoning, after the generation"):
            VisionChatCollator(processor, processor.chat_template, template_kwargs=kwargs)


def test_ernie_videos_are_refused_by_row():
    _, processor = ernie()
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=THINKING)
    row = with_reasoning({"messages": [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]},
    ], "images": []})
    with pytest.raises(RowError, match=r"message 0 has a 'video' item: vlsft trains Ernie4_5_VLMoeProcessor"):
        collate([row])


def test_ernie_moe_token_types_are_laid_over_the_collated_rows():
    """`moe_mm_token_type_ids` is a map over the tokens: padded to `pad_to_multiple_of` with the rows (the processor's
    own tensor is as long as its longest text), and equal to the processor's on each row's tokens."""
    _, processor = ernie()
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=THINKING, pad_to_multiple_of=16)
    rows = [with_reasoning(row) for row in rows_of_different_lengths()[:2]]
    batch = collate(rows)
    assert batch["moe_mm_token_type_ids"].shape == batch["input_ids"].shape
    for index, row in enumerate(rows):
        own = collate([row])
        length = own["input_ids"].shape[1]
        assert torch.equal(batch["moe_mm_token_type_ids"][index, :length], own["moe_mm_token_type_ids"][0])
        assert own["moe_mm_token_type_ids"][0].sum() > own["mm_token_type_ids"][0].sum()  # start/end tokens too


def _trainer(tmp_path, peft_config=None, **config):
    model, processor = ernie()
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", max_steps=1, learning_rate=1e-2, optim="sgd",
        per_device_train_batch_size=2, save_strategy="no", logging_steps=1, seed=0, use_cpu=True,
        chat_template_kwargs=THINKING,
    )
    rows = [with_reasoning(row) for row in rows_of_different_lengths()[:2]]
    return VLSFTTrainer(
        copy.deepcopy(model), args=VLSFTConfig(**{**defaults, **config}), train_dataset=Dataset.from_list(rows),
        processing_class=processor, peft_config=peft_config,
    )


def test_ernie_one_training_step_moves_every_part(tmp_path):
    trainer = _trainer(tmp_path)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))
    for component, parameters in named_parameters_by_component(trainer.model).items():
        assert parameters, component  # `vision_tower`, `resampler_model`, `language_model`
        assert any(not torch.equal(p, start[n]) for n, p in parameters), component


def test_ernie_lora_step_trains_only_the_adapters(tmp_path):
    targets = lora_target_modules(model=ernie()[0])
    trainer = _trainer(tmp_path, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert start and all("lora_" in n for n in start)
    trainer.train()
    assert any(not torch.equal(p, start[n]) for n, p in trainer.model.named_parameters() if n in start)
