"""Image-text-to-text model types of transformers 5.23 that are not decoder-only chat models are refused when
`VLSFTTrainer` starts, before any row is validated, with the model type, the reason and what to do instead
(`vlsft.not_chat_models`). Each is the real model class built from its config class (`vlsft.testing.tiny_not_chat`),
with its real processor class where the processor decides, and with the Gemma processor and chat template it ships
with for T5Gemma 2 and DiffusionGemma (which, without the refusal, start training through vlsft's Gemma records).
"""

from __future__ import annotations

import pytest
import transformers
from datasets import Dataset
from PIL import Image
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.not_chat_models import NOT_CHAT_MODEL_TYPES
from vlsft.testing.tiny_not_chat import BUILDERS, build_tiny_not_chat

_ENCODER_DECODER = (
    r"an encoder-decoder \(`config.is_encoder_decoder`\): .* the answer is the decoder's target, not an assistant "
    r"turn .* Instead, fine-tune it as a sequence-to-sequence model: .* `Seq2SeqTrainer`"
)
_NO_TEMPLATE = (
    r"its processor \({processor}\) has no chat template and none is given, so there is no assistant turn to learn "
    r".* Instead, fine-tune it on \(image, text\) pairs with transformers' `Trainer` .* or, if the model does have a "
    r"chat format, give its template with `chat_template_path`"
)
_Q_FORMER = (
    r"its processor \({processor}\) also tokenizes the text for a Q-Former .* the image query would see what the "
    r"model must predict\. Instead, fine-tune it on \(image, instruction, answer\) rows with the instruction alone"
)
# What each model type is refused for (after "<model type>: vlsft trains the assistant turns of decoder-only chat
# models and cannot train this one: ").
REASONS = {
    "blip": _NO_TEMPLATE.format(processor="BlipProcessor"),
    "blip-2": _NO_TEMPLATE.format(processor="Blip2Processor"),
    "git": _NO_TEMPLATE.format(processor="GitProcessor"),
    "idefics": _NO_TEMPLATE.format(processor="IdeficsProcessor"),
    "kosmos-2": _NO_TEMPLATE.format(processor="Kosmos2Processor"),
    "kosmos-2.5": _NO_TEMPLATE.format(processor="Kosmos2_5Processor"),
    "fuyu": _NO_TEMPLATE.format(processor="FuyuProcessor"),
    "instructblip": _Q_FORMER.format(processor="InstructBlipProcessor"),
    "instructblipvideo": _Q_FORMER.format(processor="InstructBlipVideoProcessor"),
    "evolla": r"its processor \(EvollaProcessor\) reads no images or videos \(its inputs are `protein_tokenizer`, "
    r"`tokenizer`\)\. Instead, train it with a trainer for its own inputs",
    "florence2": _ENCODER_DECODER,
    "pix2struct": _ENCODER_DECODER,
    "pp_formulanet": _ENCODER_DECODER,
    "t5gemma2": _ENCODER_DECODER,
    "udop": _ENCODER_DECODER,
    "vision-encoder-decoder": _ENCODER_DECODER,
    "pi0": r"PI0 is a robot action model: .* it generates no text\. Instead, train it on \(observation, action\) data "
    r"with its own loss .* vlsft has no path for it",
    "diffusion_gemma": r"DiffusionGemma is a block-diffusion model: .* no left-to-right next-token loss to mask\. "
    r"Instead, train it with its own denoising objective; vlsft has no path for it",
}
# The types tested are those transformers 5.23 maps to an image-text-to-text class (ShieldGemma 2, a Gemma 3 chat model
# there, is tested on its own below); the table holds only the types no property decides.
assert set(REASONS) == set(BUILDERS) - {"shieldgemma2"}
assert set(BUILDERS) <= set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
assert set(NOT_CHAT_MODEL_TYPES) == {"pi0", "diffusion_gemma"}


