"""GLM-OCR and the other OCR families on the generic exact path (`vlsft.testing.tiny_generic_ocr`): what each family
needs beyond the parametrized tests of `tests/test_generic_families.py`."""

from __future__ import annotations

import pytest

from tests.conftest import IMAGE, assistant, image, user
from tests.test_families import supervised_texts
from tests.test_generic_families import tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator


@pytest.mark.parametrize("family", ["glm_ocr", "minicpm_ocr"])
def test_videos_are_refused_by_row(family):
    """These processors take videos; the generic path does not build them: a video item fails by name, and so does a
    `videos` column, never training on a placeholder with no features behind it."""
    _, processor = tiny(family)
    collate = VisionChatCollator(processor, processor.chat_template)
    name = type(processor).__name__
    row = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                        assistant("A dot.")], "images": []}
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {name} \(generic path\)"):
        collate([row])
    with pytest.raises(RowError, match="not trained on videos"):
        collate([{"messages": [user("What?"), assistant("A dot.")], "images": [], "videos": ["clip.mp4"]}])


def test_glm_ocr_turns_end_with_the_stop_token_the_template_writes_next():
    """GLM-OCR's template (GLM-4.6V's) writes no end-of-turn marker: each answer is supervised with its empty
    `<think></think>` block (what the model generates after the prompt) and through `<|user|>`, the token that
    stops generation, never with the next user's text."""
    _, processor = tiny("glm_ocr")
    rows = [{"messages": [user(IMAGE, "Text Recognition:"), assistant("Red."), user("Again?"), assistant("Blue.")],
             "images": [image()]}]
    batch = VisionChatCollator(processor, processor.chat_template)(rows)
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == ["\n<think></think>\nRed.<|user|>", "\n<think></think>\nBlue.<|user|>"]


def test_qianfan_ocr_images_expand_from_the_placeholder_its_template_writes():
    """Qianfan-OCR's template writes `<image>` (the processor's `image_placeholder_token`, plain text), which the
    processor replaces by `<img>` + 4 `<IMG_CONTEXT>` per tile + `</img>`; its `image_token` is `<IMG_CONTEXT>`, which
    no template writes. The generic path counts and expands the placeholder the template writes: a wide image (2 tiles
    and a thumbnail) gives the processor's 12 context tokens, none of them supervised."""
    _, processor = tiny("qianfan_ocr")
    collate = VisionChatCollator(processor, processor.chat_template)
    assert collate.family.image_token == "<image>"
    rows = [{"messages": [user(IMAGE, "Text Recognition:"), assistant("Red.")], "images": [image(size=(64, 32))]}]
    batch = collate(rows)
    ids = batch["input_ids"][0]
    context = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert int((ids == context).sum()) == 3 * 4 and batch["pixel_values"].shape[0] == 3
    assert supervised_texts(processor.tokenizer, ids, batch["labels"][0]) == ["Red.<|im_end|>"]
    reference = processor.apply_chat_template(
        [[{"role": "user", "content": [{"type": "image", "image": image(size=(64, 32))},
                                       {"type": "text", "text": "Text Recognition:"}]},
          {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]],
        tokenize=True, return_dict=True, return_tensors="pt",
    )
    assert ids.tolist() == reference["input_ids"][0].tolist()


def test_deepseek_ocr2_plain_format_supervises_the_answer_and_its_stop_token():
    """DeepSeek-OCR-2's plain prompt format has no roles and no generation prompt: the answer starts right after the
    prompt and ends with `<｜end▁of▁sentence｜>`, which is supervised (the model learns to stop); the image is the
    processor's 257 `<image>` tokens (256 for the 1024 px view and the view separator), none supervised."""
    _, processor = tiny("deepseek_ocr2")
    rows = [{"messages": [user(IMAGE, "Free OCR."), assistant("Red."), user("Again?"), assistant("Blue.")],
             "images": [image()]}]
    batch = VisionChatCollator(processor, processor.chat_template)(rows)
    ids = batch["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 257
    texts = supervised_texts(processor.tokenizer, ids, batch["labels"][0])
    assert texts == ["Red.<｜end▁of▁sentence｜>", "Blue.<｜end▁of▁sentence｜>"]
    assert processor.tokenizer.decode(ids[:1]) + "<image>\n" in processor.apply_chat_template(
        rows[0]["messages"], tokenize=False)


def test_unlimited_ocr_tiled_images_collate_as_the_processor_and_train():
    """Unlimited-OCR cuts a large image into 64 px tiles (each row of features ended by a newline feature) besides
    its 128 px global view, and returns the tile grid as a list the model reads (`patches_grid`): a batch mixing a
    tiled image with an untiled one gives the processor's tokens and tiles, and the model takes it whole."""
    model, processor = tiny("unlimited_ocr")
    collate = VisionChatCollator(processor, processor.chat_template)
    wide, small = image(size=(256, 64)), image(size=(32, 32))
    rows = [{"messages": [user(IMAGE, "document parsing."), assistant("Red.")], "images": [wide]},
            {"messages": [user(IMAGE, "document parsing."), assistant("Blue.")], "images": [small]}]
    batch = collate(rows)
    assert batch["num_local_patches"][0] > 0 and batch["num_local_patches"][1] == 0
    assert batch["patches_grid"] == processor.image_processor([wide, small])["patches_grid"]
    for row, index in ((rows[0], 0), (rows[1], 1)):
        reference = processor(images=row["images"], text=[processor.apply_chat_template(row["messages"], tokenize=False)])
        assert batch["input_ids"][index, : len(reference["input_ids"][0])].tolist() == reference["input_ids"][0]
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == ["Red.<｜end▁of▁sentence｜>"]
    assert model(**{k: v for k, v in batch.items()}).loss.isfinite()


def test_glm_ocr_rows_whose_earlier_reasoning_the_template_drops_are_refused_naming_the_message():
    """GLM-OCR's template (GLM-4.6V's) renders an assistant turn's reasoning only after the last user message: a row
    with reasoning in an earlier turn has no exact mask and is refused naming it; reasoning in the last turn trains."""
    _, processor = tiny("glm_ocr")
    collate = VisionChatCollator(processor, processor.chat_template)
    earlier = {**assistant("Red."), "reasoning_content": "It is red."}
    row = {"messages": [user(IMAGE, "Colour?"), earlier, user("Again?"), assistant("Blue.")], "images": [image()]}
    with pytest.raises(RowError, match=r"batch row 0: message 1 \(assistant\): its rendering changes"):
        collate([row])
    last = {"messages": [user(IMAGE, "Colour?"), earlier], "images": [image()]}
    batch = collate([last])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == ["\n<think>It is red.</think>\nRed.<|user|>"]
