"""Mistral Large 4, Mistral 4, Gemma 4 Unified and the others of `vlsft.testing.tiny_generic_mistral_gemma_glm5`:
what they need beyond the parametrized tests of `tests/test_generic_families.py`.
- Mistral 4's `Mistral4ForCausalLM` (listed by transformers among its image-text-to-text models) reads no images: the
  trainer refuses it when it starts, before any row is checked, saying why and what to load instead;
- Mistral Small 4, the Mistral 4 that reads images (`Mistral3ForConditionalGeneration` over a Mistral 4 language
  model), takes the generic path with the parametrized tests' own assertions;
- Mistral Large 4's sparse attention selects fewer tokens than the test rows hold.
"""

from __future__ import annotations

import copy

import pytest
from datasets import Dataset

import tests.test_generic_families as generic
from tests.test_families import rows_of_different_lengths
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import check_model_parts
from vlsft.testing.tiny_generic_mistral_gemma_glm5 import build_tiny_mistral4, build_tiny_mistral_small4

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
