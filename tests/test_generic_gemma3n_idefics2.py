"""Gemma 3n and Idefics2 on the generic exact path, beyond the parametrized tests of tests/test_generic_families.py:
- Gemma 3n's audio (an audio item, or an `audio` / `audios` column) is refused by row with the reason, never trained
  on a placeholder with no features behind it;
- the loss of a model without a record whose forward caps its logits (Gemma 3n's `final_logit_softcapping`) is the
  model's own loss, capped as its forward caps it;
- Gemma 3n's token-type map stays aligned with the collated tokens;
- Idefics2's processor reports no expansion: its own tokens are used, the supervision aligned onto them, and a row
  whose supervised text it rewrites is refused;
- PaliGemma, a prefix-LM trained on (prefix, suffix) pairs, is refused with what to do instead.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from tests.test_families import rows_of_different_lengths
from tests.test_loss import reference_loss
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import final_logit_softcap
from tests.test_generic_families import NOT_FOR_PROCESSOR, TEMPLATE_REFUSES, tiny

_ANSWER = {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]}


def test_gemma3n_audio_is_refused_by_row_with_the_reason():
    """Gemma 3n's template renders an audio item as `<audio_soft_token>`, which its processor expands to 188 audio
    tokens: vlsft does not collate audio features, so such a row fails by name, as does a row with an audio column."""
    _, processor = tiny("gemma3n")
    collate = VisionChatCollator(processor, processor.chat_template)
    audio_item = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What?"}]}, _ANSWER]
    with pytest.raises(RowError, match=r"message 0 has a 'audio' item: vlsft trains Gemma3nProcessor \(generic path\) "
                                       "on text and images only"):
        collate([{"messages": audio_item, "images": []}])
    text_only = [{"role": "user", "content": "What?"}, _ANSWER]
    for column in ("audio", "audios"):
        with pytest.raises(RowError, match=rf"batch row 0: the row has a `{column}` column: vlsft trains "
                                           r"Gemma3nProcessor \(generic path\) on text and images only"):
            collate([{"messages": text_only, "images": [], column: ["clip.wav"]}])
    collate([{"messages": text_only, "images": []}])  # the same row without audio trains


def test_gemma3n_loss_is_the_models_own_capped_loss(tmp_path):
    """Gemma 3n's forward caps its logits (`tanh(logits / 30) * 30`); vlsft runs the LM head itself, so it must cap
    them alike, though Gemma 3n has no record saying so: the loss and gradients equal those of the model's logits."""
    model, processor = tiny("gemma3n")
    assert final_logit_softcap(model) == 30.0
    # A tiny random model's logits are far below 30, where the cap changes almost nothing: 0.5 changes them all.
    model = copy.deepcopy(model)
    model.config.get_text_config().final_logit_softcapping = 0.5
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1, save_strategy="no")
    trainer = VLSFTTrainer(copy.deepcopy(model), args=args, processing_class=processor,
                           train_dataset=Dataset.from_list(rows_of_different_lengths()[:2]))
    batch = trainer.data_collator(rows_of_different_lengths()[:2])
    loss = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(loss, reference_loss(copy.deepcopy(model), batch), rtol=1e-5, atol=1e-6)


def test_a_model_whose_forward_does_not_cap_has_no_cap():
    """A model without a record whose forward never reads `final_logit_softcapping` is not capped, whatever its
    config says (the generic families proven here: none of their forwards caps)."""
    for family in ("lfm2_vl", "mistral3"):
        model, _ = tiny(family)
        model = copy.deepcopy(model)
        model.config.get_text_config().final_logit_softcapping = 30.0
        assert final_logit_softcap(model) is None, family


def test_gemma3n_token_type_map_follows_the_rows_tokens():
    """Gemma3nProcessor returns its token-type map (1 on image soft tokens) as `token_type_ids`: the collator lays it
    on its own tokens, as it lays `input_ids`, so truncation and padding to a multiple keep the two aligned."""
    _, processor = tiny("gemma3n")
    rows = rows_of_different_lengths()[:2]
    image_id = processor.tokenizer.image_token_id
    for options in (dict(max_length=30), dict(pad_to_multiple_of=64)):
        batch = VisionChatCollator(processor, processor.chat_template, **options)(rows)
        assert batch["token_type_ids"].shape == batch["input_ids"].shape, options
        assert torch.equal(batch["token_type_ids"], (batch["input_ids"] == image_id).long() * batch["attention_mask"])


def test_idefics2_rows_its_processor_rewrites_inside_an_answer_are_refused():
    """Idefics2's processor reports no expansion and writes a space after an image followed by a word: in a user
    turn that only changes the context (the row trains, on the processor's own tokens), but inside an answer it
    changes the supervised text, so the row is refused, naming what changed, never masked wrongly."""
    from PIL import Image

    _, processor = tiny("idefics2")
    collate = VisionChatCollator(processor, processor.chat_template)
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}
    batch = collate([{"messages": [user, _ANSWER], "images": [red]}])
    reference = processor.apply_chat_template([[user, _ANSWER]], tokenize=True, return_dict=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference["input_ids"])  # the space after the image is the processor's
    answer = {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "Red."}]}
    refusal = (
        r"batch row 0: Idefics2Processor's tokens of the whole text differ from the row's inside an assistant turn "
        r"\(the template's \[.*\] became \[.*'▁Red\.'\] at token \d+\): a turn boundary falls inside one of its "
        "tokens, or the processor rewrites the supervised text"
    )
    with pytest.raises(RowError, match=refusal):
        collate([{"messages": [user, answer], "images": [red, red]}])


