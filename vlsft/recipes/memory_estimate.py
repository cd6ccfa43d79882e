"""Expected peak GPU memory of a single-GPU recipe, from the model's config alone (a meta-device model: no weights).

peak = weights + trainable + gradients + optimizer + activations + LM head + context, each term below, in bytes.

- weights: every base parameter at the recipe's dtype (2 B for bf16/fp16, 4 B for fp32). QLoRA: every `nn.Linear`
  weight except the LM head in NF4, 0.5 B per parameter plus its block scales (one per 64 weights: 4 B, or with
  double quantization 1 B + 4 B per 256 blocks); the rest stays at the compute dtype.
- trainable: the parameters that train. LoRA adapters are float32 (PEFT's default `autocast_adapter_dtype`); TRL
  casts QLoRA adapters to bf16. A full fine-tune trains the weights in place (already counted as weights).
- gradients: one per trainable parameter, at its dtype.
- optimizer: AdamW keeps two states per trainable parameter at its dtype (8-bit AdamW: 1 B each).
- activations, per micro-batch token t = per_device_train_batch_size x max_length (padding to the longest row or a
  full pack: the worst case), per decoder layer, with b = 2 B (bf16) and fp32 RMSNorm statistics as transformers
  computes them (counted on a tiny Qwen3-VL with `saved_tensors_hooks`, `tests/test_memory_estimate.py`):
    full fine-tune:  16h + 10q + 10kv + 8I
    LoRA (frozen base): 8h + 8q + 8kv + 6I + sum over adapted linears of (c * in_features + a * r)
  h hidden size, q = heads x head_dim, kv = kv_heads x head_dim (GatedDeltaNet layers: value and key widths),
  I the MLP width (MoE: the routed experts' width x experts per token), a the adapter's bytes per value and
  c = 1.5a with LoRA dropout (the dropped-out input is kept too), a without.
  With activation checkpointing, a checkpointed layer keeps only its input (b x h per token), plus one layer's
  full activations while it is recomputed; `every_n_layers: n` checkpoints layers 0, n, 2n...; `offload: true`
  moves the kept inputs to pinned host memory (counted as host memory, not GPU). The vision tower (the Qwen
  families' `visual.blocks`; other families' vision encoders are not counted) is counted the same way per patch (image tokens x merge^2 patches; image tokens per row: max_pixels / (patch x merge)^2, at most
  max_length; without max_pixels, half of max_length).
- LM head (vlsft/loss.py): the supervised positions go through the head `loss_chunk_size` at a time, recomputed in
  the backward: chunk x vocab x 16 B (bf16 logits, their fp32 copy, log-softmax, its gradient) plus the final
  hidden states (b x h per token).
- context: 1 GiB for the CUDA context and allocator slack (an assumption, not computed).

What it leaves out: fragmentation beyond that slack, DeepSpeed/FSDP buffers (the estimate is for single_gpu
layouts), and the tail of the data (a batch shorter than max_length needs less).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GIB = 1024**3
CONTEXT_BYTES = 1 * GIB
HEAD_BYTES_PER_LOGIT = 16


@dataclass
class MemoryEstimate:
    """Bytes per term (see the module docstring); `host_offload` is pinned host memory, not GPU memory."""

    weights: int
    trainable: int
    gradients: int
    optimizer: int
    activations: int
    head: int
    context: int = CONTEXT_BYTES
    host_offload: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.gradients + self.optimizer + self.activations + self.head + self.context


@dataclass
class Settings:
    """What the estimate needs from a recipe (`settings_from_recipe`)."""

    weight_bytes: int = 2  # per base parameter
    quantize_4bit: bool = False
    double_quant: bool = True
    lora_rank: int | None = None  # None: full fine-tune
    lora_dropout: float = 0.0
    lora_targets: object = None  # the PEFT target_modules (regex or suffix list)
    adapter_bytes: int = 4
    optimizer_bytes: float | None = None  # per trainable parameter; None: AdamW, two states at its dtype
    tokens: int = 2048  # per micro-batch
    image_tokens: int = 0  # of those, per micro-batch
    every_n_layers: int = 1  # 0: no checkpointing
    offload: bool = False
    loss_chunk_size: int = 256
    activation_bytes: int = 2


def quantized_bytes(numel: int, double_quant: bool) -> int:
    """NF4 bytes of a weight with `numel` values: packed 4-bit values plus one scale per 64-value block."""
    blocks = math.ceil(numel / 64)
    scales = blocks + 4 * math.ceil(blocks / 256) if double_quant else 4 * blocks
    return math.ceil(numel / 2) + scales


def estimate(model, settings: Settings, trainable_params: int) -> MemoryEstimate:
    """The estimate for `model` (on the meta device) trained as `settings` say, `trainable_params` counted as the
    dry run counts them (LoRA adapters, or the unfrozen weights of a full fine-tune)."""
    import torch

    s = settings
    head = model.get_output_embeddings()
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    weights = 0
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights are stored once
                continue
            seen.add(id(param))
            quantized = s.quantize_4bit and isinstance(module, torch.nn.Linear) and name == "weight" and id(param) not in head_params
            weights += quantized_bytes(param.numel(), s.double_quant) if quantized else param.numel() * s.weight_bytes
    lora = s.lora_rank is not None
    trainable_bytes = s.adapter_bytes if lora else s.weight_bytes
    trainable = trainable_params * trainable_bytes if lora else 0
    gradients = trainable_params * trainable_bytes
    per_param = 2 * trainable_bytes if s.optimizer_bytes is None else s.optimizer_bytes
    optimizer = int(trainable_params * per_param)
    activations, host = _activations(model, s)
    config = model.config.get_text_config()
    b = s.activation_bytes
    head_bytes = s.loss_chunk_size * config.vocab_size * HEAD_BYTES_PER_LOGIT + s.tokens * config.hidden_size * b
    return MemoryEstimate(weights, trainable, gradients, optimizer, activations, head_bytes, host_offload=host)


def layer_activation_bytes(config, settings: Settings, adapted_in_features: list[int], linear: bool = False) -> int:
    """Bytes one decoder layer keeps per token for its backward (the formula of the module docstring)."""
    h = config.hidden_size
    if linear:  # GatedDeltaNet: its value and key widths stand for q and kv
        q = config.linear_num_value_heads * config.linear_value_head_dim
        kv = config.linear_num_key_heads * config.linear_key_head_dim
    else:
        head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "num_heads")
        q = heads * head_dim
        kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    experts = getattr(config, "num_experts_per_tok", None)
    width = getattr(config, "moe_intermediate_size", None) if experts else None
    mlp = width * experts if width else config.intermediate_size
    if settings.lora_rank is None:
        return 16 * h + 10 * q + 10 * kv + 8 * mlp
    a = settings.adapter_bytes
    c = 1.5 * a if settings.lora_dropout > 0 else a
    adapted = sum(c * width + a * settings.lora_rank for width in adapted_in_features)
    return int(8 * h + 8 * q + 8 * kv + 6 * mlp + adapted)


def _stack_bytes(layers, config, settings: Settings, tokens: int, linear_types: list[bool]) -> tuple[int, int]:
    """(GPU bytes, host bytes) of one stack of `(name, layer)` (the decoder, or the vision blocks) for `tokens`
    tokens."""
    import torch

    from vlsft.model_parts import lora_matches

    if not tokens or not layers:
        return 0, 0
    full = []
    for (prefix, layer), linear in zip(layers, linear_types):
        adapted = []
        if settings.lora_rank is not None:
            for name, module in layer.named_modules():
                if isinstance(module, torch.nn.Linear) and lora_matches(settings.lora_targets, f"{prefix}.{name}"):
                    adapted.append(module.in_features)
        full.append(layer_activation_bytes(config, settings, adapted, linear) * tokens)
    every = settings.every_n_layers
    if every == 0:
        return sum(full), 0
    kept_input = settings.activation_bytes * config.hidden_size * tokens
    gpu, host = max(full), 0  # one layer's activations while it is recomputed
    for index, layer_bytes in enumerate(full):
        if index % every:
            gpu += layer_bytes
        elif settings.offload:
            host += kept_input
        else:
            gpu += kept_input
    return gpu, host


def _activations(model, settings: Settings) -> tuple[int, int]:
    text = model.config.get_text_config()
    decoder, vision = [], []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("DecoderLayer"):
            decoder.append((name, module))
        elif "visual" in name and name.rsplit(".", 2)[-2:-1] == ["blocks"]:
            vision.append((name, module))
    layer_types = getattr(text, "layer_types", None) or ["full_attention"] * len(decoder)
    linear = [kind == "linear_attention" for kind in layer_types]
    text_tokens = settings.tokens
    gpu, host = _stack_bytes(decoder, text, settings, text_tokens, linear)
    vision_config = getattr(model.config, "vision_config", None)
    if vision_config is not None and vision:
        merge = getattr(vision_config, "spatial_merge_size", 1)
        patches = settings.image_tokens * merge * merge
        vision_gpu, vision_host = _stack_bytes(vision, vision_config, settings, patches, [False] * len(vision))
        gpu, host = gpu + vision_gpu, host + vision_host
    embeddings = 2 * settings.activation_bytes * text.hidden_size * text_tokens  # embedding output, final norm
    return gpu + embeddings, host


# -- from a recipe -------------------------------------------------------------------------------------------------


def settings_from_recipe(recipe, args, model) -> Settings:
    """The estimate's settings for a recipe and its `VLSFTConfig` (`args`)."""
    from vlsft.activation_checkpointing import checkpointing_plan
    from vlsft.recipes.build import lora_targets

    dtype = recipe.model.dtype
    if dtype == "auto":
        dtype = str(getattr(model.config, "dtype", None) or "float32").replace("torch.", "")
    weight_bytes = 4 if dtype == "float32" else 2
    lora = recipe.lora
    every, offload = checkpointing_plan(args.gradient_checkpointing, args.activation_checkpointing_kwargs)
    tokens = args.per_device_train_batch_size * args.max_length
    vision = getattr(model.config, "vision_config", None)
    image_tokens = 0
    if vision is not None:
        patch = getattr(vision, "patch_size", 14)  # a side, or (height, width) as InternVL's config gives it
        patch_pixels = patch[0] * patch[-1] if isinstance(patch, (list, tuple)) else patch * patch
        pixels_per_token = patch_pixels * getattr(vision, "spatial_merge_size", 1) ** 2
        per_row = recipe.model.max_pixels // pixels_per_token if recipe.model.max_pixels else args.max_length // 2
        image_tokens = args.per_device_train_batch_size * min(per_row, args.max_length)
    optim = str(getattr(args.optim, "value", args.optim))
    return Settings(
        weight_bytes=weight_bytes,
        quantize_4bit=bool(lora and lora.load_in_4bit),
        double_quant=bool(lora and lora.bnb_4bit_use_double_quant),
        lora_rank=lora.r if lora else None,
        lora_dropout=lora.dropout if lora else 0.0,
        lora_targets=lora_targets(recipe) if lora else None,
        adapter_bytes=2 if lora and lora.load_in_4bit else 4,
        optimizer_bytes=2.0 if "8bit" in optim else None,
        tokens=tokens,
        image_tokens=image_tokens,
        every_n_layers=every,
        offload=offload,
        loss_chunk_size=args.loss_chunk_size,
        activation_bytes=2 if weight_bytes == 2 or args.bf16 or args.fp16 else 4,
    )


