"""Packing on the generic exact path (`vlsft.packing.generic_models`): models without a family record whose language
model keeps packed rows apart pack (InternVL's Qwen2 / Qwen3, Mistral 3's Mistral, Aya Vision's Cohere2 with its
sliding-window layers, on 1D positions per row; GLM-4.1V on 3D rope positions from its own `get_rope_index` per row):
no row's logits change when another row changes (bit for bit), packed rows' losses and gradients equal padded rows',
and one packed SGD step equals the padded step. Models whose rows cannot be kept apart are refused, naming the reason
(LFM2-VL's short convolutions; 3D rope or a language model type not proven)."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch
from PIL import Image
from transformers import LlavaConfig

from tests.test_generic_families import make_trainer, tiny
from tests.test_packing import assert_same_sgd_step, family_rows, forward, per_row_losses_and_grads, spans
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collator import VisionChatCollator
from vlsft.model_parts import VISION_TOWER, component_of
from vlsft.packing import check_family_packs, check_packing_support
from vlsft.packing.attention import PACKED_SDPA, use_packed_attention
from vlsft.packing.collator import PackedCollator
from vlsft.packing.generic_models import generic_packing_refusal
from vlsft.testing.tiny_generic import build_tiny_internvl

# InternVL with Qwen2 (`internvl`) and with Qwen3 (most InternVL3.5 checkpoints), Mistral 3, Aya Vision, GLM-4.1V;
# their position schemes.
SCHEMES = {"internvl": "1d", "internvl_qwen3": "1d", "mistral3": "1d", "aya_vision": "1d", "glm4v": "mrope"}
# LightOnOCR (Qwen3) and FastVLM (Qwen2): 1D positions.
SCHEMES |= {"lighton_ocr": "1d", "fast_vlm": "1d"}
# VideoLLaMA3 (Qwen2): 1D positions.
SCHEMES |= {"video_llama_3": "1d"}
# Qianfan-OCR (Qwen3): 1D positions.
SCHEMES |= {"qianfan_ocr": "1d"}
# GLM-GA: GLM-4.6V's model (GLM-4.1V's text model and `get_rope_index`) behind its own image processor.
SCHEMES |= {"glmga": "mrope"}
PACKABLE = list(SCHEMES)
# What each packable family's text model runs as packed (`use_packed_attention`): Aya Vision's Cohere2 has sliding-
# window layers, so it keeps sdpa with transformers' packed (block-diagonal, windowed) mask.
PACKED_ATTENTION = {family: PACKED_SDPA for family in PACKABLE} | {"aya_vision": "sdpa"}


@lru_cache
def generic_model(family: str):
    if family == "internvl_qwen3":
        return build_tiny_internvl(seed=0, text_model_type="qwen3")
    return tiny(family)


def packed_model_and_collator(family: str, attention: str):
    """A copy of `family`'s tiny model set up to run packs with `attention` ("packed": as the trainer sets it up),
    and its packed collator (generic path: the processor's stock template)."""
    model, processor = generic_model(family)
    model = copy.deepcopy(model).eval()
    if attention == "packed":
        use_packed_attention(model)
        assert model.config.get_text_config()._attn_implementation == PACKED_ATTENTION[family]
    else:
        model.set_attn_implementation(attention)
        use_packed_attention(model)  # the row boundaries; eager keeps transformers' block-diagonal mask
    rows_collator = VisionChatCollator(processor, processor.chat_template)
    assert rows_collator.generic_family
    assert check_packing_support(model, rows_collator) == SCHEMES[family]
    return model, PackedCollator(rows_collator, model=model)


@pytest.mark.parametrize("attention", ["packed", "eager"])
@pytest.mark.parametrize("family", PACKABLE)
def test_changing_one_packed_row_leaves_every_other_row_bit_for_bit_unchanged(family, attention):
    model, collator = packed_model_and_collator(family, attention)
    base = collator(family_rows())
    other_image = collator(family_rows(second_image=(0, 0, 255)))  # row 1's picture, same size
    padded_batch = collator.rows_collator(family_rows())
    lengths = [int(n) for n in padded_batch["attention_mask"].sum(-1)]
    assert base["input_ids"].shape == (1, sum(lengths))
    assert base["position_ids"].shape == ((1, sum(lengths)) if SCHEMES[family] == "1d" else (4, 1, sum(lengths)))
    row1 = list(spans(lengths))[1]
    assert not torch.equal(other_image["pixel_values"], base["pixel_values"])
    # Row 1's text tokens reversed in place (its image tokens stay where they are): other tokens, same length.
    other_tokens = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in base.items()}
    ids = other_tokens["input_ids"][0, row1]
    text = ~torch.isin(ids, torch.tensor(sorted(collator.rows_collator._vision_token_ids)))
    ids[text] = ids[text].flip(0)
    assert not torch.equal(ids, base["input_ids"][0, row1])

    with torch.no_grad():
        reference = forward(model, base)
        changed = [forward(model, other_image), forward(model, other_tokens)]
        padded = forward(model, padded_batch)
    for logits in changed:
        assert not torch.equal(logits[0, row1], reference[0, row1])  # the change is real
        for index, span in enumerate(spans(lengths)):
            if index != 1:
                assert torch.equal(logits[0, span], reference[0, span]), f"row {index} changed with row 1"
    for index, span in enumerate(spans(lengths)):  # and each row is what it is in a padded batch
        torch.testing.assert_close(reference[0, span], padded[index, : lengths[index]], rtol=1e-5, atol=1e-5)


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def textured_rows():
    """`family_rows` with pictures of noise: with solid colours every patch is alike, the vision towers' query and key
    projections get an analytically zero gradient (attention over equal values returns that value whatever its
    weights), and what is compared would be float noise."""
    rows = family_rows()
    for seed, row in enumerate(rows):
        row["images"] = [noise_image(seed, picture.size) for picture in row["images"]]
    return rows