def _rows() -> Dataset:
    """Rows that would validate for a chat model: the refusal must come first, whatever the rows."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "A square."}]}
    return Dataset.from_list([{"messages": [user, answer], "images": [Image.new("RGB", (32, 32), "red")]}] * 2)


def _start(model, processor, tmp_path, **args):
    return VLSFTTrainer(
        model, args=VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **args),
        processing_class=processor, train_dataset=_rows(),
    )


@pytest.mark.parametrize("model_type", sorted(REASONS))
def test_not_a_chat_model_is_refused_when_the_trainer_starts(model_type, tmp_path, monkeypatch):
    """Refused in the constructor, before any row is validated (validation would fail the test) and before a
    processor is downloaded for a model the config decides (those pass none)."""
    import vlsft.trainer

    def no_validation(*args, **kwargs):
        raise AssertionError("rows were validated before the model was refused")

    monkeypatch.setattr(vlsft.trainer, "validate_datasets", no_validation)
    model, processor = build_tiny_not_chat(model_type)
    refusal = (
        rf"^{model_type}: vlsft trains the assistant turns of decoder-only chat models and cannot train this one: "
    )
    with pytest.raises(ValueError, match=refusal + REASONS[model_type]):
        _start(model, processor, tmp_path)


def test_shieldgemma2_trains_as_gemma3_and_its_classifier_class_is_refused(tmp_path):
    """ShieldGemma 2 loaded with the image-text-to-text class is a Gemma 3 chat model (its processor renders the
    policy prompt with Gemma 3's chat template; the answer `Yes` / `No` is the model's turn): it is not refused. Its
    classifier class generates no text, and is refused by that property."""
    model, processor = build_tiny_not_chat("shieldgemma2")
    assert type(model).__name__ == "Gemma3ForConditionalGeneration" and model.config.model_type == "shieldgemma2"
    assert _start(model, processor, tmp_path).rendering_collator.family.name == "gemma3"

    classifier = transformers.ShieldGemma2ForImageClassification(model.config)
    refusal = (
        r"^shieldgemma2: .* ShieldGemma2ForImageClassification generates no text \(`can_generate\(\)` is False\): a "
        r"classifier, an action model or a model without its language-model head.* ShieldGemma 2 loaded with "
        r"`AutoModelForImageTextToText` .* does train"
    )
    with pytest.raises(ValueError, match=refusal):
        _start(classifier, processor, tmp_path)


def test_a_chat_template_given_for_a_model_without_one_is_not_refused_for_lacking_one(tmp_path):
    """A decoder-only model whose processor ships no template (Fuyu) is refused only for that: given a chat template
    (`chat_template_path`), the refusal does not apply (the run goes on to the generic path's own checks); an
    encoder-decoder is refused whatever template is given."""
    from vlsft.templates import stock_template

    template = tmp_path / "chat.jinja"
    template.write_text(stock_template("gemma3"))
    model, processor = build_tiny_not_chat("fuyu")
    with pytest.raises(ValueError) as error:
        _start(model, processor, tmp_path, chat_template_path=str(template))
    assert "cannot train this one" not in str(error.value)
    model, _ = build_tiny_not_chat("florence2")
    with pytest.raises(ValueError, match=r"^florence2: .*an encoder-decoder"):
        _start(model, processor, tmp_path, chat_template_path=str(template))


def test_a_model_directory_is_refused_by_its_config_at_dry_run_and_by_the_trainer(tmp_path):
    """A recipe's dry run (and run, before its datasets load) reads the model's config from its directory: T5Gemma 2,
    whose Gemma 3 processor would pass every processor check, is refused as an encoder-decoder. So is the directory
    given to `VLSFTTrainer` by name, from its config file alone (no weights are in it)."""
    from vlsft.recipes import plan
    from vlsft.recipes.loading import recipe_from_dict
    from vlsft.recipes.schema import RecipeError

    model, processor = build_tiny_not_chat("t5gemma2")
    model.config.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    recipe = recipe_from_dict({
        "model": {"name_or_path": str(tmp_path / "model")},
        "data": {"train": [{"path": "demo-shapes", "rows": 8}]},
        "training": {"output_dir": str(tmp_path / "out")},
    })
    encoder_decoder = r"t5gemma2: .* an encoder-decoder \(`config.is_encoder_decoder`\)"
    with pytest.raises(RecipeError, match=rf"`training`: {encoder_decoder}"):
        plan.describe_plan(recipe)
    with pytest.raises(ValueError, match=rf"^{encoder_decoder}"):
        _start(str(tmp_path / "model"), None, tmp_path)
