"""Mistral Large 4, Mistral 4, Gemma 4 Unified and the others of `vlsft.testing.tiny_generic_mistral_gemma_glm5`:
what they need beyond the parametrized tests of `tests/test_generic_families.py`.
- Mistral 4's `Mistral4ForCausalLM` (listed by transformers among its image-text-to-text models) reads no images: the
  trainer refuses it when it starts, before any row is checked, saying why and what to load instead;
- Mistral Small 4, the Mistral 4 that reads images (`Mistral3ForConditionalGeneration` over a Mistral 4 language
  model), takes the generic path with the parametrized tests' own assertions;
- Mistral Large 4's sparse attention selects fewer tokens than the test rows hold;
- Gemma 4 Unified ships Gemma 4's template, so it trains through Gemma 4's record: its inputs are its processor's, its
  masks the rule's, and its encoder-free vision path (no tower: a patch embedding) is found by name; its videos and
  audio are refused by row.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

import tests.test_generic_families as generic
from tests.conftest import _shapes
from tests.test_families import rows_of_different_lengths, supervised_texts
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import check_model_parts
from vlsft.templates import resolve_training_template
from vlsft.testing.tiny_generic_mistral_gemma_glm5 import (
    build_tiny_gemma4_unified,
    build_tiny_mistral4,
    build_tiny_mistral_small4,
)

TEXT_ONLY = r"mistral4: Mistral4ForCausalLM reads no images .*Mistral3ForConditionalGeneration"


def test_mistral4_text_only_causal_lm_is_refused_when_the_trainer_starts(tmp_path):
    model, processor = build_tiny_mistral4()
    with pytest.raises(ValueError, match=TEXT_ONLY):  # also after a model given by name has loaded
        check_model_parts(model)
    # Refused before the rows are checked: a row that validation would refuse is never reached.
    rows = Dataset.from_list([{"messages": [{"role": "user", "content": "Hi"}], "images": []}])
    with pytest.raises(ValueError, match=TEXT_ONLY):
        VLSFTTrainer(model, args=VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True),
                     train_dataset=rows, processing_class=processor)


@pytest.fixture
def mistral_small4(monkeypatch):
    monkeypatch.setitem(generic.GENERIC_BUILDERS, "mistral_small4", build_tiny_mistral_small4)
    return "mistral_small4"


def test_mistral_small4_masks_are_the_rule_and_inputs_are_the_processors(mistral_small4):
    generic.test_masks_are_the_rule_and_inputs_are_the_processors(mistral_small4)


def test_mistral_small4_one_training_step_moves_every_part(mistral_small4, tmp_path):
    generic.test_one_training_step_moves_every_part(mistral_small4, tmp_path)


def test_mistral_small4_lora_step_trains_only_the_adapters(mistral_small4, tmp_path):
    generic.test_lora_step_trains_only_the_adapters(mistral_small4, tmp_path)


def test_mistral_large4_attention_is_sparse_on_the_test_rows():
    """The indexer keeps `index_topk` tokens per query: the test rows are longer, so the training steps of the
    parametrized tests run the sparse attention of the checkpoints, not a dense one."""
    model, processor = generic.tiny("mistral_large4")
    batch = VisionChatCollator(processor, processor.chat_template)(copy.deepcopy(rows_of_different_lengths()[:2]))
    assert batch["input_ids"].shape[1] > model.config.text_config.index_topk


# -- Gemma 4 Unified -----------------------------------------------------------------------------------------------


@pytest.fixture
def gemma4_unified(monkeypatch):
    monkeypatch.setitem(generic.GENERIC_BUILDERS, "gemma4_unified", build_tiny_gemma4_unified)
    return "gemma4_unified"


def test_gemma4_unified_takes_gemma4s_record_with_the_processors_inputs_and_the_rules_masks(gemma4_unified):
    """Its checkpoints ship Gemma 4's chat template: recognised, it trains through Gemma 4's record (its hand-written
    training template); the inputs equal `Gemma4UnifiedProcessor`'s on every shape, and the supervised text is the
    incremental-rendering rule's wherever the rule applies (a tool call with text: Gemma 4's template rewrites it once
    the tool's response follows, which only the record can train)."""
    _, processor = generic.tiny(gemma4_unified)
    collate = VisionChatCollator(processor, resolve_training_template(processor.chat_template))
    assert not collate.generic_family and collate.family.name == "gemma4_v5"
    rule = VisionChatCollator(processor, processor.chat_template)
    checked = 0
    for name, (row, _) in _shapes().items():
        if name in generic.NOT_FOR_PROCESSOR:
            continue
        conversation = generic.as_the_template_reads(processor, row)
        # The record renders a message's string content as that string, as at inference (Gemma 4's template writes
        # a list-valued system prompt with a trailing space).
        as_written = [{**message, "content": original["content"]} if isinstance(original["content"], str) else message
                      for original, message in zip(row["messages"], conversation)]
        batch = collate([row])
        reference = processor.apply_chat_template(
            [as_written], tools=row.get("tools"), tokenize=True, return_dict=True, return_tensors="pt"
        )
        assert set(reference) <= set(batch), name
        for key, value in reference.items():
            assert torch.equal(batch[key], value), (name, key)
        texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
        if name == "tool_call_with_text":
            with pytest.raises(RowError, match=r"message 1 \(assistant\): its rendering changes"):
                rule([row])
        else:
            # (the record also supervises the newline after `<turn|>`, which the rule leaves to the next prompt)
            assert [text.rstrip("\n") for text in texts] == generic.rule_texts(processor, conversation, row.get("tools")), name
        checked += 1
    assert checked == len(_shapes()) - len(generic.NOT_FOR_PROCESSOR)


