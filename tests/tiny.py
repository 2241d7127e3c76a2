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


def tiny_llama(vocab_size: int = 128, hidden_size: int = 32) -> LlamaForCausalLM:
    """A 2-layer Llama causal LM, hidden 32 (or hidden_size)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
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


# A ChatML-style template as SmolLM2-Instruct's (no {% generation %} markers), spaced for the
# word-level tokenizer below.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|> ' + message['role'] + ' ' + "
    "message['content'] + ' <|im_end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|> assistant ' }}{% endif %}"
)
CHAT_SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_WORDS = (
    "system user assistant you are terse what is the capital of japan france italy spain "
    "tokyo paris rome madrid thanks welcome city country name a and it yes no ok sure "
    "review verdict good bad movie film plot was dull great fun boring . ? : , "
    + " ".join(str(i) for i in range(30))
)


def chat_tokenizer(template: str | None = CHATML) -> object:
    """A word-level tokenizer (BOS added, eos <|im_end|> as SmolLM2's) with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([CHAT_WORDS], trainers.WordLevelTrainer(special_tokens=CHAT_SPECIALS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = template
    return tokenizer


def save_chat_llama(folder: os.PathLike[str] | str, template: str | None = CHATML) -> str:
    """tiny_llama (hidden 64: bitsandbytes' CPU 4-bit kernels need in-features >= its blocksize
    64) and chat_tokenizer saved as a from_pretrained folder; returns its path."""
    tokenizer = chat_tokenizer(template)
    model = tiny_llama(hidden_size=64)
    model.config.bos_token_id, model.config.eos_token_id = 1, 4
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    return str(folder)
