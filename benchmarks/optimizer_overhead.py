"""What LoRA+ costs: optimizer construction on a Llama-7B layout, and training-step time.

1. A Llama-7B-shaped model on the `meta` device (no memory) with LoRA r=16 on all seven
   projections: time loraplus.create_optimizer against peft's create_loraplus_optimizer.
2. A small real Llama (CPU): time training steps with the LoRA+ optimizer against plain AdamW
   over the same parameters, interleaved in rounds so machine noise hits both alike.
Prints ratios measured in this run. Usage: python benchmarks/optimizer_overhead.py [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _timing import interleaved
from models import TARGETS, small_llama
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer as peft_loraplus
from transformers import LlamaConfig, LlamaForCausalLM

import loraplus


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of `repeats` calls (the least disturbed one)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def construction(repeats: int) -> None:
    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )
    with torch.device("meta"):
        model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=16, target_modules=TARGETS))
    n_lora = sum(1 for n, p in model.named_parameters() if p.requires_grad)
    ours = best_of(lambda: loraplus.create_optimizer(model, "adamw", lr=1e-4), repeats)
    ref = best_of(
        lambda: peft_loraplus(model, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=16), repeats
    )
    print(f"Llama-7B layout on meta: {n_lora} LoRA tensors")
    print(f"  loraplus.create_optimizer      {ours * 1e3:8.1f} ms")
    print(f"  peft create_loraplus_optimizer {ref * 1e3:8.1f} ms")
    print(f"  construction ratio loraplus/peft = {ours / ref:.3f}  (target <= 1, and < 1 s)")


def step_time(steps: int, rounds: int) -> None:
    """`steps` training steps per optimizer, split into `rounds` alternating chunks."""
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = small_llama()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = {
        "plain AdamW": torch.optim.AdamW(params, lr=1e-4),
        "LoRA+ AdamW": loraplus.create_optimizer(model, "adamw", lr=1e-4, ratio=16),
    }
    ids = torch.randint(0, 1024, (4, 64), generator=torch.Generator().manual_seed(0))

    def run(opt: torch.optim.Optimizer, n: int) -> None:
        for _ in range(n):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    for opt in optimizers.values():
        run(opt, 3)  # warm-up: allocator, optimizer state
    chunk = max(1, steps // rounds)
    per_step: dict[str, list[float]] = {name: [] for name in optimizers}
    for name in interleaved(list(optimizers), rounds):
        start = time.perf_counter()
        run(optimizers[name], chunk)
        per_step[name].append((time.perf_counter() - start) / chunk)
    base = statistics.median(per_step["plain AdamW"])
    plus = statistics.median(per_step["LoRA+ AdamW"])
    print(f"Training steps, small Llama (hidden 256, 4 layers, LoRA r=8), {rounds} x {chunk} steps")
    print(f"  plain AdamW  {base * 1e3:8.2f} ms/step")
    print(f"  LoRA+ AdamW  {plus * 1e3:8.2f} ms/step")
    print(f"  step-time ratio LoRA+/plain = {plus / base:.3f}  (target <= 1.01)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="training steps per optimizer")
    parser.add_argument("--rounds", type=int, default=10, help="alternating chunks of those steps")
    parser.add_argument("--repeats", type=int, default=5, help="construction repeats")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    construction(args.repeats)
    step_time(args.steps, args.rounds)


if __name__ == "__main__":
    main()