@pytest.mark.parametrize("family", PACKABLE)
def test_packed_rows_losses_and_gradients_equal_padded_rows(family):
    model, collator = packed_model_and_collator(family, "packed")
    rows = textured_rows()
    padded = collator.rows_collator(rows)
    packed = collator(rows)
    lengths = padded["attention_mask"].sum(-1).tolist()
    assert "attention_mask" not in packed
    text_positions = packed["position_ids"][0].flatten().tolist()  # 1D (mrope: the first row), restarting per row
    assert text_positions == [p for n in lengths for p in range(n)]
    if SCHEMES[family] == "mrope":  # each row's 3D positions are the model's own for the row alone
        for index, (row, span) in enumerate(zip(rows, spans(lengths))):
            alone = collator.rows_collator([row])
            expected = model.model.compute_3d_position_ids(
                input_ids=alone["input_ids"], inputs_embeds=None, image_grid_thw=alone.get("image_grid_thw"),
                attention_mask=alone["attention_mask"], mm_token_type_ids=alone["mm_token_type_ids"],
            )
            if expected is None:  # text only: the model's default positions
                expected = torch.arange(lengths[index]).view(1, 1, -1).expand(3, 1, -1)
            assert torch.equal(packed["position_ids"][1:, :, span], expected), f"row {index}"
    torch.testing.assert_close(packed["pixel_values"], padded["pixel_values"], rtol=0, atol=0)  # images in row order
    padded_losses, _, padded_grads = per_row_losses_and_grads(model, padded, lengths, packed_layout=False)
    packed_losses, _, packed_grads = per_row_losses_and_grads(model, packed, lengths, packed_layout=True)
    torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-5, atol=0)
    assert padded_grads.keys() == packed_grads.keys()
    assert any(component_of(name) == VISION_TOWER and grad.abs().sum() > 0 for name, grad in packed_grads.items())
    # Each gradient to 1e-5 of its own scale, and never finer than 1e-9 of the largest: a key projection's bias has an
    # analytically zero gradient (adding q.b to every score of a query changes no softmax), float noise of ~1e-10.
    floor = 1e-9 * max(float(grad.abs().max()) for grad in padded_grads.values())
    for name, grad in padded_grads.items():
        atol = max(1e-5 * float(grad.abs().max()), floor)
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("family", ["mistral3", "aya_vision"])
def test_a_sliding_window_shorter_than_the_rows_is_kept_inside_each_packed_row(family):
    """Mistral (one window for every layer, from `sliding_window` alone) and Cohere2 (windowed layers) with a window
    of 6 tokens: packed rows run sdpa under transformers' packed windowed mask (not the row-sliced sdpa, which has no
    window), and each row's logits equal the padded batch's."""
    model, processor = generic_model(family)
    config = copy.deepcopy(model.config)
    config.get_text_config().sliding_window = 6
    windowed = type(model)(config).eval()
    windowed.load_state_dict(model.state_dict())
    use_packed_attention(windowed)
    assert windowed.config.get_text_config()._attn_implementation == "sdpa"
    collator = PackedCollator(VisionChatCollator(processor, processor.chat_template), model=windowed)
    padded_batch = collator.rows_collator(family_rows())
    lengths = [int(n) for n in padded_batch["attention_mask"].sum(-1)]
    assert min(lengths) > 2 * 6
    with torch.no_grad():
        packed, padded = forward(windowed, collator(family_rows())), forward(windowed, padded_batch)
        unwindowed = forward(model, padded_batch)
    assert not torch.allclose(padded[0, : lengths[0]], unwindowed[0, : lengths[0]], atol=1e-3)  # the window is real
    for index, span in enumerate(spans(lengths)):
        torch.testing.assert_close(packed[0, span], padded[index, : lengths[index]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["internvl", "mistral3", "aya_vision", "glm4v"])
def test_one_packed_sgd_step_equals_the_padded_step(family, tmp_path):
    """Through `VLSFTTrainer` (the model passed as an object: its language model is checked before any row is): two
    rows of different lengths in one pack train the same SGD step as the padded batch of the two."""
    start = {n: p.detach().clone() for n, p in tiny(family)[0].named_parameters()}
    step = dict(learning_rate=1.0, max_grad_norm=0.0, lr_scheduler_type="constant", data_seed=0)
    padded = make_trainer(family, tmp_path / "padded", **step)
    packed = make_trainer(
        family, tmp_path / "packed", per_device_train_batch_size=1, packing=True, max_length=4096, **step
    )
    assert packed.train_dataset.plan == [[0, 1]] and isinstance(packed.data_collator, PackedCollator)
    padded.train()
    packed.train()
    assert packed.state.log_history[0]["num_supervised_tokens"] == padded.state.log_history[0]["num_supervised_tokens"]
    assert_same_sgd_step(start, padded, packed)


REFUSED = {
    # LFM2's short-convolution layers carry the last tokens of one row into the next.
    "lfm2_vl": r"packing is not supported for this Lfm2VlProcessor \(generic path\) model: its language model "
               r"\('lfm2'\) has 'conv' layers, which carry a state along the sequence",
    # MiniCPM-V 4.7's Qwen3.5 GatedDeltaNet layers carry a recurrent state from one row into the next.
    "minicpmv4_7": r"its language model \('qwen3_5_text'\) has 'linear_attention' layers",
}


@pytest.mark.parametrize("family", REFUSED)
def test_models_whose_packed_rows_cannot_be_kept_apart_are_refused_naming_the_reason(family, tmp_path):
    model, processor = tiny(family)
    rows_collator = VisionChatCollator(processor, processor.chat_template)
    check_family_packs(rows_collator.family)  # from the processor alone: the model decides
    with pytest.raises(ValueError, match=REFUSED[family]):
        check_family_packs(rows_collator.family, model.config)
    with pytest.raises(ValueError, match=REFUSED[family]):
        check_packing_support(model, rows_collator)
    with pytest.raises(ValueError, match=REFUSED[family]):
        PackedCollator(rows_collator, model=model)
    with pytest.raises(ValueError, match="need the model, whose language model decides"):
        PackedCollator(rows_collator)
    # The trainer refuses from the model it is given, before any row is checked (the dataset's rows are not rows).
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, padding_free=True)
    with pytest.raises(ValueError, match=REFUSED[family]):
        VLSFTTrainer(model, args=args, train_dataset=[{"not": "a row"}], processing_class=processor)


