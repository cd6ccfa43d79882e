"""Every `Family` record in `vlsft.families.FAMILIES` is complete and agrees with the family's real classes.

The behaviour of each family (masks, processor parity, loss, recipes) is tested in test_families*.py on a sample of
the table; this file checks every record, so a new or edited entry cannot name a template file that does not ship,
a token its tokenizer lacks, a processor output its processor does not return, or model parts its model does not
have. The models are the tiny builders of `vlsft.testing.tiny_families`: every family must have one.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import pytest
from torch import nn

from vlsft.families import FAMILIES, FEATURES, family_of_model, family_of_processor
from vlsft.model_parts import component_of
from vlsft.templates import detect_family, has_generation_markers, stock_template, training_template
from vlsft.testing.tiny_families import FAMILY_BUILDERS, build_tiny

NAMES = list(FAMILIES)


@lru_cache(maxsize=1)  # one tiny model at a time: the parametrized tests run family by family
def tiny(family: str):
    return build_tiny(family)


def test_the_table_is_keyed_by_family_name_and_every_family_has_a_tiny_builder():
    assert all(name == family.name for name, family in FAMILIES.items())
    assert set(FAMILIES) <= set(FAMILY_BUILDERS)
    # The builders beyond the table are other architectures of a family's templates (Qwen3.5's MoE).
    assert set(FAMILY_BUILDERS) - set(FAMILIES) == {"qwen3_5_moe"}


@pytest.mark.parametrize("family", NAMES)
def test_the_record_is_consistent(family):
    spec = FAMILIES[family]
    assert spec.display_name and spec.model_types and spec.processor_class
    assert set(spec.unsupported) <= set(FEATURES)
    assert spec.image_token in spec.vision_tokens  # an image placeholder is never supervised
    assert spec.end_of_turn not in spec.vision_tokens  # the end of a turn always is
    assert spec.packed_positions in (None, "mrope", "1d")
    assert not (spec.video and "video" in spec.unsupported_media)
    if spec.reasoning_markers is not None:
        assert len(spec.reasoning_markers) == 2
    if spec.reasoning_opening is not None:
        assert spec.reasoning_markers is not None and spec.reasoning_opening.startswith(spec.reasoning_markers[0])
    parts = spec.parts
    assert parts.vision_tower and parts.mergers and parts.decoder_layers
    re.compile(parts.vision_lora_targets)


@pytest.mark.parametrize("family", NAMES)
def test_the_templates_ship_and_are_recognised(family):
    spec = FAMILIES[family]
    assert resources.files("trl").joinpath("chat_templates", f"{spec.stock_template}.jinja").is_file()
    assert not has_generation_markers(stock_template(family))
    training = training_template(family)
    if spec.training_template is None:  # the stock template itself, masked by the incremental-rendering rule
        assert training == stock_template(family)
    else:
        assert resources.files("vlsft").joinpath("templates", spec.training_template).is_file()
        assert has_generation_markers(training)
    # Recognised as this family, or as the first family of the table sharing its stock template (Qwen3-VL-MoE trains
    # as Qwen3-VL): either way the same template to train with.
    for template in (stock_template(family), training):
        found = detect_family(template)
        assert found is not None and training_template(found) == training


def test_only_templates_the_rule_cannot_mask_ship_as_marked_copies():
    """A marked copy ships only where the stock template rewrites history or cannot express what training needs:
    the Qwen3.5-generation and Gemma 4 revisions with reasoning or inlined tool responses. Each file is used."""
    folder = resources.files("vlsft").joinpath("templates")
    shipped = {path.name for path in folder.iterdir() if path.name.endswith(".jinja")}
    used = {spec.training_template for spec in FAMILIES.values() if spec.training_template is not None}
    assert shipped == used
    for name in ("qwen3_vl", "qwen2_5_vl", "gemma3", "idefics3", "smolvlm", "llava_next", "gemma4_v2"):
        assert FAMILIES[name].training_template is None, name


@pytest.mark.parametrize("family", NAMES)
def test_the_record_matches_the_family_processor(family):
    spec = FAMILIES[family]
    _, processor = tiny(family)
    assert type(processor).__name__ == spec.processor_class
    assert FAMILIES[family_of_processor(processor)].processor_class == spec.processor_class
    tokenizer = processor.tokenizer
    tokens = [*spec.vision_tokens, spec.end_of_turn, *(spec.reasoning_markers or ())]
    missing = [t for t in tokens if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    assert not missing, f"{family}: not single tokens of the family's tokenizer: {missing}"
    inputs = processor.model_input_names
    if spec.image_map_key is not None:
        assert spec.image_map_key in inputs
    if spec.video:
        assert "pixel_values_videos" in inputs and processor.video_processor is not None
    elif "pixel_values_videos" in inputs:
        # The processor takes videos that vlsft does not collate: a row with one must be refused by name.
        assert "video" in spec.unsupported_media


@pytest.mark.parametrize("family", NAMES)
def test_the_model_parts_are_the_family_model_parts(family):
    spec = FAMILIES[family]
    model, _ = tiny(family)
    assert model.config.model_type in spec.model_types
    assert FAMILIES[family_of_model(model)].parts == spec.parts
    parts = spec.parts
    parameters = [name for name, _ in model.named_parameters()]
    named = parameters + [name for name, _ in model.named_modules()]
    assert any(name.startswith(f"model.{parts.vision_tower}.") for name in parameters), parts.vision_tower
    for merger in parts.mergers:
        found = [name for name in parameters if name == f"model.{merger}" or name.startswith(f"model.{merger}.")]
        assert found, f"{family}: no parameter of the merger {merger}"
        assert {component_of(name) for name in found} == {"merger"}
    assert any(name.startswith(f"model.{parts.decoder_layers}.0.") for name in named), parts.decoder_layers
    vision_linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and re.fullmatch(rf".*{re.escape(parts.vision_tower)}\.{parts.vision_lora_targets}", name)
    ]
    assert vision_linears, f"{family}: `vision_lora_targets` matches no Linear layer of the vision tower"
    assert {component_of(name) for name in vision_linears} == {"vision_tower"}
