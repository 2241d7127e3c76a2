"""Build a LoRA+ optimizer for a small PEFT model and train it for a few steps: the whole API."""

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import loraplus

torch.manual_seed(0)
base = LlamaForCausalLM(
    LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
)
model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
loraplus.init_lora_(model, "init1")  # B = 0, A random (PEFT's default); "init2" flips them

optimizer = loraplus.create_optimizer(model, "adamw", lr=2e-4, ratio=16, weight_decay=0.01)
print(loraplus.summary(optimizer))

ids = torch.randint(0, 256, (8, 32))
for step in range(5):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"step {step}  loss {loss.item():.4f}")
