"""The GPU lane: step time and peak GPU memory of LoRA+ against its baselines, on one GPU.

Llama-architecture models with random weights (no download): the shape of Llama-3.2-1B in bf16
and of Llama-3-8B on a 4-bit (nf4) base, LoRA r=16 on every linear layer ("all-linear"), one
sequence of 2048 tokens per step. In one run, each variant builds its optimizer, warms up, then
times its steps (variants alternate order across rounds so drift hits all alike):
  LoRA 1 group         torch AdamW over every LoRA tensor at one lr (plain LoRA)
  LoRA+                loraplus.create_optimizer(ratio=16)
  PEFT LoRA+           peft.optimizers.create_loraplus_optimizer
  (those three with fused and with foreach AdamW)
  ratio auto, probe/10 LoRA+ with ratio="auto", and with the feature-update probe every 10 steps
  adamw_bnb_8bit, paged_adamw_8bit   plain LoRA against LoRA+ on bitsandbytes' 8-bit AdamW
(the 8B runs the fused AdamW and paged_adamw_8bit pairs only).
Prints each variant's ms/step and peak GPU memory, and its ratios to its baseline measured in
this run, with the GPU named. Targets: LoRA+ <= 1.01x plain LoRA's step time, peak memory within
1%; ratio auto and probe/10 <= 1.03x LoRA+.
Usage: python benchmarks/gpu.py [--models 1b,8b] [--steps 20] [--rounds 2]   (one GPU, < 8 min)
       python benchmarks/gpu.py --tiny   (CPU, seconds: every path at toy size; its test)
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _timing import interleaved
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer as peft_loraplus
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

import loraplus
from loraplus.probe import FeatureUpdateProbe

LR, RATIO, RANK, PROBE_EVERY = 1e-4, 16.0, 16, 10

# Llama-3.2-1B's and Llama-3-8B's shapes; "4bit": the base is quantized to nf4 (QLoRA).
MODELS: dict[str, dict[str, Any]] = {
    "1b": {
        "shape": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16),
        "4bit": False,
    },
    "8b": {
        "shape": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32),
        "4bit": True,
    },
}
FULL = dict(num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
)


@dataclass
class Variant:
    """One way to train the same LoRA model: its optimizer, and the variant it is compared to."""

    name: str
    baseline: str | None
    build: Callable[[], torch.optim.Optimizer]
    probe: bool = False
    full: bool = True  # also on the 8B (fused AdamW and paged 8-bit: plain LoRA vs LoRA+)


def build_model(name: str, device: torch.device, seq: int, tiny: bool) -> Any:
    """A random-weight Llama in bf16 (nf4 base where MODELS says; fp32 when tiny), with LoRA on
    every linear layer."""
    spec = MODELS[name]
    shape = TINY if tiny else {**FULL, **spec["shape"]}
    dtype = torch.float32 if tiny else torch.bfloat16  # CPU bf16 kernels are slow
    cfg = LlamaConfig(**shape, max_position_embeddings=seq)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if spec["4bit"]:
        state = model.state_dict()
        del model
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
        model = LlamaForCausalLM.from_pretrained(
            None,
            config=cfg,
            state_dict=state,
            quantization_config=quant,
            dtype=dtype,
            device_map={"": device.index if device.type == "cuda" else "cpu"},
        )
        del state
    return get_peft_model(
        model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear")
    )


def variants(model: Any, full: bool) -> list[Variant]:
    """The optimizers compared on `model` (built fresh for each round)."""
    lora = [p for p in model.parameters() if p.requires_grad]

    def plain(cls: Any, **kw: Any) -> Callable[[], torch.optim.Optimizer]:
        return lambda: cls(lora, lr=LR, **kw)

    def plus(
        name: str, ratio: float | str = RATIO, **kw: Any
    ) -> Callable[[], torch.optim.Optimizer]:
        return lambda: loraplus.create_optimizer(model, name, lr=LR, ratio=ratio, **kw)

    def peft(**kw: Any) -> Callable[[], torch.optim.Optimizer]:
        return lambda: peft_loraplus(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO, **kw)

    out = []
    for impl in ("fused", "foreach"):
        base = f"LoRA 1 group, {impl}"
        out += [
            Variant(base, None, plain(torch.optim.AdamW, **{impl: True}), full=impl == "fused"),
            Variant(f"LoRA+, {impl}", base, plus("adamw", **{impl: True}), full=impl == "fused"),
            Variant(f"PEFT LoRA+, {impl}", base, peft(**{impl: True}), full=False),
        ]
    out += [
        Variant("LoRA+ ratio auto", "LoRA+, fused", plus("adamw", "auto", fused=True), full=False),
        Variant(
            "LoRA+ probe/10", "LoRA+, fused", plus("adamw", fused=True), probe=True, full=False
        ),
    ]
    import bitsandbytes as bnb

    for name, cls, ours, on_8b in (
        ("adamw_bnb_8bit", bnb.optim.AdamW8bit, "adamw_8bit", False),
        ("paged_adamw_8bit", bnb.optim.PagedAdamW8bit, "paged_adamw_8bit", True),
    ):
        base = f"LoRA 1 group, {name}"
        out += [
            Variant(base, None, plain(cls), full=on_8b),
            Variant(f"LoRA+, {name}", base, plus(ours), full=on_8b),
        ]
    return [v for v in out if full or v.full]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(
    model: Any, v: Variant, ids: torch.Tensor, warmup: int, steps: int
) -> dict[str, Any]:
    """Build v's optimizer, warm up, time `steps` steps; ms/step, peak memory, what it built."""
    device = ids.device
    opt = v.build()
    probe = FeatureUpdateProbe(model) if v.probe else None
    probed = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        watch = probe if probe is not None and step % PROBE_EVERY == 0 else None
        if probe is not None:  # inputs recorded only on the probed steps, as the callback does
            probe.recording = watch is not None
        model(input_ids=ids, labels=ids).loss.backward()
        if watch is not None:
            watch.snapshot()
        opt.step()
        if watch is not None:
            probed += len(watch.measure())
        opt.zero_grad(set_to_none=True)
    sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    lrs = sorted({g["lr"] for g in opt.param_groups if g["params"]})
    row = {
        "variant": v.name,
        "baseline": v.baseline,
        "ms": 1e3 * elapsed / steps,
        "peak": peak,
        "lr_spread": lrs[-1] / lrs[0],
        "optimizer": type(opt).__name__,
        "auto": getattr(opt, "auto_ratio", None) is not None,  # ratio="auto"'s controller attached
        "probed": probed,
    }
    if probe is not None:
        probe.remove()
    del opt
    if device.type == "cuda":  # free the optimizer state before the next variant's peak
        gc.collect()
        torch.cuda.empty_cache()
    return row