def describe_memory_estimate(recipe, args, model, counts, source: str) -> list[str]:
    """The dry run's `memory` lines: the expected peak and its terms, or why there is no estimate."""
    if recipe.layout.strategy not in ("single_gpu", "cpu"):
        return [f"memory     not estimated: the estimate is for single-GPU layouts (this one: {recipe.layout.strategy})"]
    if model is None or counts is None:
        return [f"memory     not estimated: {source}"]
    if args.max_length is None:
        return ["memory     not estimated: set `training.max_length` (the tokens of a micro-batch decide activations)"]
    settings = settings_from_recipe(recipe, args, model)
    trainable_params = sum(trainable for trainable, _ in counts.values())
    result = estimate(model, settings, trainable_params)
    gib = lambda value: f"{value / GIB:.1f} GiB"  # noqa: E731
    weights = "NF4 + compute dtype" if settings.quantize_4bit else f"{settings.weight_bytes} B/param"
    if settings.every_n_layers == 0:
        checkpointing = "no checkpointing"
    else:
        checkpointing = "checkpointing every layer" if settings.every_n_layers == 1 else f"checkpointing every {settings.every_n_layers} layers"
        if settings.offload:
            checkpointing += f", kept inputs offloaded: {gib(result.host_offload)} pinned host memory"
    kind = "LoRA" if settings.lora_rank is not None else "trained weights"
    return [
        f"memory     expected peak on one GPU: {gib(result.total)} (estimate from the config, {source}; "
        "vlsft/recipes/memory_estimate.py)",
        f"           weights {gib(result.weights)} ({weights}), {kind} {trainable_params / 1e6:.1f}M params "
        f"{gib(result.trainable)}, gradients {gib(result.gradients)}, optimizer {gib(result.optimizer)}",
        f"           activations {gib(result.activations)} ({settings.tokens:,} tokens per micro-batch, "
        f"{settings.image_tokens:,} of them image tokens; {checkpointing}), LM head chunks {gib(result.head)}, "
        f"CUDA context {gib(result.context)}",
    ]
