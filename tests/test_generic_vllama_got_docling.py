"""Granite-Docling, VideoLLaMA3, GOT-OCR 2.0 and PP-Chart2Table, beyond the parametrized tests of
tests/test_generic_families.py:
- Granite-Docling (`granite_docling`) takes the generic path, not the Idefics3 record its processor descends from;
- Granite-Docling 258M (an Idefics3 model and processor with Granite's template) keeps the Idefics3 record's image
  path, but its masks are the rule's and its stop token is the template's `<|end_of_text|>`, not the record's
  `<end_of_utterance>` (so `train_on_eos=False` leaves it out);
- Granite-Docling's fine connector route (4 times the image tokens per tile) collates as its processor and trains;
- VideoLLaMA3's videos are refused by row with the reason;
- GOT-OCR 2.0 and PP-Chart2Table, whose processors build their prompt themselves, are refused at start with what to
  do instead.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import (
    GraniteDoclingForConditionalGeneration,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
)

from tests.test_families import rows_of_different_lengths, supervised_texts
from tests.test_generic_families import as_the_template_reads, rule_texts, tiny
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator, training_collator
from vlsft.testing.tiny_build import instantiate
from vlsft.testing.tiny_generic import _byte_level_tokenizer
from vlsft.testing.tiny_generic_vllama_got_docling import (
    GRANITE_DOCLING_TEMPLATE,
    build_tiny_got_ocr2,
    build_tiny_pp_chart2table,
)
from vlsft.testing.tiny_idefics_llava import _idefics3_like_config


def _user(*items):
    return {"role": "user", "content": [*items]}


def _assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _docling_row():
    messages = [
        _user({"type": "image"}, {"type": "text", "text": "Convert this page to docling."}),
        _assistant("<doctag><text>A red page.</text></doctag>"),
        _user({"type": "text", "text": "Again, please."}),
        _assistant("Done."),
    ]
    return {"messages": messages, "images": [Image.new("RGB", (64, 40), "red")]}


def test_granite_docling_takes_the_generic_path_with_its_templates_stop_token():
    _, processor = tiny("granite_docling")
    collate = VisionChatCollator(processor, processor.chat_template)
    assert collate.generic_family and collate.generic_masks
    assert collate.family.end_of_turn == "<|end_of_text|>"


def build_tiny_granite_docling_258m(seed: int = 0):
    """Granite-Docling 258M as its checkpoint is: `Idefics3ForConditionalGeneration` + `Idefics3Processor` (Idefics3
    model type, so vlsft's Idefics3 record), with Granite's turn tokens and the Granite-Docling template."""
    named = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
             "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}
    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 3) for j in range(1, 3)]
    tokenizer = _byte_level_tokenizer(
        ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|pad|>", *named.values(), *tiles], named,
        eos_token="<|end_of_text|>", pad_token="<|pad|>",
    )
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}),
        tokenizer=tokenizer, image_seq_len=4, chat_template=GRANITE_DOCLING_TEMPLATE,
    )
    return instantiate(Idefics3ForConditionalGeneration, _idefics3_like_config(Idefics3Config, tokenizer, 64),
                       processor, seed)


def test_granite_docling_258m_on_the_idefics3_record_supervises_the_rule_and_its_own_stop_token(tmp_path):
    """The 258M checkpoint is an Idefics3 model with Idefics3's processor, so vlsft uses the Idefics3 record (its
    image path), but its template is Granite's: the masks are the rule's, the inputs the processor's, and the stop
    token every per-token setting acts on is `<|end_of_text|>`. Before the fix the record's `<end_of_utterance>` was
    kept, so `train_on_eos=False` still trained the stop token."""
    _, processor = build_tiny_granite_docling_258m()
    row = _docling_row()
    collate = VisionChatCollator(processor, processor.chat_template)
    assert collate.family.name == "idefics3" and collate.generic_masks
    assert collate.family.end_of_turn == "<|end_of_text|>"
    batch = collate([row])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    conversation = as_the_template_reads(processor, row)
    assert texts == rule_texts(processor, conversation)
    assert texts == ["<doctag><text>A red page.</text></doctag><|end_of_text|>", "Done.<|end_of_text|>"]
    reference = processor.apply_chat_template([conversation], tokenize=True, return_dict=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])
    without_stop = VisionChatCollator(processor, processor.chat_template, train_on_eos=False)([row])
    texts = supervised_texts(processor.tokenizer, without_stop["input_ids"][0], without_stop["labels"][0])
    assert texts == ["<doctag><text>A red page.</text></doctag>", "Done."]


def test_video_llama_3_videos_are_refused_by_row():
    """VideoLLaMA3's processor takes videos (frames compressed by similarity, each with a timestamp), the generic path
    collates images only: a video item or a `videos` column fails by row and names why."""
    _, processor = tiny("video_llama_3")
    collate = VisionChatCollator(processor, processor.chat_template)
    messages = [_user({"type": "video"}, {"type": "text", "text": "What happens?"}), _assistant("A dot moves.")]
    with pytest.raises(RowError, match=r"batch row 0: message 0 has a 'video' item: vlsft trains "
                                       r"VideoLlama3Processor \(generic path\)"):
        collate([{"messages": messages, "images": []}])
    text_only = [{"role": "user", "content": "What happens?"}, messages[1]]
    with pytest.raises(RowError, match=r"VideoLlama3Processor \(generic path\) is not trained on videos"):
        collate([{"messages": text_only, "images": [], "videos": ["clip.mp4"]}])


@pytest.mark.parametrize(
    "build, fix",
    [(build_tiny_got_ocr2, r"GotOcr2Processor: GOT-OCR 2.0's checkpoints ship no chat template"),
     (build_tiny_pp_chart2table, r"PPChart2TableProcessor: PP-Chart2Table is a single-task chart parser")],
)
def test_prompt_building_ocr_processors_are_refused_at_start_with_what_to_do(build, fix, tmp_path):
    """GOT-OCR 2.0's and PP-Chart2Table's processors write their model's prompt themselves: no chat template ships,
    and neither takes a chat batch (GOT-OCR 2.0's `apply_chat_template` fails on its own image layout;
    PP-Chart2Table's expands no placeholder). The trainer refuses them when it starts, naming why and what to do, and
    so does a collator given a chat template for them."""
    model, processor = build()
    fix += r".*vlsft does not train it; fine-tune it on the processor's own prompt followed by the answer"
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=fix):
        VLSFTTrainer(model, args=args, processing_class=processor,
                     train_dataset=Dataset.from_list(rows_of_different_lengths()[:2]))
    with pytest.raises(ValueError, match=fix):
        training_collator(processor, VLSFTConfig(output_dir=str(tmp_path), chat_template_path=None))
    with pytest.raises(ValueError, match=fix):
        VisionChatCollator(processor, GRANITE_DOCLING_TEMPLATE)


def test_got_ocr2_processor_cannot_take_a_chat_batch():
    """The evidence for the refusal: given a ChatML template of its own prompt format, GOT-OCR 2.0's processor still
    fails in `apply_chat_template`, which hands it a list of images per conversation."""
    _, processor = build_tiny_got_ocr2()
    template = ("{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\n' }}{%- for item in m['content'] -%}"
                "{%- if item['type'] == 'image' -%}{{ '<img><imgpad></img>\n' }}{%- else -%}{{ item['text'] }}"
                "{%- endif -%}{%- endfor -%}{{ '<|im_end|>' }}{%- endfor -%}")
    conversation = [_user({"type": "image", "image": Image.new("RGB", (64, 64))}, {"type": "text", "text": "OCR: "}),
                    _assistant("Text.")]
    with pytest.raises(ValueError, match="Nested images are only supported with `multi_page`"):
        processor.apply_chat_template(conversation, chat_template=template, tokenize=True, return_dict=True)


def test_granite_docling_fine_route_collates_as_its_processor_and_trains_the_fine_path():
    """With the processor's `fine_route` on, each tile is 4 times as many image tokens and the batch carries
    `tile_fine_mask`: the collated batch equals the processor's, and a model with the fine connector path trains it."""
    model, processor = tiny("granite_docling")
    processor = copy.deepcopy(processor)
    processor.image_processor.fine_route = True
    rows = rows_of_different_lengths()[:2]
    batch = VisionChatCollator(processor, processor.chat_template)(rows)
    reference = processor.apply_chat_template(
        [as_the_template_reads(processor, row) for row in rows], tokenize=True, return_dict=True,
        return_tensors="pt", padding=True,
    )
    assert "tile_fine_mask" in reference
    for key, value in reference.items():
        assert torch.equal(batch[key], value), key
    config = copy.deepcopy(model.config)
    config.vision_config.use_fine_route = True
    torch.manual_seed(0)
    fine_model = GraniteDoclingForConditionalGeneration(config)
    fine_model(**batch).loss.backward()
    fine_path = fine_model.model.vision_model.connector.fine
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fine_path.parameters())
    assert all(p.grad is None for p in fine_model.model.vision_model.connector.coarse.parameters())
