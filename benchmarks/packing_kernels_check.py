"""Packed rows on every attention kernel this machine has: per-row losses and gradients against the padded batch, and
isolation (another row changed, this row's logits unchanged), for the GPU check of issue 20.

    python benchmarks/packing_kernels_check.py     # CUDA (bf16) when torch sees a GPU, else the CPU (fp32)

Model: the tiny random Qwen3-VL made wider and deeper (hidden 256, 4 layers) and the tiny hybrid Qwen3.5 (one
GatedDeltaNet layer, one attention layer). Rows: 6 rows of the packing benchmark's log-normal workload, in one pack.
The padded reference runs sdpa. Kernels tried: sdpa (vlsft_packed_sdpa: torch's varlen_attn on CUDA in bf16, row by
row elsewhere), eager, flex_attention (Qwen3-VL has no flex support in transformers: LLaVA-style 1D models only, so
it is skipped here), flash_attention_2 / flash_attention_3 where their package imports. On the CPU only sdpa and
eager run (flash is CUDA-only; flex's backward is not supported on the CPU). For the hybrid model, which
linear-attention path ran is printed (fla + causal-conv1d varlen kernels, or vlsft's row-by-row torch fallback).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine_lines  # noqa: E402
from packing import make_rows  # noqa: E402
from vlsft.collator import VisionChatCollator  # noqa: E402
from vlsft.packing.attention import use_packed_attention  # noqa: E402
from vlsft.packing.collator import PackedCollator  # noqa: E402
from vlsft.packing.linear_attention import varlen_linear_attention_kernels  # noqa: E402
from vlsft.templates import training_template  # noqa: E402
from vlsft.testing.tiny_qwen import build_tiny_qwen3_5  # noqa: E402
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl  # noqa: E402
from vlsft.tokens import IGNORE_INDEX  # noqa: E402


def kernels(device: str) -> list[str]:
    if device == "cpu":
        return ["sdpa", "eager"]
    found = ["sdpa", "eager"]
    found += [name for name, package in (("flash_attention_2", "flash_attn"), ("flash_attention_3", "flash_attn_interface"))
              if importlib.util.find_spec(package)]
    return found


def per_row_nll(logits, labels, spans):
    return torch.stack([
        torch.nn.functional.cross_entropy(
            logits[0, s][:-1].float(), labels[0, s][1:], ignore_index=IGNORE_INDEX, reduction="sum"
        ) for s in spans
    ])


def check(name, model, processor, template, attention, rows, device, dtype) -> str:
    collator = VisionChatCollator(processor, training_template(template))
    padded_model = copy.deepcopy(model).to(device, dtype).train()
    packed_model = copy.deepcopy(model).to(device, dtype).train()
    if attention != "sdpa":
        packed_model.set_attn_implementation({"text_config": attention})
    use_packed_attention(packed_model)
    padded = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(rows).items()}
    packed = {k: v.to(device) if torch.is_tensor(v) else v for k, v in PackedCollator(collator, model=packed_model)(rows).items()}
    lengths = padded["attention_mask"].sum(-1).tolist()
    starts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    spans = [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]

    logits = padded_model(**{k: v for k, v in padded.items() if k != "labels"}, use_cache=False).logits
    padded_nll = torch.stack([
        torch.nn.functional.cross_entropy(logits[i, :n][:-1].float(), padded["labels"][i, :n][1:],
                                          ignore_index=IGNORE_INDEX, reduction="sum") for i, n in enumerate(lengths)
    ])
    padded_nll.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    logits = packed_model(**{k: v for k, v in packed.items() if k != "labels"}).logits
    packed_nll = per_row_nll(logits, packed["labels"], spans)
    packed_nll.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    step_ms = (time.perf_counter() - start) * 1000
    loss_error = float(((packed_nll - padded_nll).abs() / padded_nll.abs()).max().detach())
    grads = {n: p.grad for n, p in padded_model.named_parameters() if p.grad is not None}
    grad_error = max(
        float((p.grad - grads[n]).abs().max() / grads[n].abs().max().clamp(min=1e-12))
        for n, p in packed_model.named_parameters() if p.grad is not None
    )
    # Isolation: the second row's text reversed; every other row's logits must not move.
    changed = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in packed.items()}
    ids = changed["input_ids"][0, spans[1]]
    text = ~torch.isin(ids, torch.tensor(sorted(collator._vision_token_ids), device=device))
    ids[text] = ids[text].flip(0)
    with torch.no_grad():
        base = packed_model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        other = packed_model(**{k: v for k, v in changed.items() if k != "labels"}).logits
    leak = max(float((other[0, s] - base[0, s]).abs().max()) for i, s in enumerate(spans) if i != 1)
    return f"| {name} | {attention} | {loss_error:.1e} | {grad_error:.1e} | {leak:.1e} | {step_ms:.0f} |"


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print("\n".join(machine_lines(device)))
    print(f"- dtype {dtype}; hybrid linear attention: "
          f"{'fla + causal-conv1d varlen kernels' if device == 'cuda' and varlen_linear_attention_kernels() else 'row by row (torch fallback)'}")
    rows = make_rows(6, seed=0, median=140, sigma=0.7, low=64, high=512)
    qwen3_vl, qwen3_vl_processor = build_tiny_qwen3_vl(seed=0, hidden_size=256, num_hidden_layers=4)
    qwen3_5, qwen3_5_processor = build_tiny_qwen3_5(seed=0, hidden_size=256)
    lines = ["| model | attention | per-row loss, max rel. diff | gradients, max rel. diff | other rows' logits moved by | packed step (ms) |",
             "|---|---|---:|---:|---:|---:|"]
    for attention in kernels(device):
        lines.append(check("Qwen3-VL", qwen3_vl, qwen3_vl_processor, "qwen3_vl", attention, rows, device, dtype))
        lines.append(check("Qwen3.5 hybrid", qwen3_5, qwen3_5_processor, "qwen3_5_think", attention, rows, device, dtype))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
