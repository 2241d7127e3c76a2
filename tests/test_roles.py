"""classify(): roles found by module type on every kind of model people wrap."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tiny import lora_bert, lora_llama, tiny_bert, tiny_llama
from torch import nn

from loraplus import Role, classify
from loraplus.roles import canonical_name


def test_peft_lora_on_attention_and_mlp() -> None:
    model = lora_llama()
    roles = classify(model)
    # 2 layers x 7 projections, one A and one B each; nothing else is trainable.
    assert Counter(roles.values()) == {Role.LORA_A: 14, Role.LORA_B: 14}
    for name, role in roles.items():
        assert (".lora_A." in name) == (role is Role.LORA_A)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen.isdisjoint(roles)


def test_embedding_dora_and_saved_head() -> None:
    model = lora_bert(
        target_modules=["query", "value", "word_embeddings"],
        use_dora=True,
        modules_to_save=["classifier"],
    )
    roles = classify(model)
    counts = Counter(roles.values())
    assert counts[Role.EMBEDDING_A] == counts[Role.EMBEDDING_B] == 1
    assert counts[Role.LORA_A] == counts[Role.LORA_B] == 4
    assert counts[Role.MAGNITUDE] == 5  # 4 linear layers + the embedding
    head = {n: r for n, r in roles.items() if "classifier" in n}
    assert head == {
        "base_model.model.classifier.modules_to_save.default.weight": Role.HEAD,
        "base_model.model.classifier.modules_to_save.default.bias": Role.VECTOR,
    }
    # A trainable matrix outside modules_to_save stays `other` (the width rule: lr, like A).
    model.base_model.model.bert.pooler.dense.weight.requires_grad_(True)
    assert classify(model)["base_model.model.bert.pooler.dense.weight"] == Role.OTHER


def test_lora_bias_is_a_vector() -> None:
    roles = classify(lora_bert(target_modules=["query"], lora_bias=True))
    biases = {n: r for n, r in roles.items() if n.endswith("lora_B.default.bias")}
    assert len(biases) == 2 and set(biases.values()) == {Role.VECTOR}


def test_only_trainable_adapter_of_two() -> None:
    from peft import LoraConfig

    model = lora_bert(target_modules=["query"])
    model.add_adapter("second", LoraConfig(r=2, target_modules=["query"]))
    roles = classify(model)
    assert all(".default." in n for n in roles)  # "second" is inactive, so frozen
    model.set_adapter("second")
    roles = classify(model)
    assert roles and all(".second." in n for n in roles)
    assert Counter(roles.values()) == {Role.LORA_A: 2, Role.LORA_B: 2}


def test_torch_compile_classifies_the_same() -> None:
    model = lora_bert()
    compiled = torch.compile(model)
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    assert classify(compiled) == classify(model)


@pytest.fixture
def process_group(tmp_path: Path):  # type: ignore[no-untyped-def]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_prefix_classifies_the_same(process_group: None) -> None:
    model = lora_bert()
    ddp = nn.parallel.DistributedDataParallel(model)
    assert all(n.startswith("module.") for n, _ in ddp.named_parameters())
    assert classify(ddp) == classify(model)


def test_fsdp_use_orig_params_classifies_the_same(process_group: None) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = lora_bert()
    expected = classify(model)
    try:
        wrapped = FSDP(model, use_orig_params=True, device_id=torch.device("cpu"))
    except (RuntimeError, ValueError, AssertionError) as err:  # pragma: no cover - torch build
        pytest.skip(f"FSDP does not run on this CPU build: {err}")
    assert classify(wrapped) == expected


class HandLoRA(nn.Module):
    """A LoRA linear layer written by hand, kohya-style names."""

    def __init__(self, n: int = 16, r: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(n, n)
        self.base.requires_grad_(False)
        self.lora_down = nn.Linear(n, r, bias=False)
        self.lora_up = nn.Linear(r, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_up(self.lora_down(x))


def test_hand_written_lora_down_up() -> None:
    model = nn.Sequential(HandLoRA(), nn.ReLU(), HandLoRA(), nn.LayerNorm(16))
    roles = classify(model)
    assert roles == {
        "0.lora_down.weight": Role.LORA_A,
        "0.lora_up.weight": Role.LORA_B,
        "2.lora_down.weight": Role.LORA_A,
        "2.lora_up.weight": Role.LORA_B,
        "3.weight": Role.VECTOR,
        "3.bias": Role.VECTOR,
    }


def test_user_patterns() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.adapter_in = nn.Parameter(torch.zeros(2, 8))
            self.adapter_out = nn.Parameter(torch.zeros(8, 2))

    with pytest.raises(ValueError, match="Found no trainable LoRA parameter in Custom"):
        classify(Custom())
    roles = classify(Custom(), patterns={"lora_A": "adapter_in", "lora_B": [r"adapter_out$"]})
    assert roles == {"adapter_in": Role.LORA_A, "adapter_out": Role.LORA_B}


def test_shared_tensor_in_exactly_one_group() -> None:
    a, b = HandLoRA(), HandLoRA()
    b.lora_down = a.lora_down  # tied adapter
    roles = classify(nn.Sequential(a, b))
    assert Counter(roles.values()) == {Role.LORA_A: 1, Role.LORA_B: 2}


def test_no_lora_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"BertForSequenceClassification.*get_peft_model"):
        classify(tiny_bert())


def test_frozen_adapters_are_a_clear_error() -> None:
    model = lora_bert()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"13 PEFT LoraLayer module\(s\), none with a trainable"):
        classify(model)


def test_parameter_matched_twice_is_an_error() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lora_A = nn.ModuleDict({"lora_B": nn.Linear(4, 4)})

    with pytest.raises(ValueError, match="matches the patterns of several roles"):
        classify(Twice())


def test_canonical_name_strips_wrappers() -> None:
    name = "_orig_mod._fsdp_wrapped_module.layer._checkpoint_wrapped_module.lora_A.weight"
    assert canonical_name(name) == "layer.lora_A.weight"


def test_trainable_token_rows_are_tokens() -> None:
    model = lora_llama(target_modules=["q_proj", "v_proj"], trainable_token_indices=[3, 5, 7])
    roles = classify(model)
    delta = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default"
    assert roles[delta] is Role.TOKENS
    assert Counter(roles.values()) == {Role.LORA_A: 4, Role.LORA_B: 4, Role.TOKENS: 1}


def test_adalora_singular_values_are_singular() -> None:
    from peft import AdaLoraConfig, get_peft_model

    cfg = AdaLoraConfig(init_r=6, target_modules=["q_proj", "v_proj"], total_step=10)
    roles = classify(get_peft_model(tiny_llama(), cfg))
    # lora_E is an r-vector stored as an (r, 1) matrix: the layer type says what it is.
    singular = {n for n, r in roles.items() if r is Role.SINGULAR}
    assert len(singular) == 4 and all(n.endswith(".lora_E.default") for n in singular)
    assert Counter(roles.values()) == {Role.LORA_A: 4, Role.LORA_B: 4, Role.SINGULAR: 4}


def test_flat_views_keep_their_module_roles() -> None:
    """FSDP1's use_orig_params shards are 1-D views; the module, not the shape, decides."""
    model = lora_bert(target_modules=["query"], lora_bias=True, modules_to_save=["classifier"])
    expected = classify(model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.flatten()[:3]  # what rank 0 of a flat shard sees
    assert classify(model) == expected
    assert set(expected.values()) == {Role.LORA_A, Role.LORA_B, Role.VECTOR, Role.HEAD}