def test_paligemma_is_refused_with_what_to_do(tmp_path):
    """PaliGemma has no chat template and attends bidirectionally over the prefix its processor marks with
    `token_type_ids`; on the conversation path every token would be prefix, so the answer would see itself. The
    trainer refuses it when it starts, with the fix, and so does a collator given a chat template for it."""
    from vlsft.collator import training_collator
    from vlsft.testing.tiny_generic_gemma3n_idefics2 import IDEFICS2_TEMPLATE, build_tiny_paligemma

    model, processor = build_tiny_paligemma()
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    fix = (
        r"PaliGemmaProcessor: PaliGemma / PaliGemma 2 is a prefix-LM .* "
        r"`processor\(images=..., text=prefix, suffix=answer\)`"
    )
    with pytest.raises(ValueError, match=fix):
        VLSFTTrainer(model, args=args, processing_class=processor,
                     train_dataset=Dataset.from_list(rows_of_different_lengths()[:2]))
    with pytest.raises(ValueError, match=fix):
        training_collator(processor, VLSFTConfig(output_dir=str(tmp_path), chat_template_path=None))
    with pytest.raises(ValueError, match=fix):
        VisionChatCollator(processor, IDEFICS2_TEMPLATE)


@pytest.mark.parametrize(
    "family, tokens",
    [("gemma3n", {"<start_of_image>", "<image_soft_token>", "<end_of_image>", "<start_of_audio>", "<end_of_audio>"}),
     ("idefics2", {"<image>", "<fake_token_around_image>"})],
)
def test_every_media_token_is_never_supervised(family, tokens):
    """The media markers the processor writes around an image (Gemma 3n's tokenizer names its end-of-image and audio
    markers, Idefics2's processor its `<fake_token_around_image>`) are vision tokens: never supervised."""
    _, processor = tiny(family)
    assert tokens <= set(VisionChatCollator(processor, processor.chat_template).family.vision_tokens)


def test_idefics2_with_the_checkpoints_image_splitting_keeps_exact_masks():
    """With the checkpoint's settings (each image split into 4 crops plus the whole, 64 tokens each: 5 runs between
    `<fake_token_around_image>` markers, merged where images are adjacent), the masks are still the rule's and the
    tokens and pixels the processor's, on every test conversation its template renders."""
    from trl.data_utils import prepare_multimodal_messages

    from tests.conftest import _shapes
    from tests.test_families import supervised_texts
    from tests.test_generic_families import rule_texts
    from vlsft.generic_masks import as_content_items
    from vlsft.testing.tiny_generic_gemma3n_idefics2 import build_tiny_idefics2

    _, processor = build_tiny_idefics2()
    processor.image_processor.do_image_splitting, processor.image_seq_len = True, 64
    collate = VisionChatCollator(processor, processor.chat_template)
    for name, (row, _) in _shapes().items():
        if name in NOT_FOR_PROCESSOR or name in TEMPLATE_REFUSES["idefics2"]:  # see tests/test_generic_families.py
            continue
        batch = collate([row])
        conversation = prepare_multimodal_messages(row["messages"], images=row["images"])
        texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
        assert texts == rule_texts(processor, as_content_items(conversation), row.get("tools")), name
        reference = processor.apply_chat_template(
            [conversation], tools=row.get("tools"), tokenize=True, return_dict=True, return_tensors="pt"
        )
        for key, value in reference.items():
            assert torch.equal(batch[key], value), (name, key)
        if name == "one_image_one_turn":  # the image is 5 runs of 64 tokens
            assert int((batch["input_ids"] == processor.image_token_id).sum()) == 5 * 64


def test_a_tokenizer_marking_each_string_start_keeps_exact_masks_on_multi_turn_rows():
    """A Llama/Mistral SentencePiece tokenizer marks the start of every string it tokenizes with '▁': the row cut at
    its turns and tokenized piece by piece then differs from the processor's tokens of the whole text by a '▁' at
    each unsupervised piece after the first (here on LLaVA-1.5's processor, which reports its expansion). Such rows
    used to be refused as if a turn boundary fell inside a token; they train on the processor's tokens, with the
    rule's masks."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    from tests.test_families import supervised_texts
    from tests.test_generic_families import rule_texts
    from vlsft.testing.tiny_tokenizers import train_mistral_tokenizer

    template = (
        "{% for message in messages %}{{ 'USER: ' if message['role'] == 'user' else 'ASSISTANT: ' }}"
        "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}"
        "{% endif %}{% endfor %}{{ '</s>' if message['role'] == 'assistant' else ' ' }}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )  # LLaVA-1.5's format
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=train_mistral_tokenizer(), patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=template,
    )
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "text", "text": "Shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
    ]
    batch = VisionChatCollator(processor, template)([{"messages": messages, "images": [_red()]}])
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == rule_texts(
        processor, messages
    ) == [" Red.</s>", " A square.</s>"]
    conversation = copy.deepcopy(messages)
    conversation[0]["content"][0]["image"] = _red()
    reference = processor.apply_chat_template([conversation], tokenize=True, return_dict=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])


def _red():
    from PIL import Image

    return Image.new("RGB", (32, 32), (255, 0, 0))
