"""HyperCLOVA X SEED Vision (v2) and the other families of `vlsft.testing.tiny_generic_clova_inkling` beyond the
parametrized generic-path tests (tests/test_generic_families.py):
- HyperCLOVA X's linear `projector` (after its Qwen2.5-VL tower's own merger) is found as the projector, not trained as
  part of the language model;
- a turn's supervised text ends with `<|im_end|><|endofturn|>`, the tokens the model writes before it stops;
- Inkling 2's loss is its own forward's: logits softcapped (by a module its `__init__` builds) and cut to the unpadded
  vocabulary before the softmax;
- Nemotron 3 Nano Omni's LM head (inside its causal `language_model`; the model's `get_output_embeddings()` is None)
  is found, LoRA adapts every block of its hybrid stack (attention, Mamba-2, the MoE's shared expert), and its audio is
  refused by row with the reason;
- videos are refused by row.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from PIL import Image
from torch import nn

from tests.test_families import rows_of_different_lengths, supervised_texts
from tests.test_generic_families import tiny
from tests.test_loss import reference_loss
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.loss import output_head
from vlsft.model_parts import (
    MERGER,
    component_of,
    final_logit_softcap,
    lora_target_modules,
    merger_module_names,
    named_parameters_by_component,
    output_vocab_size,
)


def answer(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def test_hyperclovax_projector_is_the_projector():
    """Without `projector` among transformers 5's projector names, HyperCLOVA X's projection into the language model
    would be counted (and frozen, and adapted) as part of the language model."""
    model, _ = tiny("hyperclovax_vision_v2")
    assert component_of("model.projector.weight") == MERGER
    assert "model.projector" in merger_module_names(model)
    merger = {name for name, _ in named_parameters_by_component(model)[MERGER]}
    assert {"model.projector.weight", "model.projector.bias"} <= merger


def test_hyperclovax_supervises_through_the_end_of_turn_token():
    _, processor = tiny("hyperclovax_vision_v2")
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, answer("Hello."),
                {"role": "user", "content": [{"type": "text", "text": "Colour?"}]}, answer("Red.")]
    batch = VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == ["Hello.<|im_end|><|endofturn|>", "Red.<|im_end|><|endofturn|>"]


def test_inkling2_loss_is_the_models_own_capped_loss_over_the_unpadded_vocabulary(tmp_path):
    """Inkling 2's forward caps its logits with a module its `__init__` builds (`logit_softcap`, from
    `final_logit_softcapping`), then drops the head's padding rows (`unpadded_vocab_size`). vlsft runs the head
    itself, so it must do both: the loss and gradients equal those of the model's own logits."""
    model, processor = tiny("inkling2")
    assert final_logit_softcap(model) == 30.0
    assert output_vocab_size(model) == len(processor.tokenizer) < model.lm_head.weight.shape[0]
    # A tiny random model's logits are far below 30, where the cap changes almost nothing: 0.5 changes them all.
    model = copy.deepcopy(model)
    model.config.get_text_config().final_logit_softcapping = 0.5
    model.logit_softcap.softcap = 0.5
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1, save_strategy="no")
    trainer = VLSFTTrainer(copy.deepcopy(model), args=args, processing_class=processor,
                           train_dataset=Dataset.from_list(rows_of_different_lengths()[:2]))
    batch = trainer.data_collator(rows_of_different_lengths()[:2])
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    reference_model = copy.deepcopy(model)
    expected = reference_loss(reference_model, batch)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    ours = dict(trainer.model.named_parameters())
    torch.testing.assert_close(ours["lm_head.weight"].grad, reference_model.lm_head.weight.grad, rtol=1e-4, atol=1e-6)


def test_nemotron_h_omni_head_is_found_inside_its_causal_language_model():
    """The model's own `get_output_embeddings()` is None (its head is `language_model.lm_head`): the loss must still
    run the head, and the decoder's hidden states be read apart from it."""
    model, _ = tiny("nemotron_h_omni")
    assert model.get_output_embeddings() is None
    assert output_head(model) is model.language_model.lm_head


def test_nemotron_h_omni_lora_adapts_every_block_of_its_hybrid_stack():
    """Nemotron-H names each layer's block `mixer`, whatever it is: each Linear of the decoder layers is adapted
    (attention, Mamba-2's in and out projections, the MoE's shared expert); the router is no Linear layer."""
    model, _ = tiny("nemotron_h_omni")
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    decoder = {name for name in linear if ".language_model.model.layers." in f".{name}"}
    assert {name.rsplit(".", 1)[1] for name in decoder} >= {"q_proj", "o_proj", "in_proj", "out_proj", "up_proj"}
    assert set(lora_target_modules(model=model)) == decoder


def test_nemotron_h_omni_audio_is_refused_by_row_with_the_reason():
    """Its processor expands an audio item into placeholders that only its Parakeet features fill: vlsft collates
    images only, so an audio item (or an audio column) fails by name; the same conversation with its image alone
    collates."""
    _, processor = tiny("nemotron_h_omni")
    collate = VisionChatCollator(processor, processor.chat_template)
    image = Image.new("RGB", (64, 64), (255, 0, 0))
    question = [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What is said?"}]
    with pytest.raises(RowError, match=r"message 0 has a 'audio' item: vlsft trains .* on text and images only"):
        collate([{"messages": [{"role": "user", "content": question}, answer("Hello.")], "images": [image]}])
    without_audio = [{"role": "user", "content": [question[0], question[2]]}, answer("Hello.")]
    with pytest.raises(RowError, match=r"the row has a `audio` column: vlsft trains .* on text and images only"):
        collate([{"messages": without_audio, "images": [image], "audio": [[0.0] * 1600]}])
    batch = collate([{"messages": without_audio, "images": [image]}])
    assert processor.audio_token_id not in batch["input_ids"][0].tolist()
    assert "pixel_values" in batch and (batch["labels"][0] != -100).any()


@pytest.mark.parametrize("family", ["hyperclovax_vision_v2", "inkling2", "minimax_m3_vl", "nemotron_h_omni"])
def test_videos_are_refused_by_row(family):
    """Their processors take videos; the generic path collates images only: a video fails by name."""
    _, processor = tiny(family)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}, answer("A dot.")]
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {type(processor).__name__}"):
        VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])