def test_a_language_model_not_proven_or_with_3d_rope_elsewhere_is_refused_by_its_reason():
    refusal = generic_packing_refusal(LlavaConfig(text_config={"model_type": "llama"}))
    assert refusal is not None and "language model type 'llama' is not among those proven" in refusal
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    refusal = generic_packing_refusal(LlavaConfig(text_config={"model_type": "qwen2", "rope_parameters": rope}))
    assert refusal is not None and "('qwen2') takes 3D rope positions (`mrope_section`)" in refusal
    assert generic_packing_refusal(generic_model("internvl_qwen3")[0].config) is None


@pytest.mark.parametrize("family", ["mistral3", "lfm2_vl"])
def test_the_dry_run_decides_generic_packing_from_the_model_config(family, tmp_path, monkeypatch, capsys):
    """A recipe naming a model without a record (registered here as a local model, built without weights): the dry
    run packs Mistral 3 and refuses LFM2-VL with the reason, from the model's config, before any data loads."""
    from tests.test_recipe import tiny_recipe, write_recipe
    from vlsft.cli.train import main
    from vlsft.recipes.registry import LOCAL_MODELS
    from vlsft.testing import tiny_generic_families

    monkeypatch.setitem(LOCAL_MODELS, f"tiny-{family}", tiny_generic_families.GENERIC_BUILDERS[family])
    training = {"packing": True, "max_length": 512}
    raw = tiny_recipe(tmp_path / "no-such-data.jsonl", tmp_path / "out", model={"name_or_path": f"tiny-{family}"},
                      training=training)
    path = write_recipe(tmp_path / "recipe.yaml", raw)
    packs = family == "mistral3"
    assert main(["--config", str(path), "--dry-run"]) == (0 if packs else 2)
    out, err = capsys.readouterr()
    if packs:
        assert "packing    rows best-fit decreasing into packs of 512 tokens (no family record" in out
        return
    assert "invalid recipe: `training`: packing is not supported for this Lfm2VlProcessor (generic path) model" in err
    assert "'conv' layers" in err and "Set `packing: false`" in err and "Traceback" not in err
