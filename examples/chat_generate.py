"""Load a `loraplus train` adapter onto its base model and answer a chat message with it.

Usage: python examples/chat_generate.py runs/chat "Name the capital city of Peru."
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraplus import zoo


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/chat")
    question = sys.argv[2] if len(sys.argv) > 2 else "Name the capital city of Peru."
    config = json.loads((run / "metrics.json").read_text())["config"]
    base_path = zoo.resolve_model(config["model"])  # a built-in name; a hub id loads as is
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")  # saved with the adapter
    base = AutoModelForCausalLM.from_pretrained(base_path)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))


if __name__ == "__main__":
    main()
