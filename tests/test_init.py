"""init_lora_(): Init[1] / Init[2] keep B·A = 0 and use the documented scales."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import lora_bert, lora_llama, tiny_bert

from loraplus import init_lora_


def lora_pairs(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from peft.tuners.lora import LoraLayer

    out = []
    for m in model.modules():
        if isinstance(m, LoraLayer):
            out += [(m.lora_A[k].weight, m.lora_B[k].weight) for k in m.lora_A]
    return out


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(1, 17).reshape(2, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_init2_zero_a_uniform_b_output_unchanged() -> None:
    model = lora_llama()
    before = logits(model)
    assert init_lora_(model, "init2", generator=torch.Generator().manual_seed(0)) == 14
    r = 4
    bs = []
    for a, b in lora_pairs(model):
        assert not a.any()
        assert b.abs().max() <= 1 / math.sqrt(r)
        bs.append(b.flatten())
    std = torch.cat(bs).std().item()
    assert std == pytest.approx(1 / math.sqrt(3 * r), rel=0.05)  # U(±1/√r) has var 1/(3r)
    torch.testing.assert_close(logits(model), before)


def test_init1_zero_b_uniform_a() -> None:
    model = lora_llama()
    init_lora_(model, "init2")
    before = logits(model)
    init_lora_(model, "init1")
    for a, b in lora_pairs(model):
        assert not b.any()
        fan_in = a.shape[1]
        assert 0 < a.abs().max() <= 1 / math.sqrt(fan_in)
    torch.testing.assert_close(logits(model), before)


def test_embedding_adapters() -> None:
    model = lora_bert(target_modules=["word_embeddings"])
    layer = model.base_model.model.bert.embeddings.word_embeddings
    init_lora_(model, "init2")
    assert not layer.lora_embedding_A["default"].any()
    assert layer.lora_embedding_B["default"].abs().max() <= 1 / math.sqrt(4)
    init_lora_(model, "init1")
    assert not layer.lora_embedding_B["default"].any()
    assert layer.lora_embedding_A["default"].std().item() == pytest.approx(1.0, rel=0.2)


def test_generator_makes_it_reproducible() -> None:
    m1, m2 = lora_llama(), lora_llama()
    init_lora_(m1, "init2", generator=torch.Generator().manual_seed(7))
    init_lora_(m2, "init2", generator=torch.Generator().manual_seed(7))
    for (_, b1), (_, b2) in zip(lora_pairs(m1), lora_pairs(m2), strict=True):
        torch.testing.assert_close(b1, b2)


def test_refuses_nonzero_product_unless_forced() -> None:
    model = lora_llama()
    for _, b in lora_pairs(model):
        torch.nn.init.normal_(b)
    with pytest.raises(ValueError, match=r"B·A != 0 .*PiSSA.*force=True"):
        init_lora_(model, "init2")
    assert init_lora_(model, "init2", force=True) == 14


def test_bad_scheme_and_no_lora() -> None:
    with pytest.raises(ValueError, match="Unknown init scheme 'init3'"):
        init_lora_(lora_llama(), "init3")
    with pytest.raises(ValueError, match="no trainable PEFT LoRA adapter.*get_peft_model"):
        init_lora_(tiny_bert(), "init2")
