"""Every family under ZeRO-3 with a text-only rank beside an image rank (vlsft/dummy_vision.py).

In process, for one model of every architecture: a text-only micro-batch with the dummy vision pass calls the modules
that own parameters (what ZeRO-3 gathers, one collective each) in exactly the order of a micro-batch with an image,
gives a gradient to exactly the same parameters, and changes neither the output nor any gradient (the vision ones are
exact zeros).

Over 2 CPU processes (real `accelerate launch`, gloo, DeepSpeed ZeRO-3, under a timeout; the machinery of
tests/test_distributed.py): every non-Qwen-VL family and Qwen3.5 trains one step with one rank's micro-batch text-only
beside an image one, and the step equals the 1-process step within 1e-4 of the update (Gemma 3 in the default suite,
the others marked slow).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import IMAGE, assistant, image, user
from tests.test_distributed import CHUNK, REPO, assert_ranks_out_of_step_without_the_fix, assert_same_step, run_pair
from vlsft.collator import training_collator
from vlsft.config import VLSFTConfig
from vlsft.distributed import StepShape, check_vision_in_step, zero_factor_vision_passes
from vlsft.model_parts import VISION_TOWER, component_of
from vlsft.testing.tiny_families import build_tiny

# One template per model architecture (the Gemma 4 revisions and the Qwen3.5 templates share their model).
ARCHITECTURES = [
    "qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl", "qwen3_5_think", "qwen3_5_moe",
    "gemma3", "gemma4_v5", "idefics3", "smolvlm", "llava_next",
]


def calls_and_gradients(model, batch, dummy: bool):
    """The names of the parameter-owning modules in call order, the last hidden state, and every parameter's
    gradient, of one forward and backward of the backbone."""
    calls = []
    hooks = [
        module.register_forward_pre_hook(lambda module, args, name=name: calls.append(name))
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ]
    model.zero_grad(set_to_none=True)
    inputs = {key: value for key, value in batch.items() if key not in ("labels", "label_weights")}
    try:
        with zero_factor_vision_passes(model, ("image",) if dummy else (), torch.device("cpu")):
            hidden = model.base_model(**inputs).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    (hidden.float() ** 2).sum().backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return calls, hidden.detach(), gradients


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_dummy_vision_pass_calls_what_an_image_calls_and_changes_nothing(family):
    model, processor = build_tiny(family, seed=0)
    collate = training_collator(processor, VLSFTConfig(output_dir="unused", report_to="none"))
    image_row = {
        "messages": [user(IMAGE, "Describe it."), assistant("A blue box.")], "images": [image((0, 0, 200), (64, 80))]
    }
    with_image = collate([image_row])
    text_only = collate([{"messages": [user("Question?"), assistant("An answer.")], "images": []}])
    assert "pixel_values" in with_image and "pixel_values" not in text_only

    image_calls, _, image_gradients = calls_and_gradients(model, with_image, dummy=False)
    plain_calls, plain_hidden, plain_gradients = calls_and_gradients(model, text_only, dummy=False)
    dummy_calls, dummy_hidden, dummy_gradients = calls_and_gradients(model, text_only, dummy=True)

    assert plain_calls != image_calls  # without the dummy pass, the text-only rank would skip the tower's gathers
    assert dummy_calls == image_calls
    assert set(dummy_gradients) == set(image_gradients)
    assert torch.equal(dummy_hidden, plain_hidden)
    for name, gradient in dummy_gradients.items():
        expected = plain_gradients.get(name, torch.zeros_like(gradient))
        assert torch.equal(gradient, expected), name
    assert any(component_of(name) == VISION_TOWER for name in set(dummy_gradients) - set(plain_gradients))


def test_a_model_without_a_dummy_vision_pass_is_refused_under_zero3(monkeypatch):
    """A model outside vlsft's families (here LLaVA 1.5, whose image path vlsft does not know) is refused on every
    rank, with the reason, when the ranks' micro-batches differ in images under ZeRO-3; a family with a dummy pass
    is not."""
    import transformers.integrations
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    shape = StepShape(num_chunks=1, missing_modalities=("image",), mixed_modalities=("image",))
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(text_config=dict(model_type="llama", vocab_size=64, **tiny),
                    vision_config=dict(model_type="clip_vision_model", image_size=16, patch_size=8, **tiny))
    )
    with pytest.raises(RuntimeError, match="no dummy vision pass for LlavaForConditionalGeneration.*Use ZeRO-2 or DDP"):
        check_vision_in_step(llava, shape)
    check_vision_in_step(build_tiny("gemma3")[0], shape)
    check_vision_in_step(llava, StepShape(num_chunks=1, missing_modalities=(), mixed_modalities=()))


@pytest.mark.parametrize(
    "family, per_device_batch, accumulation",
    [("gemma3", 2, 1), *(pytest.param(family, 2, 1, marks=pytest.mark.slow) for family in
                         ("idefics3", "smolvlm", "llava_next", "gemma4_v5", "qwen3_5_think")),
     pytest.param("gemma3", 1, 2, marks=pytest.mark.slow)],
    ids=["gemma3", "idefics3", "smolvlm", "llava_next", "gemma4", "qwen3_5", "gemma3-1rowx2"],
)
def test_zero3_text_only_rank_beside_an_image_rank(tmp_path, family, per_device_batch, accumulation):
    """2 ranks, rows {one image row, three text-only rows}. 2 rows per rank: one rank's micro-batch is text-only, and
    the ranks' supervised counts span different numbers of LM-head chunks. 1 row x 2 accumulated micro-batches: one
    micro-step has the image on one rank only, the others none on any rank (every rank then runs the dummy pass, so
    that each step's backward reaches every parameter). Qwen3.5: Qwen3-VL's tower without DeepStack, a hybrid
    GatedDeltaNet / attention language model."""
    distributed, reference = run_pair(
        tmp_path, f"zero3_{family}_{per_device_batch}", per_device_batch=per_device_batch, accumulation=accumulation,
        rows="mixed", family=family, loss_chunk_size=CHUNK, deepspeed=REPO / "configs/ds_zero3.json",
    )
    assert_ranks_out_of_step_without_the_fix(distributed)
    assert_same_step(distributed, reference)