def test_gemma4_unified_one_training_step_moves_every_part(gemma4_unified, tmp_path):
    """No vision tower: the patch embedding of its `embed_vision` is (`vlsft.model_parts.PATCH_EMBEDDING_NAMES`),
    and its `multimodal_embedder` the projector."""
    generic.test_one_training_step_moves_every_part(gemma4_unified, tmp_path)


def test_gemma4_unified_lora_step_trains_only_the_adapters(gemma4_unified, tmp_path):
    generic.test_lora_step_trains_only_the_adapters(gemma4_unified, tmp_path)


def test_gemma4_unified_one_batch_of_2_equals_2_accumulated_micro_batches_of_1(gemma4_unified, tmp_path):
    generic.test_one_batch_of_2_equals_2_accumulated_micro_batches_of_1(gemma4_unified, tmp_path)


@pytest.mark.parametrize("item", ["video", "audio"])
def test_gemma4_unified_video_and_audio_are_refused_by_row(gemma4_unified, item):
    """Its processor takes videos and audio; vlsft builds neither for it: such a row fails by name, never trains on a
    placeholder with no features behind it."""
    _, processor = generic.tiny(gemma4_unified)
    collate = VisionChatCollator(processor, resolve_training_template(processor.chat_template))
    messages = [{"role": "user", "content": [{"type": item}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]}]
    with pytest.raises(RowError, match=rf"batch row 0: gemma4_v5 .*the row has (a )?{item} \(message 0\)"):
        collate([{"messages": messages, "images": []}])


def test_glm5_next_videos_are_refused_by_row():
    """`Glm5NextProcessor` takes videos; the generic path collates images only: a video fails by name."""
    _, processor = generic.tiny("glm5_next")
    collate = VisionChatCollator(processor, processor.chat_template)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]}]
    with pytest.raises(RowError, match=r"message 0 has a 'video' item: vlsft trains Glm5NextProcessor \(generic path\)"):
        collate([{"messages": messages, "images": []}])


@pytest.mark.parametrize("item", ["video", "audio"])
def test_muse_spark_video_and_audio_are_refused_by_row(item):
    """`MuseSparkProcessor` takes videos and audio; the generic path collates images only: either fails by name."""
    _, processor = generic.tiny("muse_spark")
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=generic.TEMPLATE_KWARGS["muse_spark"])
    messages = [{"role": "user", "content": [{"type": item}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]}]
    with pytest.raises(RowError, match=rf"message 0 has an? '{item}' item: vlsft trains MuseSparkProcessor \(generic path\)"):
        collate([{"messages": messages, "images": []}])
