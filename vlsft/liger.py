"""`use_liger_kernel=True`: Liger's Triton kernels for the model's layers (RMSNorm, SwiGLU, rope, per family), never
its losses.

transformers' `Trainer` applies Liger when training starts (`_apply_liger_kernel_to_instance` with
`liger_kernel_config`). vlsft hands it a config with Liger's two loss kernels off: its fused linear cross-entropy
would replace the model's forward, and with it vlsft's supervised-token head (which already never builds the full
logits), and its cross-entropy would replace a loss vlsft does not use. Liger patches transformers' modeling
modules for the whole process (its rope functions and norm classes): that is Liger's design, asked for by the flag.
Its kernels are Triton: GPU only, so a run on the CPU refuses the flag. Not yet run on a GPU by vlsft's tests.
"""

from __future__ import annotations

from transformers.utils import is_liger_kernel_available

LOSS_KERNELS = ("cross_entropy", "fused_linear_cross_entropy")


def liger_layer_kernels(user_config, on_gpu: bool) -> dict:
    """The `liger_kernel_config` to train with: the user's (a dict of kernel names to booleans), with Liger's loss
    kernels off; a ValueError where Liger cannot be used as asked."""
    if not on_gpu:
        raise ValueError(
            "`use_liger_kernel=True`: Liger's kernels are Triton kernels, which run on GPUs only, and this run is on "
            "the CPU; leave `use_liger_kernel` False here (vlsft's loss already never builds the full logits)."
        )
    config = {} if user_config is None else user_config
    if not isinstance(config, dict) or not all(isinstance(k, str) and isinstance(v, bool) for k, v in config.items()):
        raise ValueError(f"`liger_kernel_config` must map kernel names to true/false, got {user_config!r}.")
    losses = [name for name in LOSS_KERNELS if config.get(name)]
    if losses:
        raise ValueError(
            f"`liger_kernel_config` turns on {', '.join(losses)}: Liger's loss would replace vlsft's supervised-token "
            "loss (which never builds the full logits either). Leave them out; the layer kernels stay on."
        )
    if not is_liger_kernel_available():
        raise ValueError("`use_liger_kernel=True` needs the `liger-kernel` package: `pip install liger-kernel`.")
    return {**config, **{name: False for name in LOSS_KERNELS}}


def check_liger_supports(model) -> None:
    """A ValueError where Liger has no kernels for `model`'s type (it would apply none, silently)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ValueError(
            f"`use_liger_kernel=True`: liger-kernel has no kernels for model type {model_type!r}, so it would change "
            "nothing; leave `use_liger_kernel` False for this model."
        )
