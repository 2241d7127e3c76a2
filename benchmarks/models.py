"""The benchmarks' shared test bed: a small Llama with LoRA on the paper's seven projections."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import loraplus

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def small_llama() -> PeftModel:
    """Hidden 256, 4 layers, LoRA r = 8 under Init[2] (so both A and B get gradients at step 1)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1024,
    )
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=8, target_modules=TARGETS))
    loraplus.init_lora_(model, "init2")
    return model
