"""Ovis2, Molmo2, MiniCPM-V 4.6, LLaVA-NeXT-Video and Video-LLaVA on the generic exact path
(`vlsft.testing.tiny_generic_molmo_ovis_minicpm`, `vlsft.testing.tiny_generic_molmo_ovis_minicpm_llava`): what each
family needs of the generic code beyond the parametrized tests of `tests/test_generic_families.py`."""

from __future__ import annotations

import pytest

from tests.conftest import IMAGE, assistant, image, user
from tests.test_families import supervised_texts
from tests.test_generic_families import tiny
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import MERGER, VISION_TOWER, check_model_parts, component_of


def test_ovis2_plain_text_placeholder_its_replacement_tokens_are_the_image():
    """Ovis2's placeholder `<image>` is plain text (not a token of its vocabulary); the processor replaces it, in
    text, with `<IMG_START>`, the `<IMG_ATOM>`s and the indicators. Those are the image's tokens: never supervised,
    and a `max_length` that would cut them refuses the row instead of truncating an image the model then cannot
    fill."""
    _, processor = tiny("ovis2")
    assert processor.tokenizer.convert_tokens_to_ids("<image>") is None
    row = {"messages": [user(IMAGE, "Colour?"), assistant("Red.")], "images": [image()]}
    collate = VisionChatCollator(processor, processor.chat_template)
    ids = processor.tokenizer.convert_tokens_to_ids
    assert set(collate.image_feature_token_ids) >= {ids("<IMG_ATOM>"), ids("<IMG_START>"), ids("<IMG_END>")}
    batch = collate([row])
    atoms = (batch["input_ids"][0] == ids("<IMG_ATOM>")).nonzero().flatten()
    assert len(atoms) == 4 and (batch["labels"][0, atoms] == -100).all()
    cut = VisionChatCollator(processor, processor.chat_template, max_length=int(atoms[1]) + 1)
    with pytest.raises(RowError, match="cuts image tokens"):
        cut([row])


def test_ovis2_visual_embedding_table_is_the_projector():
    """Ovis2 maps the vision tower's probabilities over its visual vocabulary into the language model through
    `visual_embeddings_table`: the projector, found by name (frozen, given its learning rate, saved whole under
    LoRA as the other families' projectors)."""
    model, _ = tiny("ovis2")
    check_model_parts(model)
    assert component_of("model.visual_embeddings_table.weight") == MERGER


def test_molmo2_the_bos_its_processor_writes_before_each_row_is_in_the_row_unsupervised():
    """Molmo2's processor writes the checkpoint's BOS (`<|im_end|>`: its tokenizer has none) as text before each row,
    which its template does not write: the row starts with it, as the model sees it at inference, never supervised;
    the turn ends with the `<|im_end|>` the template writes before the next user turn (appended after a final turn)."""
    _, processor = tiny("molmo2")
    row = {"messages": [user(IMAGE, "Colour?"), assistant("Red.")], "images": [image()]}
    batch = VisionChatCollator(processor, processor.chat_template)([row])
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert int(batch["input_ids"][0, 0]) == end and int(batch["labels"][0, 0]) == -100
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == ["Red.<|im_end|>"]


@pytest.mark.parametrize("family", ["molmo2", "minicpmv4_6", "llava_next_video", "video_llava"])
def test_videos_are_refused_by_row(family):
    """Molmo2's, MiniCPM-V 4.6's, LLaVA-NeXT-Video's and Video-LLaVA's processors take videos (Molmo2: frames with
    timestamps; MiniCPM-V: frames with their slices; LLaVA-NeXT-Video: pooled frames; Video-LLaVA: a tower of their
    own); the generic path does not build them: a
    video item fails by name, and so does a `videos` column, never training on a placeholder with no features behind
    it."""
    _, processor = tiny(family)
    collate = VisionChatCollator(processor, processor.chat_template)
    name = type(processor).__name__
    row = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                        assistant("A dot.")], "images": []}
    with pytest.raises(RowError, match=rf"message 0 has a 'video' item: vlsft trains {name} \(generic path\)"):
        collate([row])
    with pytest.raises(RowError, match="not trained on videos"):
        collate([{"messages": [user("What?"), assistant("A dot.")], "images": [], "videos": ["clip.mp4"]}])


def test_video_llava_images_reach_the_model_under_the_name_its_processor_gives_them():
    """Video-LLaVA's image processor lists `pixel_values` as its output but returns `pixel_values_images` (its model
    takes both): on the generic path every image tensor the processor returns goes to the model, never dropped for a
    name it does not list (the images would silently not be seen). Its two towers are found by name."""
    model, processor = tiny("video_llava")
    assert "pixel_values_images" not in processor.model_input_names
    row = {"messages": [user(IMAGE, "Colour?"), assistant("Red.")], "images": [image()]}
    batch = VisionChatCollator(processor, processor.chat_template)([row])
    assert batch["pixel_values_images"].shape == (1, 3, 32, 32)
    check_model_parts(model)
    assert component_of("model.image_tower.vision_model.embeddings.patch_embedding.weight") == VISION_TOWER
    assert component_of("model.video_tower.vision_model.embeddings.patch_embedding.weight") == VISION_TOWER