def benchmark(
    name: str, device: torch.device, seq: int, steps: int, rounds: int, warmup: int, tiny: bool
) -> dict[str, Any]:
    """All variants on one model: per variant the median ms/step over rounds, the peak memory."""
    started = time.perf_counter()
    model = build_model(name, device, seq, tiny)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(0)).to(device)
    chosen = variants(model, full=not MODELS[name]["4bit"])
    rows: dict[str, list[dict[str, Any]]] = {v.name: [] for v in chosen}
    for v in interleaved(chosen, rounds):
        rows[v.name].append(run_variant(model, v, ids, warmup, steps))
    merged = []
    for v in chosen:
        first = rows[v.name][0]
        merged.append(
            {
                **first,
                "ms": statistics.median(r["ms"] for r in rows[v.name]),
                "peak": max((r["peak"] or 0) for r in rows[v.name]) or None,
            }
        )
    params = sum(p.numel() for p in model.parameters())
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    four_bit = any(type(m).__name__ == "Linear4bit" for m in model.modules())
    return {
        "model": name,
        "params": params,
        "lora": lora,
        "four_bit": four_bit,
        "rows": merged,
        "seconds": time.perf_counter() - started,
    }


def report(result: dict[str, Any], seq: int, steps: int, rounds: int) -> list[str]:
    """The table of one model: ms/step, peak GiB, and each variant's ratios to its baseline."""
    by_name = {r["variant"]: r for r in result["rows"]}
    base = "nf4 4-bit base" if result["four_bit"] else "bf16 base"
    lines = [
        f"Llama {result['model']} shape, random weights, {base}: {result['params'] / 1e9:.3g}B "
        f"stored parameters, LoRA r={RANK} all-linear ({result['lora'] / 1e6:.3g}M), batch 1 x "
        f"{seq} tokens, {rounds} round(s) x {steps} steps per variant "
        f"({result['seconds']:.0f} s)",
        f"  {'variant':<28} {'ms/step':>9} {'peak GiB':>9} {'time x':>7} {'memory x':>9}  vs",
    ]
    for row in result["rows"]:
        ref = by_name.get(row["baseline"] or "")
        peak = "-" if row["peak"] is None else f"{row['peak'] / 2**30:.2f}"
        t_ratio = f"{row['ms'] / ref['ms']:.3f}" if ref else "-"
        m_ratio = f"{row['peak'] / ref['peak']:.4f}" if ref and row["peak"] and ref["peak"] else "-"
        lines.append(
            f"  {row['variant']:<28} {row['ms']:9.1f} {peak:>9} {t_ratio:>7} {m_ratio:>9}"
            f"  {row['baseline'] or ''}"
        )
    return lines


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}"
        )
    return (
        f"CPU tiny smoke run (toy shapes; not a GPU figure): torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1b,8b", help="comma-separated: 1b, 8b")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per step (batch 1)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--tiny", action="store_true", help="toy shapes on CPU, a few seconds")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}: use {', '.join(MODELS)}")
    if args.tiny:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # toy matrices: threads only wait on each other
        args.seq, args.steps, args.rounds, args.warmup = 32, 2, 1, 1  # the probe fires at step 0
    elif torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        parser.error("no CUDA GPU: the GPU lane needs one; run --tiny for the CPU smoke run")
    print(device_line(device))
    results = []
    for name in names:
        result = benchmark(name, device, args.seq, args.steps, args.rounds, args.warmup, args.tiny)
        results.append(result)
        print("\n".join(report(result, args.seq, args.steps, args.rounds)), flush=True)
    print(
        "targets: LoRA+ time x <= 1.01 and memory x within 1% of plain LoRA (1 group); "
        "ratio auto and probe/10 time x <= 1.03 of LoRA+"
    )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
