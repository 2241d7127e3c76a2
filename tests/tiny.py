"""Tiny models built in code (hidden 32), so every test runs in milliseconds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM


def tiny_bert(num_labels: int = 3) -> BertForSequenceClassification:
    """A 2-layer BERT classifier, hidden 32."""
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(cfg)


def tiny_llama(vocab_size: int = 128) -> LlamaForCausalLM:
    """A 2-layer Llama causal LM, hidden 32."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg)


def lora_bert(**lora: object) -> PeftModel:
    """tiny_bert with LoRA on attention and MLP (extra LoraConfig fields via **lora)."""
    targets = lora.pop("target_modules", ["query", "key", "value", "dense"])
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, **lora)  # type: ignore[arg-type]
    return get_peft_model(tiny_bert(), cfg)


def lora_llama(**lora: object) -> PeftModel:
    """tiny_llama with LoRA on every linear projection."""
    targets = lora.pop(
        "target_modules",
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, **lora)  # type: ignore[arg-type]
    return get_peft_model(tiny_llama(), cfg)
