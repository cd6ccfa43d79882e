"""Every model type transformers 5.23 maps to an image-text-to-text class has a status in vlsft, backed by a test, and
the README's family table names it: trained (through a family record, another family's record, or the generic path),
refused by name with its reason (when the trainer starts, or for every row), or listed here as not proven with what
is missing. A model type a new transformers adds fails here until it gets one."""

from __future__ import annotations

from pathlib import Path

from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from vlsft.families import FAMILIES
from vlsft.testing.tiny_generic_families import GENERIC_BUILDERS
from vlsft.testing.tiny_not_chat import BUILDERS as NOT_CHAT_BUILDERS

ROOT = Path(__file__).resolve().parent.parent
IMAGE_TEXT_TO_TEXT = set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)

# Trained through another family's record (its processor and template are that family's), each in its own test file.
THROUGH_A_RECORD = {
    "qwen2_vl": "tests/test_generic_qwen2_glm.py",  # Qwen2.5-VL's
    "cosmos3_edge": "tests/test_generic_chameleon_emu_dots.py",  # Qwen3-VL's
    "shieldgemma2": "tests/test_generic_not_chat.py",  # Gemma 3's; its classifier class is refused
    "gemma4_unified": "tests/test_generic_mistral_gemma_glm5.py",  # Gemma 4's
}
# On the generic path, but not on every shape the shared tests use: tested in their own file.
OWN_TESTS = {
    "ernie4_5_vl_moe": "tests/test_generic_phi4_ernie.py",  # answers with reasoning; plain answers refused by name
}
# Refused by name with the reason, and the test that proves it.
REFUSED = {
    **{model_type: "tests/test_generic_not_chat.py" for model_type in NOT_CHAT_BUILDERS if model_type != "shieldgemma2"},
    "paligemma": "tests/test_generic_gemma3n_idefics2.py",  # a prefix-LM
    "got_ocr2": "tests/test_generic_vllama_got_docling.py",  # the processor builds its own prompt
    "pp_chart2table": "tests/test_generic_vllama_got_docling.py",
    "paddleocr_vl": "tests/test_generic_minicpm47_ocr.py",  # every answer merges into its spaced generation prompt
    "mistral4": "tests/test_generic_mistral_gemma_glm5.py",  # a text-only causal LM
}
# Not proven on any path, and what is missing (the README says the same).
NOT_PROVEN = {
    "chameleon": "images are VQ tokens: no vision tower or projector under transformers 5's names (`vqmodel`)",
    "emu3": "images are VQ tokens: a `text_model` but no vision tower or projector under transformers 5's names",
    "inkling_mm_model": "its vision MLP projects into the text width itself: no projector module to train or find",
}


def _trained() -> set[str]:
    recorded = {model_type for family in FAMILIES.values() for model_type in family.model_types}
    return recorded | set(GENERIC_BUILDERS) | set(THROUGH_A_RECORD) | set(OWN_TESTS)


def test_every_image_text_to_text_model_type_has_a_status():
    statuses = [_trained(), set(REFUSED), set(NOT_PROVEN)]
    assert IMAGE_TEXT_TO_TEXT - set().union(*statuses) == set()
    for i, status in enumerate(statuses):  # one status each
        for other in statuses[i + 1 :]:
            assert not status & other, status & other


def test_each_status_outside_the_registries_names_its_test():
    for model_type, path in {**THROUGH_A_RECORD, **OWN_TESTS, **REFUSED}.items():
        text = (ROOT / path).read_text()
        assert model_type in text or model_type in NOT_CHAT_BUILDERS, (model_type, path)


def test_the_readme_family_table_names_every_model_type():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Families", 1)[1].split("\n## ", 1)[0]
    missing = sorted(t for t in IMAGE_TEXT_TO_TEXT | set(GENERIC_BUILDERS) if f"`{t}`" not in section)
    assert not missing, f"README's family table does not name: {missing}"
